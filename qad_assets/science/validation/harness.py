"""Validation of a release's detector: injection–recovery against baselines, truth, stability, cross-match.

Everything the ``validation_report`` asset shows is computed here from arrays and tables, so the same
harness runs in tests, in benchmarks and in the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from qad_assets.science.io.parquet_store import read_table
from qad_assets.science.model.package import ModelPackage
from qad_assets.science.model.scoring import Scorer, fit_scorer, score_spectra
from qad_assets.science.model.split import select_rows
from qad_assets.science.model.training import TrainOptions, train_vae
from qad_assets.science.model.vae import SpectrumVAE, VaeConfig, reconstruct
from qad_assets.science.spectra.container import Spectra, list_to_numpy
from qad_assets.science.spectra.rest_frame import REST_GRID
from qad_assets.science.validation.baselines import IsolationForestBaseline, PcaBaseline
from qad_assets.science.validation.evaluation import detection_metrics, metrics_report, spearman, top_jaccard
from qad_assets.science.validation.injection import injection_set
from qad_assets.science.validation.report import Gallery

#: Held-out spectra with a p-value below this are not used as normal hosts for injections.
NORMAL_P_VALUE = 0.05


def fit_baselines(spectra: Spectra, val_fraction: float) -> tuple[PcaBaseline, IsolationForestBaseline]:
    """PCA reconstruction χ² and an Isolation Forest on PCA coefficients, fitted like the VAE was."""
    pca = PcaBaseline(REST_GRID).fit(spectra, val_fraction=val_fraction)
    forest = IsolationForestBaseline(pca).fit(spectra, val_fraction=val_fraction)
    return pca, forest


def method_scores(
    model: SpectrumVAE,
    scorer: Scorer,
    baselines: tuple[PcaBaseline, IsolationForestBaseline],
    spectra: Spectra,
    *,
    from_training_release: bool = False,
) -> dict[str, np.ndarray]:
    """Every method's anomaly score (higher = more anomalous) for the same spectra."""
    pca, forest = baselines
    in_training = scorer.training_rows(spectra.targetid) if from_training_release else None
    vae = score_spectra(model, scorer, spectra, REST_GRID, in_training=in_training)
    return {"vae": vae["anomaly_score"], "pca_chi2": pca.score(spectra), "isolation_forest": forest.score(spectra)}


def normal_hosts(spectra: Spectra, p_value: np.ndarray, val_fraction: float) -> np.ndarray:
    """Held-out rows (never trained on) judged normal by the detector itself."""
    return select_rows(spectra.targetid, "val", val_fraction) & (p_value >= NORMAL_P_VALUE)


def injection_recovery(
    model: SpectrumVAE,
    scorer: Scorer,
    baselines: tuple[PcaBaseline, IsolationForestBaseline],
    hosts: Spectra,
    *,
    per_class: int,
    seed: int,
) -> tuple[dict, pa.Table, dict[str, float]]:
    """Inject every anomaly class into normal hosts, score injected and untouched hosts with every
    method, and return (metrics, the per-spectrum table, |Spearman ρ(score, S/N)| on the hosts).
    """
    injected, labels = injection_set(hosts, REST_GRID, per_class=per_class, rng=np.random.default_rng(seed))
    both = Spectra.concat([injected, hosts])
    scores = method_scores(model, scorer, baselines, both)
    n_inj, n_host = len(injected.z), len(hosts.z)
    classes = np.concatenate([np.asarray(labels["class"].to_pylist()), np.full(n_host, "")])
    label = classes != ""
    metrics = metrics_report(label, classes, both.snr, both.z, scores)
    rho = {m: abs(spearman(s[n_inj:], hosts.snr)) for m, s in scores.items()}
    table = pa.table(
        {
            "TARGETID": both.targetid,
            "class": np.where(label, classes, "normal"),
            "strength": np.concatenate([labels["strength"].to_numpy(), np.zeros(n_host)]),
            "snr": both.snr,
            "z": both.z,
            "label": label.astype(np.int8),
            **{f"score_{m}": s for m, s in scores.items()},
        }
    )
    return metrics, table, rho


