"""A small synthetic scored release for the explorer and re-ranking tests, written in seconds.

The product files carry the columns the explorer and ``read_candidates`` read (not every column the
pipeline writes), and the model is an untrained VAE published as a package: enough to page, filter,
draw, label and export without running the pipeline. Two groups of spectra stand out, for tests that
need truth: ``troughs`` (a C IV absorption trough, large BI, a latent offset) and ``spikes`` (a
narrow artefact, a different latent offset).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from qad_assets.science.io.parquet_store import write_table_atomic
from qad_assets.science.model.package import publish_package, save_model
from qad_assets.science.model.vae import SpectrumVAE, VaeConfig
from qad_assets.science.spectra.container import numpy_to_list
from qad_assets.science.spectra.rest_frame import REST_GRID, lya_forest_mask

LATENT = 12


@dataclass(frozen=True)
class SyntheticRelease:
    storage: Path
    release: str
    targetids: np.ndarray  # in partition order
    groups: dict[str, np.ndarray]  # "troughs" / "spikes" → TARGETIDs


def write_release(
    storage: Path, release: str = "synth", *, partitions: int = 3, rows: int = 40, seed: int = 0
) -> SyntheticRelease:
    """Write ``partitions`` × ``rows`` scored spectra of ``release`` under ``storage`` plus a model package."""
    rng = np.random.default_rng(seed)
    n = partitions * rows
    targetid = 39627800000000000 + rng.choice(10**9, n, replace=False).astype(np.int64)
    group = np.full(n, "", dtype=object)
    chosen = rng.permutation(n)
    group[chosen[: n // 6]] = "troughs"
    group[chosen[n // 6 : n // 3]] = "spikes"
    latent = rng.normal(size=(n, LATENT)).astype(np.float32)
    latent[group == "troughs", 0] += 8.0
    latent[group == "spikes", 1] -= 8.0
    score = rng.normal(size=n) + 1.5 * (group != "")
    order = np.argsort(-score, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(1, n + 1)
    z = rng.uniform(0.5, 3.5, n)
    civ_bi = np.where(group == "troughs", rng.uniform(500, 5000, n), 0.0)
    civ_bi[z < 1.6] = np.nan  # C IV not covered
    flux = (1.0 + 0.1 * rng.normal(size=(n, REST_GRID.npix))).astype(np.float32)
    ivar = np.full((n, REST_GRID.npix), 100.0, np.float32)
    observed = (REST_GRID.wave[None, :] * (1 + z[:, None]) > 3600) & (REST_GRID.wave[None, :] * (1 + z[:, None]) < 9824)
    flux[~observed] = 0.0
    ivar[~observed] = 0.0
    trough = (REST_GRID.wave > 1450) & (REST_GRID.wave < 1540)
    flux[np.ix_(group == "troughs", trough)] *= 0.4
    for p in range(partitions):
        key = f"{release}_main_dark_{27000 + p}"
        rows_p = slice(p * rows, (p + 1) * rows)
        ids = targetid[rows_p]
        scores = {
            "TARGETID": pa.array(ids),
            "Z": pa.array(z[rows_p]),
            "snr": pa.array(rng.uniform(1, 30, rows)),
            "anomaly_score": pa.array(score[rows_p]),
            "p_value": pa.array(np.clip(0.5 - score[rows_p] / 8, 0.001, 1.0)),
            "top_region": pa.array(np.where(group[rows_p] == "troughs", "civ", "continuum").tolist()),
            "worst_arm": pa.array(["b"] * rows),
            "latent": numpy_to_list(latent[rows_p]),
            "rank": pa.array(rank[rows_p]),
            "model_version": pa.array(["1"] * rows),
        }
        if p == 0:  # a newer scoring run: this partition knows which component drove the score
            scores["top_component"] = pa.array(np.where(group[rows_p] == "spikes", "spikes", "fit").tolist())
        write_table_atomic(pa.table(scores), storage / "anomaly_scores" / release / f"{key}.parquet")
        features = {
            "TARGETID": pa.array(ids),
            "alpha_lambda": pa.array(rng.normal(-1.5, 0.3, rows)),
            "civ_ew": pa.array(rng.uniform(10, 60, rows)),
            "mgii_ew": pa.array(rng.uniform(10, 60, rows)),
            "civ_bi": pa.array(civ_bi[rows_p]),
            "civ_ai": pa.array(np.nan_to_num(civ_bi[rows_p]) / 2),
        }
        write_table_atomic(pa.table(features), storage / "spectral_features" / release / f"{key}.parquet")
        raw = {
            "TARGETID": pa.array(ids),
            "TARGET_RA": pa.array(rng.uniform(150, 160, rows)),
            "TARGET_DEC": pa.array(rng.uniform(0, 10, rows)),
        }
        write_table_atomic(pa.table(raw), storage / "raw_spectra" / release / f"{key}.parquet")
        normalized = {
            "TARGETID": pa.array(ids),
            "Z": pa.array(z[rows_p]),
            "scale": pa.array(np.full(rows, 2.0)),
            "flux": numpy_to_list(flux[rows_p]),
            "ivar": numpy_to_list(ivar[rows_p]),
        }
        write_table_atomic(pa.table(normalized), storage / "normalized_spectra" / release / f"{key}.parquet")
    release_dir = storage / "vae_model" / release
    model = SpectrumVAE(REST_GRID.npix, lya_forest_mask(), VaeConfig(latent_dim=LATENT, hidden=(32,)))
    staged = save_model(model, model.config, REST_GRID, release_dir / "packages" / ".staging-test")
    publish_package(release_dir, staged, version="1", run_id="synthetic")
    groups = {name: targetid[group == name] for name in ("troughs", "spikes")}
    return SyntheticRelease(storage, release, targetid, groups)
