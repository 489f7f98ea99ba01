"""Validation of a release's detector: injection–recovery against baselines, truth, stability, cross-match.

Injection–recovery runs twice: into the release's own held-out normal quasars, and into the real DESI
quasars packaged with the harness (:mod:`.real_quasars`). Both inject into observed spectra (the
``raw_spectra`` rows) and then normalize as the pipeline does (:mod:`.injection`). Everything the
``validation_report`` asset shows is computed here from arrays and tables, so the same harness runs in
tests, in benchmarks and in the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from qad_assets.science.io.parquet_store import SPECTRUM_COLUMNS, read_table
from qad_assets.science.model.package import ModelPackage
from qad_assets.science.model.scoring import Scorer, fit_scorer, score_spectra
from qad_assets.science.model.split import select_rows
from qad_assets.science.model.training import TrainOptions, train_vae
from qad_assets.science.model.vae import SpectrumVAE, VaeConfig, reconstruct
from qad_assets.science.spectra.arms import BRZ_WAVE
from qad_assets.science.spectra.container import Spectra, list_to_numpy
from qad_assets.science.spectra.normalization import normalize_batch
from qad_assets.science.spectra.rest_frame import REST_GRID
from qad_assets.science.validation.baselines import IsolationForestBaseline, PcaBaseline
from qad_assets.science.validation.evaluation import (
    auroc_standard_error,
    binomial_standard_error,
    component_auroc,
    detection_metrics,
    metrics_by,
    metrics_report,
    spearman,
    top_jaccard,
)
from qad_assets.science.validation.injection import injection_set
from qad_assets.science.validation.real_quasars import real_quasars
from qad_assets.science.validation.report import Gallery

#: Held-out spectra with a p-value below this are not used as normal hosts for injections.
NORMAL_P_VALUE = 0.05
#: Normal hosts whose observed spectra are read back for injection, at most (a random subset).
MAX_HOSTS = 1000
#: Injections of every class and strength into each real quasar.
REAL_DRAWS = 3


def fit_baselines(spectra: Spectra, val_fraction: float) -> tuple[PcaBaseline, IsolationForestBaseline]:
    """PCA reconstruction χ² and an Isolation Forest on PCA coefficients, fitted like the VAE was."""
    pca = PcaBaseline(REST_GRID).fit(spectra, val_fraction=val_fraction)
    forest = IsolationForestBaseline(pca).fit(spectra, val_fraction=val_fraction)
    return pca, forest


def scored(
    model: SpectrumVAE,
    scorer: Scorer,
    baselines: tuple[PcaBaseline, IsolationForestBaseline],
    spectra: Spectra,
    *,
    in_training: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The detector's whole output (:func:`score_spectra`) and every method's anomaly score (higher = more
    anomalous) for the same spectra."""
    pca, forest = baselines
    vae = score_spectra(model, scorer, spectra, REST_GRID, in_training=in_training)
    return vae, {"vae": vae["anomaly_score"], "pca_chi2": pca.score(spectra), "isolation_forest": forest.score(spectra)}


def method_scores(
    model: SpectrumVAE,
    scorer: Scorer,
    baselines: tuple[PcaBaseline, IsolationForestBaseline],
    spectra: Spectra,
    *,
    from_training_release: bool = False,
) -> dict[str, np.ndarray]:
    """Every method's anomaly score (higher = more anomalous) for the same spectra."""
    in_training = scorer.training_rows(spectra.targetid) if from_training_release else None
    return scored(model, scorer, baselines, spectra, in_training=in_training)[1]


def normal_hosts(spectra: Spectra, p_value: np.ndarray, val_fraction: float) -> np.ndarray:
    """Held-out rows (never trained on) judged normal by the detector itself."""
    return select_rows(spectra.targetid, "val", val_fraction) & (p_value >= NORMAL_P_VALUE)


def read_observed(raw_files: Sequence[Path], targetid: np.ndarray) -> Spectra:
    """The ``raw_spectra`` rows (observed ``brz`` spectra) of these TARGETIDs, in the order given; a
    TARGETID no file holds is left out."""
    wanted = np.asarray(targetid, np.int64)
    tables = [
        pl.scan_parquet(path)
        .filter(pl.col("TARGETID").is_in(wanted.tolist()))
        .select(["TARGETID", "Z", "flux", "ivar"])
        .collect()
        .to_arrow()
        for path in raw_files
    ]
    if not tables:
        return Spectra.empty(BRZ_WAVE)
    observed = Spectra.from_table(pa.concat_tables(tables), BRZ_WAVE)
    position = {t: i for i, t in enumerate(observed.targetid.tolist())}
    return observed[np.asarray([position[t] for t in wanted.tolist() if t in position], np.int64)]