def truth_metrics(truth: pa.Table, spectra: Spectra, scores: dict[str, np.ndarray]) -> dict:
    """Metrics against a truth table (TARGETID, anomaly_class; null = normal), for the rows it labels."""
    classes_of = dict(zip(truth["TARGETID"].to_pylist(), truth["anomaly_class"].to_pylist(), strict=True))
    classes = np.asarray([classes_of.get(t) or "" for t in spectra.targetid.tolist()])
    known = np.isin(spectra.targetid, truth["TARGETID"].to_numpy())
    rows = np.flatnonzero(known)
    return metrics_report(
        classes[rows] != "", classes[rows], spectra.snr[rows], spectra.z[rows], {m: s[rows] for m, s in scores.items()}
    )


def seed_stability(scores_a: np.ndarray, scores_b: np.ndarray, fraction: float = 0.01) -> dict[str, float]:
    """Top-``fraction`` Jaccard overlap of two models' rankings of the same spectra."""
    n_top = max(1, int(np.ceil(fraction * len(scores_a))))
    return {"top_fraction": fraction, "jaccard": top_jaccard(scores_a, scores_b, fraction), "n_top": n_top}


def gallery(model: SpectrumVAE, spectra: Spectra, score: np.ndarray, top_region: np.ndarray, k: int) -> Gallery:
    """The ``k`` highest-scoring spectra with their reconstructions, best first."""
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf))[:k]
    rec = reconstruct(model, spectra.flux[order], spectra.ivar[order])
    return Gallery(
        wave=REST_GRID.wave,
        flux=spectra.flux[order],
        ivar=spectra.ivar[order],
        model=rec.spectrum,
        targetid=spectra.targetid[order],
        z=spectra.z[order],
        anomaly_score=score[order],
        top_region=np.asarray(top_region)[order],
    )


def latent_map(latent: np.ndarray) -> np.ndarray:
    """The first two principal axes of the latent means: a 2-D map of where spectra sit."""
    centred = latent - np.nanmean(latent, axis=0)
    centred = np.nan_to_num(centred)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def crossmatch(top: pa.Table, catalog: pa.Table, *, radius_arcsec: float = 1.5) -> pa.Table:
    """Which top candidates a catalogue knows: by TARGETID when it has one, else by sky position.

    ``top`` needs TARGETID (and TARGET_RA/TARGET_DEC for a positional match); returns ``top`` with
    ``known`` (bool) added.
    """
    if "TARGETID" in catalog.column_names:
        known = pc.is_in(top["TARGETID"], value_set=catalog["TARGETID"].combine_chunks()).to_numpy(zero_copy_only=False)
        return top.append_column("known", pa.array(known))
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    ra_col = "RA" if "RA" in catalog.column_names else "TARGET_RA"
    dec_col = "DEC" if "DEC" in catalog.column_names else "TARGET_DEC"
    candidates = SkyCoord(top["TARGET_RA"].to_numpy() * u.deg, top["TARGET_DEC"].to_numpy() * u.deg)
    reference = SkyCoord(catalog[ra_col].to_numpy() * u.deg, catalog[dec_col].to_numpy() * u.deg)
    _, separation, _ = candidates.match_to_catalog_sky(reference)
    return top.append_column("known", pa.array(separation.arcsec <= radius_arcsec))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(detection_metrics(labels, scores)["auroc"])


def release_scores(files: Sequence[Path], targetid: np.ndarray) -> pa.Table:
    """The release's ``anomaly_scores`` rows, aligned with ``targetid`` (the spectra the harness loaded)."""
    table = pa.concat_tables(read_table(path) for path in files)
    position = {t: i for i, t in enumerate(table["TARGETID"].to_pylist())}
    return table.take(pa.array([position[t] for t in targetid.tolist()]))


def retrained_scores(spectra: Spectra, config: VaeConfig, options: TrainOptions) -> np.ndarray:
    """Anomaly scores of the same spectra by a model trained with other options (e.g. another seed)."""
    model = train_vae(spectra, REST_GRID, config, options).model
    scorer = fit_scorer(model, spectra, val_fraction=options.val_fraction, grid=REST_GRID)
    return score_spectra(model, scorer, spectra, REST_GRID, in_training=scorer.training_rows(spectra.targetid))[
        "anomaly_score"
    ]


