"""The ingestion ledger: one row per input target row, saying whether it was kept, filtered or quarantined.

Why a ledger: every input row must be accounted for (``input = kept + filtered + quarantined``), so that a
silently dropped spectrum is a test failure rather than a hole in the science sample. Reasons are a short
machine-readable code, a colon, and a human detail (``not_qso: SPECTYPE=GALAXY``); ``reason_code`` splits
the code back out. Plain science code: no Dagster import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

KEPT = "kept"
FILTERED = "filtered"
QUARANTINED = "quarantined"
STATUSES = (KEPT, FILTERED, QUARANTINED)

# Filtered: a valid row that is not a usable quasar.
FILTER_CODES = frozenset(
    {"unassigned_fiber", "not_target", "bad_fiberstatus", "not_qso", "zwarn", "not_in_qso_catalog"}
)
# Quarantine codes that condemn a whole file: every row of the file gets the same reason.
FILE_CODES = frozenset(
    {
        "corrupt_fits",
        "checksum_mismatch",
        "not_a_file",
        "header_mismatch",
        "missing_hdu",
        "missing_column",
        "shape_mismatch",
        "bad_wavelength",
        "bad_redrock",
        "missing_redrock",
    }
)
# Quarantined: bad input data (file-level, or row-level as these), to be looked at by a person.
QUARANTINE_CODES = FILE_CODES | {
    "duplicate_targetid",
    "redrock_mismatch",
    "nonfinite",
    "negative_ivar",
    "no_good_pixels",
    "bad_redshift",
    "no_rest_pixels",
}

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string()),
        pa.field("row", pa.int32()),
        pa.field("TARGETID", pa.int64()),
        pa.field("status", pa.string()),
        pa.field("reason", pa.string()),
    ]
)


def reason(code: str, detail: str = "") -> str:
    """``code: detail`` (or just ``code``), the ledger's reason format."""
    return f"{code}: {detail}" if detail else code


def reason_code(text: str) -> str:
    """The code part of a reason (``''`` for kept rows)."""
    return text.split(":", 1)[0].strip()


def status_for(code: str) -> str:
    """The status a reason code implies; unknown codes are quarantined (the safe side)."""
    if not code:
        return KEPT
    return FILTERED if code in FILTER_CODES else QUARANTINED


def ledger_table(
    file: str,
    rows: Sequence[int] | np.ndarray,
    targetids: Sequence[int | None] | np.ndarray | None,
    reasons: Sequence[str] | np.ndarray,
) -> pa.Table:
    """Ledger rows for one file; the status of each row follows from its reason (``''`` = kept).

    ``targetids`` may be None (all unknown) or hold None for unknown entries.
    """
    rows = np.asarray(rows, dtype=np.int32)
    reasons = [str(r) for r in reasons]
    if len(reasons) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(reasons)} reasons")
    tid = pa.nulls(len(rows), pa.int64()) if targetids is None else pa.array(targetids, pa.int64())
    statuses = [status_for(reason_code(r)) for r in reasons]
    return pa.Table.from_arrays(
        [
            pa.array([file] * len(rows), pa.string()),
            pa.array(rows),
            tid,
            pa.array(statuses),
            pa.array(reasons),
        ],
        schema=LEDGER_SCHEMA,
    )


def file_failure(file: str, why: str, targetids: np.ndarray | None = None, n_rows: int | None = None) -> pa.Table:
    """Quarantine a whole file: one row per FIBERMAP row when its TARGETIDs are known; else one row per row
    its FIBERMAP header announces (``n_rows``), TARGETID unknown; else one row -1 (an unknown count).

    A file that fails with no rows known (a FIBERMAP of 0 rows beside 200-row arrays) also gets the row -1:
    a quarantined file must leave a trace in the ledger.
    """
    if targetids is not None and len(targetids):
        return ledger_table(file, np.arange(len(targetids)), targetids, [why] * len(targetids))
    if n_rows:
        return ledger_table(file, np.arange(n_rows), None, [why] * n_rows)
    return ledger_table(file, [-1], None, [why])


def file_failure_reason(ledger: pa.Table) -> str | None:
    """The reason when a file failed as a whole (one file-level reason on every row), else None."""
    reasons = set(ledger.column("reason").to_pylist())
    if len(reasons) != 1:
        return None
    (only,) = reasons
    return only if reason_code(only) in FILE_CODES else None


def counts(ledger: pa.Table) -> dict[str, int]:
    """Rows per status, every status present (0 when absent)."""
    out = dict.fromkeys(STATUSES, 0)
    for value in ledger.column("status").to_pylist():
        out[value] += 1
    return out


def accounts_for(ledger: pa.Table, n_input: int) -> bool:
    """True when kept + filtered + quarantined covers exactly ``n_input`` distinct input rows.

    A whole-file failure with an unreadable FIBERMAP (a single row -1) accounts for an unknown count and
    is accepted for any ``n_input``.
    """
    if unknown_count(ledger):
        return True
    rows = ledger.column("row").to_numpy()
    return len(rows) == n_input and np.array_equal(np.sort(rows), np.arange(n_input))


def unknown_count(ledger: pa.Table) -> bool:
    """True for a whole-file failure whose row count is not known (its single row -1): it stands for one
    input row whatever the file's header announces, since that count is what could not be trusted."""
    return ledger.num_rows == 1 and ledger.column("row")[0].as_py() == -1
