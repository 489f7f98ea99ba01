"""One partition, one step: read upstream files, run the science, write the product atomically.

These are the units of work that the Dagster assets fan out to Ray. Each returns a small
``StepSummary`` (never the data), so nothing large moves through the object store.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from qad_assets.science.io.archive import HealpixCoadd
from qad_assets.science.io.fits_headers import fibermap_rows
from qad_assets.science.io.parquet_store import SPECTRUM_COLUMNS, read_table, write_table_atomic
from qad_assets.science.io.spectra_file import RAW_SPECTRA_SCHEMA, read_spectra_file
from qad_assets.science.model.package import SCORE_COLUMNS, ModelPackage
from qad_assets.science.model.scoring import COMPONENTS
from qad_assets.science.spectra import ledger
from qad_assets.science.spectra.container import Spectra, list_to_numpy, numpy_to_list
from qad_assets.science.spectra.features import Backend, spectral_features
from qad_assets.science.spectra.normalization import NORMALIZED_SCHEMA, normalized_table
from qad_assets.science.spectra.rest_frame import NORM_MIN_WAVE, REST_GRID, RestFrameGrid
from qad_assets.science.spectra.snr import masked_median


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
    stats: dict[str, float] = field(default_factory=dict)
    #: Whether the ledger's row numbers are exactly the input's rows 0..rows_in-1 (ingestion only).
    accounted: bool = True
    #: The cluster node that ran the step (set by whoever ran it; '' when unknown).
    node: str = ""

    @property
    def balanced(self) -> bool:
        return self.accounted and self.rows_in == self.kept + self.filtered + self.quarantined


def summarize_ledger(table: pa.Table, *, seconds: float, output: Path, input_rows: int | None = None) -> StepSummary:
    """Count a ledger by status, and the rows that were not kept by reason code.

    ``input_rows`` is an independent count of the input (a coadd's FIBERMAP ``NAXIS2``, read from its
    header apart from the ledger): the summary is balanced only when the ledger holds each of those rows
    exactly once. Without it (a file whose header cannot be read), or when the ledger is one row -1 (a
    file whose row count could not be trusted: :func:`~ledger.unknown_count`), the ledger's own rows are
    the count.
    """
    status = ledger.counts(table)
    rows_in = table.num_rows if input_rows is None or ledger.unknown_count(table) else input_rows
    reasons = Counter(
        ledger.reason_code(text)
        for text, st in zip(table.column("reason").to_pylist(), table.column("status").to_pylist(), strict=True)
        if st != ledger.KEPT
    )
    return StepSummary(
        rows_in=rows_in,
        kept=status[ledger.KEPT],
        filtered=status[ledger.FILTERED],
        quarantined=status[ledger.QUARANTINED],
        reasons=dict(sorted(reasons.items())),
        seconds=seconds,
        output=str(output),
        accounted=ledger.accounts_for(table, rows_in),
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
    """Coadd + redrock file → the ``raw_spectra`` Parquet of one partition, and its ledger.

    The coadd's header must name the survey, program and HEALPix pixel its path names; the ledger is
    balanced against the FIBERMAP row count its header announces, read apart from the ledger.
    """
    start = time.perf_counter()
    input_rows = fibermap_rows(coadd.coadd)
    result = read_spectra_file(
        coadd.coadd,
        coadd.redrock,
        release=release,
        qso_catalog=qso_catalog,
        catalog_z=catalog_z,
        archive_root=archive_root,
        expected_header={"SURVEY": coadd.survey, "PROGRAM": coadd.program, "HPXPIXEL": coadd.healpix},
    )
    write_table_atomic(result.spectra, out)
    write_table_atomic(result.ledger, ledger_out)
    return summarize_ledger(result.ledger, seconds=time.perf_counter() - start, output=out, input_rows=input_rows)


#: The band the per-spectrum median of normalized flux (good pixels redward of 1250 Å) must fall in.
#: The scale is that median, so it is 1 unless the spectrum fell back to a noise-dominated scale.
NORMALIZED_MEDIAN_BAND = (0.5, 2.0)


def normalize_partition(raw: Path, *, out: Path, grid: RestFrameGrid = REST_GRID, device: str = "cpu") -> StepSummary:
    """``raw_spectra`` Parquet → rest frame, normalized ``normalized_spectra`` Parquet.

    Every raw row is kept (low-coverage spectra are flagged, not dropped); ``stats`` carries what the
    asset checks need: non-finite values, spectra outside the median-flux band, low-coverage count.
    """
    start = time.perf_counter()
    table = normalized_table(read_table(raw, RAW_SPECTRA_SCHEMA), grid, device=device)
    write_table_atomic(table, out)
    flux, ivar = list_to_numpy(table["flux"]), list_to_numpy(table["ivar"])
    lo, hi = NORMALIZED_MEDIAN_BAND
    median = masked_median(flux, (ivar > 0) & (grid.wave >= NORM_MIN_WAVE))
    stats = {
        "nonfinite_values": int((~np.isfinite(flux)).sum() + (~np.isfinite(ivar)).sum()),
        "nonfinite_scale": int((~np.isfinite(table["scale"].to_numpy())).sum()),
        "median_outside_band": int(((median < lo) | (median > hi) | ~np.isfinite(median)).sum()),
        "low_coverage": int(table["low_coverage"].to_numpy(zero_copy_only=False).sum()),
    }
    n = table.num_rows
    return StepSummary(n, n, 0, 0, seconds=time.perf_counter() - start, output=str(out), stats=stats)


def feature_partition(normalized: Path, *, out: Path, backend: Backend = "polars") -> StepSummary:
    """``normalized_spectra`` Parquet → the ``spectral_features`` table of the partition."""
    start = time.perf_counter()
    table = read_table(normalized, NORMALIZED_SCHEMA)
    features = spectral_features(table, REST_GRID, backend=backend)
    write_table_atomic(features.to_arrow(), out)
    n = table.num_rows
    return StepSummary(n, n, 0, 0, seconds=time.perf_counter() - start, output=str(out))


def anomaly_scores_schema(latent_dim: int) -> pa.Schema:
    """Columns of an ``anomaly_scores`` partition (docs/data_model.md), for a model of ``latent_dim``."""
    text = {"top_component", "top_region", "worst_arm"}
    return pa.schema(
        [
            ("TARGETID", pa.int64()),
            ("Z", pa.float64()),
            ("snr", pa.float64()),
            ("reduced_chi2", pa.float64()),
            ("chi2", pa.float64()),
            ("n_obs", pa.int64()),
            ("kl", pa.float64()),
            ("neg_elbo", pa.float64()),
            ("latent_nll", pa.float64()),
            *[(name, pa.string() if name in text else pa.float64()) for name in SCORE_COLUMNS[6:]],
            *[(f"z_{name}", pa.float64()) for name in COMPONENTS],
            ("latent", pa.list_(pa.float32(), latent_dim)),
            ("rank", pa.int64()),
            ("model_version", pa.string()),
            ("model_status", pa.string()),
        ]
    )


def score_partition(
    normalized: Path,
    *,
    out: Path,
    package: Path,
    model_version: str,
    model_status: str,
    trained_on_release: bool,
    device: str = "cpu",
) -> StepSummary:
    """``normalized_spectra`` Parquet → ``anomaly_scores`` Parquet with the model package ``package``.

    ``model_status`` says why this model scored (``challenger``, ``champion``, ``unpromoted``) and goes
    on every row; ``rank`` is written as null here and filled release-wide by :func:`rank_release`. An
    empty partition gets an empty table of the same schema.
    """
    start = time.perf_counter()
    model = ModelPackage.load(package, version=model_version, device=device)
    table = read_table(normalized, NORMALIZED_SCHEMA, columns=["TARGETID", "Z", *SPECTRUM_COLUMNS, "flux", "ivar"])
    spectra = Spectra.from_table(table, REST_GRID.wave, columns=SPECTRUM_COLUMNS)
    schema = anomaly_scores_schema(model.config.latent_dim)
    n = len(spectra)
    if n == 0:
        write_table_atomic(schema.empty_table(), out)
        return StepSummary(0, 0, 0, 0, seconds=time.perf_counter() - start, output=str(out))
    scores = model.score(spectra, from_training_release=trained_on_release)
    values = {
        "TARGETID": spectra.targetid,
        "Z": spectra.z,
        **{name: scores[name] for name in ("snr", *SCORE_COLUMNS)},
        **{f"z_{name}": scores[f"z_{name}"] for name in COMPONENTS},
        "latent": numpy_to_list(scores["latent_mean"].astype(np.float32)),
        "rank": pa.nulls(n, pa.int64()),
        "model_version": [model_version] * n,
        "model_status": [model_status] * n,
    }
    write_table_atomic(pa.table({f.name: pa.array(values[f.name], f.type) for f in schema}, schema=schema), out)
    return StepSummary(n, n, 0, 0, seconds=time.perf_counter() - start, output=str(out))


def rank_release(files: list[Path]) -> int:
    """Rank every scored spectrum of a release (1 = most anomalous, NaN scores last) and write each
    file's ``rank`` column; files whose ranks did not change are left untouched. Returns the row count.
    """
    scores = [read_table(path, columns=["anomaly_score", "rank"]) for path in files]
    values = np.concatenate([t["anomaly_score"].to_numpy() for t in scores]) if scores else np.empty(0)
    order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
    ranks = np.empty(len(values), np.int64)
    ranks[order] = np.arange(1, len(values) + 1)
    offset = 0
    for path, table in zip(files, scores, strict=True):
        mine = ranks[offset : offset + table.num_rows]
        offset += table.num_rows
        if table["rank"].null_count == 0 and np.array_equal(table["rank"].to_numpy(), mine):
            continue
        full = read_table(path)
        write_table_atomic(full.set_column(full.schema.get_field_index("rank"), "rank", pa.array(mine)), path)
    return len(values)