def add_positions(top: pa.Table, raw_files: Sequence[Path]) -> pa.Table:
    """``top`` with TARGET_RA/TARGET_DEC joined from ``raw_spectra`` files, kept in rank order."""
    raw = pa.concat_tables(read_table(p, columns=["TARGETID", "TARGET_RA", "TARGET_DEC"]) for p in raw_files)
    return top.join(raw, "TARGETID", join_type="left outer").sort_by([("rank", "ascending")])


def read_catalogue(path: str) -> pa.Table:
    """A user catalogue: FITS (first table HDU), CSV or Parquet; FITS keeps its 1-D columns."""
    if path.endswith((".fits", ".fits.gz", ".fit")):
        from astropy.table import Table

        table = Table.read(path)
        return pa.table({name: np.asarray(table[name]) for name in table.colnames if table[name].ndim == 1})
    if path.endswith(".csv"):
        import pyarrow.csv

        return pyarrow.csv.read_csv(path)
    return read_table(Path(path))


def json_safe(value: object) -> object:
    """``value`` with NaN/inf floats (e.g. an AUROC of a bin without anomalies) as None, numpy as Python."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class ReleaseValidation:
    """Everything the report shows: metrics, the injection table, the cross-match, gallery and map."""

    metrics: dict
    injections: pa.Table
    crossmatch: pa.Table | None
    gallery: Gallery
    latent_2d: np.ndarray

    def overall_auroc(self, method: str) -> float:
        return float(self.metrics["injection"]["overall"][method]["auroc"])


def validate_release(
    package: ModelPackage,
    spectra: Spectra,
    scores: pa.Table,
    *,
    trained_on_release: bool,
    per_class: int,
    gallery_size: int,
    truth: pa.Table | None = None,
    stability_seed: int | None = None,
    catalogue: pa.Table | None = None,
    raw_files: Sequence[Path] = (),
) -> ReleaseValidation:
    """Injection–recovery on held-out normals with the VAE next to both baselines, truth metrics when a
    truth table is given, ranking stability against a model retrained with the package's own recipe and
    ``stability_seed``, and the cross-match of the top 100 candidates with ``catalogue`` (positions from
    ``raw_files``). ``spectra`` are the release's, ``scores`` their ``anomaly_scores`` rows, aligned;
    ``trained_on_release`` when the package was trained on this release. The held-out split is the
    one the package was trained with.
    """
    model, scorer, val_fraction = package.model, package.scorer, package.options.val_fraction
    baselines = fit_baselines(spectra, val_fraction)
    hosts = spectra[normal_hosts(spectra, scores["p_value"].to_numpy(), val_fraction)]
    injection, injections, rho = injection_recovery(model, scorer, baselines, hosts, per_class=per_class, seed=0)
    metrics: dict = {
        "n_scored": len(spectra.z),
        "n_heldout_normal": len(hosts.z),
        "injection": injection,
        "snr_spearman_normals": rho,
    }
    all_scores = method_scores(model, scorer, baselines, spectra, from_training_release=trained_on_release)
    if truth is not None:
        metrics["truth"] = truth_metrics(truth, spectra, all_scores)
    if stability_seed is not None:
        retrained = retrained_scores(spectra, package.config, replace(package.options, seed=stability_seed))
        metrics["seed_stability"] = seed_stability(all_scores["vae"], retrained)
    matched = None
    if catalogue is not None:
        top = scores.sort_by([("rank", "ascending")]).slice(0, 100)
        matched = crossmatch(add_positions(top, raw_files), catalogue)
        known = int(np.sum(matched["known"].to_numpy(zero_copy_only=False)))
        metrics["crossmatch"] = {"n_top": matched.num_rows, "n_known": known, "n_new": matched.num_rows - known}
    top_region = scores["top_region"].to_numpy(zero_copy_only=False)
    return ReleaseValidation(
        metrics=metrics,
        injections=injections,
        crossmatch=matched,
        gallery=gallery(model, spectra, scores["anomaly_score"].to_numpy(), top_region, gallery_size),
        latent_2d=latent_map(list_to_numpy(scores["latent"])),
    )