def rest_frame(observed: Spectra) -> Spectra:
    """Observed spectra through the pipeline's normalization, with the columns scoring uses."""
    rest = normalize_batch(observed)
    return replace(rest, columns={name: rest.columns[name] for name in SPECTRUM_COLUMNS})


@dataclass(frozen=True)
class Recovery:
    """What an injection–recovery run measured: metrics, one row per spectrum, |ρ(score, S/N)| of the
    uninjected hosts, and the detector's whole output for every row (injected first, then the hosts)."""

    metrics: dict
    table: pa.Table
    rho: dict[str, float]
    vae: dict[str, np.ndarray]


def injection_recovery(
    model: SpectrumVAE,
    scorer: Scorer,
    baselines: tuple[PcaBaseline, IsolationForestBaseline],
    hosts: Spectra,
    *,
    per_class: int,
    seed: int,
) -> Recovery:
    """Inject every anomaly class into observed normal ``hosts`` (``raw_spectra`` rows), normalize the
    injected spectra and the untouched hosts as the pipeline does, score both with every method and
    measure how well the injected ones stand out: overall, per class, subclass, strength, S/N and
    redshift, and per score component.
    """
    made = injection_set(hosts, per_class=per_class, rng=np.random.default_rng(seed))
    both = rest_frame(Spectra.concat([made.spectra, hosts]))
    vae, scores = scored(model, scorer, baselines, both)
    n_inj, n_host = len(made.spectra), len(hosts)
    labels = made.labels
    classes = np.concatenate([np.asarray(labels["class"].to_pylist()), np.full(n_host, "")])
    subclasses = np.concatenate([np.asarray(labels["subclass"].to_pylist()), np.full(n_host, "")])
    strength = np.concatenate([labels["strength"].to_numpy(), np.zeros(n_host)])
    label = classes != ""
    metrics = metrics_report(label, classes, both.snr, both.z, scores)
    split = ~label | (subclasses != classes)  # the normals and the injections of classes with subclasses
    metrics["per_subclass"] = metrics_by(
        np.where(label, subclasses, "")[split], label[split], {m: s[split] for m, s in scores.items()}
    )
    metrics["per_strength"] = metrics_by(np.where(label, [f"s={s:g}" for s in strength], ""), label, scores)
    metrics["per_component"] = component_auroc(classes, label, _components(vae))
    metrics["n_injected"], metrics["n_hosts"] = n_inj, n_host
    rho = {m: abs(spearman(s[n_inj:], both.snr[n_inj:])) for m, s in scores.items()}
    table = pa.table(
        {
            "TARGETID": both.targetid,
            "class": np.where(label, classes, "normal"),
            "subclass": np.where(label, subclasses, "normal"),
            "strength": strength,
            "snr": both.snr,
            "z": both.z,
            "label": label.astype(np.int8),
            **{f"score_{m}": s for m, s in scores.items()},
            "top_component": vae["top_component"],
            "detail": labels["detail"].to_pylist() + [""] * n_host,
        }
    )
    return Recovery(metrics, table, rho, vae)


def _components(vae: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key[2:]: value for key, value in vae.items() if key.startswith("z_")}


