"""One partition, one step: read upstream files, run the science, write the product atomically.

These are the units of work that the Dagster assets fan out to Ray. Each returns a small
``StepSummary`` (never the data), so nothing large moves through the object store.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from qad_assets.science import ledger
from qad_assets.science.desi_archive import HealpixCoadd
from qad_assets.science.desi_io import read_spectra_file
from qad_assets.science.parquet_store import write_table_atomic


@dataclass(frozen=True)
class StepSummary:
    """What one partition step did: rows in and out, the reasons rows left, where it wrote."""

    rows_in: int
    kept: int
    filtered: int
    quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    output: str = ""

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.kept + self.filtered + self.quarantined


def summarize_ledger(table: pa.Table, *, seconds: float, output: Path) -> StepSummary:
    """Count a ledger by status, and the rows that were not kept by reason code."""
    status = ledger.counts(table)
    reasons = Counter(
        ledger.reason_code(text)
        for text, st in zip(table.column("reason").to_pylist(), table.column("status").to_pylist(), strict=True)
        if st != ledger.KEPT
    )
    return StepSummary(
        rows_in=table.num_rows,
        kept=status[ledger.KEPT],
        filtered=status[ledger.FILTERED],
        quarantined=status[ledger.QUARANTINED],
        reasons=dict(sorted(reasons.items())),
        seconds=seconds,
        output=str(output),
    )


def ingest_healpix_coadd(
    coadd: HealpixCoadd,
    *,
    release: str,
    out: Path,
    ledger_out: Path,
    qso_catalog: str | None = None,
    catalog_z: bool = True,
    archive_root: str | None = None,
) -> StepSummary:
    """Coadd + redrock file → the ``raw_spectra`` Parquet of one partition, and its ledger."""
    start = time.perf_counter()
    result = read_spectra_file(
        coadd.coadd,
        coadd.redrock,
        release=release,
        qso_catalog=qso_catalog,
        catalog_z=catalog_z,
        archive_root=archive_root,
    )
    write_table_atomic(result.spectra, out)
    write_table_atomic(result.ledger, ledger_out)
    return summarize_ledger(result.ledger, seconds=time.perf_counter() - start, output=out)
