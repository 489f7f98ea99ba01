"""The project's exceptions, under one base, so that every front end tells a user's mistake from a bug.

``QadError`` and its subclasses are problems with the input, the configuration or the state of a storage
root: the CLI prints their message and exits 2, the service answers them with a 4xx. Anything else that
escapes is a bug and is reported as one. No Dagster here: the science library raises these too.
"""

from __future__ import annotations


class QadError(Exception):
    """A problem the user can act on (bad input, configuration, state); its message says what to do."""


class UserError(QadError):
    """A command-line or configuration mistake: a path, an option, a name."""


class DesiFormatError(QadError):
    """Bad DESI input. ``row`` is -1 for the whole file; ``reason`` is a ledger reason (``code: detail``)."""

    def __init__(self, path: str, row: int, reason: str) -> None:
        super().__init__(f"{path}, row {row}: {reason}")
        self.path = str(path)
        self.row = int(row)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, int, str]]:  # picklable across Ray / Dagster workers
        return (type(self), (self.path, self.row, self.reason))


class SpectrumError(QadError):
    """A spectrum that cannot be scored: its ``index`` in the request and a ledger-style ``reason``."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"spectra[{index}]: {reason}")
        self.index = index
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[int, str]]:
        return (type(self), (self.index, self.reason))


class GridMismatchError(QadError):
    """A model (or scorer) was fitted on another rest-frame grid than the data it is asked to score."""


class ModelPackageError(QadError):
    """No usable model package: none published yet, or its parts do not belong together."""


class TooFewSpectraError(QadError):
    """Too few spectra to fit or calibrate something; the message says how many were there and needed."""
