"""The labels an astronomer can give a candidate, their keyboard keys, and what each says about interest.

A fixed vocabulary (as DESI's visual inspection uses) so that labels from different people can be
counted, exported and learned from; anything finer goes into the free note.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Label:
    """``code`` is stored; ``key`` labels with one keystroke; ``interest`` (0 = not wanted, 1 = wanted) is
    what the re-ranking learns from by default.
    """

    code: str
    title: str
    key: str
    interest: float


LABELS: tuple[Label, ...] = (
    Label("bal", "BAL", "b", 1.0),
    Label("weak_lines", "weak lines", "w", 1.0),
    Label("wrong_z", "wrong z", "z", 0.0),
    Label("star", "star", "s", 0.0),
    Label("galaxy_blend", "galaxy blend", "g", 0.0),
    Label("artifact", "artifact", "a", 0.0),
    Label("changing_look", "changing-look", "c", 1.0),
    Label("other_interesting", "other interesting", "i", 1.0),
    Label("normal", "normal", "n", 0.0),
)
BY_CODE: dict[str, Label] = {label.code: label for label in LABELS}
CODES: tuple[str, ...] = tuple(BY_CODE)
#: Labels that mean "not an ordinary quasar": the positives of the labelled-truth metrics.
ANOMALOUS: frozenset[str] = frozenset(CODES) - {"normal"}

MAX_NOTE_CHARS = 2000
MAX_AUTHOR_CHARS = 64


def default_interest() -> dict[str, float]:
    """Interest per label code, as the re-ranking uses it unless configured otherwise."""
    return {label.code: label.interest for label in LABELS}
