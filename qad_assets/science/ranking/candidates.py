"""A release's candidates as one table: scores, physical features, sky position and latent vector per spectrum.

Built from the per-partition products (``<storage>/<asset>/<release>/<partition>.parquet``): every
``anomaly_scores`` row, joined on TARGETID with its ``spectral_features`` row and its ``raw_spectra``
position, plus where it lives (``partition``, ``row``) so that one spectrum can be read back without
scanning the release. Only scalar columns are read from the spectra products (Parquet projection), so a
release of 150,000 spectra reads in seconds. Columns the scoring may or may not write (``top_component``,
``model_status``, ``z_<component>``) are taken when present; files of older scoring runs simply lack them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from qad_assets.errors import UserError

#: Scalar ``anomaly_scores`` columns a candidate carries (those a file has), besides ``z_<component>``.
SCORE_COLUMNS = (
    "TARGETID",
    "Z",
    "snr",
    "anomaly_score",
    "p_value",
    "rank",
    "top_component",
    "top_region",
    "top_region_share",
    "worst_arm",
    "reduced_chi2",
    "latent_nll",
    "model_status",
    "model_version",
)
#: Physical features (``spectral_features``) shown next to a candidate and learned from by the re-ranking.
FEATURE_COLUMNS = (
    "alpha_lambda",
    "lya_ew",
    "siiv_ew",
    "civ_ew",
    "ciii_ew",
    "mgii_ew",
    "hbeta_ew",
    "halpha_ew",
    "civ_fwhm",
    "mgii_fwhm",
    "civ_bi",
    "civ_ai",
    "siiv_bi",
    "siiv_ai",
)
#: ``raw_spectra`` position columns, renamed RA / DEC.
POSITION_COLUMNS = {"TARGET_RA": "RA", "TARGET_DEC": "DEC"}
COMPONENT_PREFIX = "z_"


def product_files(storage: Path, asset: str, release: str) -> dict[str, Path]:
    """Partition key → Parquet file of one asset's release folder, in key order."""
    folder = Path(storage) / asset / release
    return {path.stem: path for path in sorted(folder.glob("*.parquet"))}


def read_candidates(storage: Path, release: str, *, latent: bool = True) -> pl.DataFrame:
    """Every scored spectrum of ``release``: the score columns present, ``partition`` and ``row`` (its
    place in the partition's files), RA/DEC, the physical features, and ``latent`` (an Array column).

    Raises :class:`~qad_assets.errors.UserError` when the release has no scores.
    """
    scores = product_files(storage, "anomaly_scores", release)
    if not scores:
        raise UserError(f"release {release!r} has no anomaly_scores under {storage}: score it first")
    features = product_files(storage, "spectral_features", release)
    raw = product_files(storage, "raw_spectra", release)
    frames = []
    for key, path in scores.items():
        present = pl.read_parquet_schema(path)
        wanted = [c for c in present if c in SCORE_COLUMNS or c.startswith(COMPONENT_PREFIX)]
        frame = pl.read_parquet(path, columns=wanted + (["latent"] if latent else []))
        frame = frame.with_columns(pl.lit(key).alias("partition"), pl.int_range(pl.len(), dtype=pl.Int32).alias("row"))
        frame = _join(frame, features.get(key), FEATURE_COLUMNS, {})
        frame = _join(frame, raw.get(key), tuple(POSITION_COLUMNS), POSITION_COLUMNS)
        frames.append(frame)
    return pl.concat(frames, how="diagonal_relaxed")


def _join(frame: pl.DataFrame, path: Path | None, columns: tuple[str, ...], rename: dict[str, str]) -> pl.DataFrame:
    """Left-join the ``columns`` a partition's other product has (on TARGETID, unique within a partition)."""
    if path is None:
        return frame
    present = [c for c in pl.read_parquet_schema(path) if c in columns]
    if not present:
        return frame
    other = pl.read_parquet(path, columns=["TARGETID", *present]).rename(rename)
    return frame.join(other, on="TARGETID", how="left", maintain_order="left")


def interest_features(candidates: pl.DataFrame) -> np.ndarray:
    """What user interest is learned over: the latent vector, the physical features and the per-component
    scores the table has, float64 ``(N, F)`` with NaN where a feature is not measurable.
    """
    parts = []
    if "latent" in candidates.columns:
        parts.append(candidates["latent"].to_numpy().astype(np.float64).reshape(len(candidates), -1))
    scalars = [c for c in candidates.columns if c in FEATURE_COLUMNS or c.startswith(COMPONENT_PREFIX)]
    if scalars:
        parts.append(candidates.select(pl.col(scalars).cast(pl.Float64)).to_numpy())
    if not parts:
        raise UserError("the candidates have neither latent vectors nor features to learn interest from")
    return np.hstack(parts)