def real_injection_recovery(
    model: SpectrumVAE,
    scorer: Scorer,
    baselines: tuple[PcaBaseline, IsolationForestBaseline],
    *,
    draws: int,
    seed: int,
    hosts: Spectra | None = None,
) -> Recovery:
    """Injection–recovery on real DESI quasars (:func:`~.real_quasars.real_quasars` unless ``hosts``):
    every class at every strength ``draws`` times into each, judged against the uninjected real
    spectra. With so few real normals the AUROC carries its Hanley–McNeil standard error; ``paired`` is
    the fraction of injected spectra scoring above their own uninjected host (binomial error), and
    ``hosts`` lists how the real quasars themselves score.
    """
    hosts = real_quasars() if hosts is None else hosts
    made = injection_set(hosts, draws=draws, rng=np.random.default_rng(seed))
    both = rest_frame(Spectra.concat([made.spectra, hosts]))
    vae, scores = scored(model, scorer, baselines, both)
    n_inj, n_host = len(made.spectra), len(hosts)
    labels = made.labels
    classes = np.asarray(labels["class"].to_pylist())
    host_of = {t: i for i, t in enumerate(hosts.targetid.tolist())}
    own = n_inj + np.asarray([host_of[t] for t in labels["TARGETID"].to_pylist()], np.int64)

    def block(rows: np.ndarray) -> dict[str, dict[str, float]]:
        out = {}
        for method, score in scores.items():
            injected, normal = score[rows], score[n_inj:]
            auroc = detection_metrics(np.r_[np.ones(rows.size, bool), np.zeros(n_host, bool)], np.r_[injected, normal])[
                "auroc"
            ]
            paired = float(np.mean(np.nan_to_num(injected, nan=-np.inf) > np.nan_to_num(score[own[rows]], nan=np.inf)))
            out[method] = {
                "auroc": auroc,
                "auroc_se": auroc_standard_error(auroc, rows.size, n_host),
                "paired": paired,
                "paired_se": binomial_standard_error(paired, rows.size),
                "n": int(rows.size),
            }
        return out

    per_class = {cls: block(np.flatnonzero(classes == cls)) for cls in dict.fromkeys(classes.tolist())}
    strengths = labels["strength"].to_numpy()
    per_strength = {f"s={s:g}": block(np.flatnonzero(strengths == s)) for s in sorted(set(strengths.tolist()))}
    host_rows = slice(n_inj, None)
    metrics = {
        "n_hosts": n_host,
        "n_injected": n_inj,
        "draws": draws,
        "overall": block(np.arange(n_inj)),
        "per_class": per_class,
        "per_strength": per_strength,
        "per_component": component_auroc(
            np.r_[classes, np.full(n_host, "")], np.arange(len(both)) < n_inj, _components(vae)
        ),
        "hosts": [
            {
                "TARGETID": int(t),
                "z": float(z),
                "snr": float(snr),
                "anomaly_score": float(score),
                "p_value": float(p),
                "top_component": str(top),
            }
            for t, z, snr, score, p, top in zip(
                both.targetid[host_rows],
                both.z[host_rows],
                both.snr[host_rows],
                vae["anomaly_score"][host_rows],
                vae["p_value"][host_rows],
                vae["top_component"][host_rows],
                strict=True,
            )
        ],
    }
    label = np.arange(len(both)) < n_inj
    table = pa.table(
        {
            "TARGETID": both.targetid,
            "class": np.r_[classes, np.full(n_host, "normal")],
            "subclass": np.r_[np.asarray(labels["subclass"].to_pylist()), np.full(n_host, "normal")],
            "strength": np.r_[strengths, np.zeros(n_host)],
            "snr": both.snr,
            "z": both.z,
            "label": label.astype(np.int8),
            **{f"score_{m}": s for m, s in scores.items()},
            "top_component": vae["top_component"],
            "detail": labels["detail"].to_pylist() + [""] * n_host,
        }
    )
    rho = {m: abs(spearman(s[n_inj:], both.snr[n_inj:])) for m, s in scores.items()}
    return Recovery(metrics, table, rho, vae)


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
    """Everything the report shows: metrics, the injection tables, the cross-match, gallery and map."""

    metrics: dict
    injections: pa.Table
    crossmatch: pa.Table | None
    gallery: Gallery
    latent_2d: np.ndarray
    real_injections: pa.Table | None = None

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
    raw_files: Sequence[Path],
    truth: pa.Table | None = None,
    stability_seed: int | None = None,
    catalogue: pa.Table | None = None,
    real_draws: int = REAL_DRAWS,
    seed: int = 0,
) -> ReleaseValidation:
    """Injection–recovery on held-out normals (their observed spectra read back from ``raw_files``) and on
    the packaged real DESI quasars (``real_draws`` per class and strength; 0 skips it) with the VAE next to
    both baselines, truth metrics when a truth table is given, ranking stability against a model
    retrained with the package's own recipe and ``stability_seed``, and the cross-match of the top 100
    candidates with ``catalogue`` (positions from ``raw_files``). ``spectra`` are the release's, ``scores``
    their ``anomaly_scores`` rows, aligned; ``trained_on_release`` when the package was trained on this
    release. The held-out split is the one the package was trained with.
    """
    model, scorer, val_fraction = package.model, package.scorer, package.options.val_fraction
    baselines = fit_baselines(spectra, val_fraction)
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(normal_hosts(spectra, scores["p_value"].to_numpy(), val_fraction))
    chosen = np.sort(rng.choice(candidates, min(MAX_HOSTS, candidates.size), replace=False))
    hosts = read_observed(raw_files, spectra.targetid[chosen])
    recovery = injection_recovery(model, scorer, baselines, hosts, per_class=per_class, seed=seed)
    metrics: dict = {
        "n_scored": len(spectra.z),
        "n_heldout_normal": len(hosts),
        "injection": recovery.metrics,
        "snr_spearman_normals": recovery.rho,
    }
    real = None
    if real_draws > 0:
        real_recovery = real_injection_recovery(model, scorer, baselines, draws=real_draws, seed=seed)
        metrics["real_injection"], real = real_recovery.metrics, real_recovery.table
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
        injections=recovery.table,
        crossmatch=matched,
        gallery=gallery(model, spectra, scores["anomaly_score"].to_numpy(), top_region, gallery_size),
        latent_2d=latent_map(list_to_numpy(scores["latent"])),
        real_injections=real,
    )
