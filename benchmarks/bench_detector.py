"""Detection quality of the VAE anomaly score against its baselines, on the demo release's truth table.

Writes the default demo release (8 pixels × 400 rows; ~2200 kept quasars, 160 labelled anomalies in
8 classes), reads and normalizes it as the pipeline does, trains the VAE with the pipeline's defaults
(``VaeTrainingConfig``: 40 epochs, patience 5, batch 256, lr 1e-3) for two seeds, fits the scorer and
both baselines, and prints:

* AUROC / AUPRC / recall in the top 1 % of the labelled anomalies, overall and per class, for the
  VAE score, the PCA χ² and the isolation forest;
* Spearman ρ(score, S/N) on the normal quasars, and the top-1 % Jaccard index between the two seeds;
* AUROC per injected class × strength (:mod:`~qad_assets.science.validation.injection`, on held-out normals);
* scoring throughput on this machine's CPU.

Run: ``.venv/bin/python benchmarks/bench_detector.py [--epochs 40] [--json metrics.json]`` (≈ 10 min on
2 cores). Figures of a run are in ``docs/scoring.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qad_assets.demo import read_demo_spectra
from qad_assets.demo.release import write_demo_release
from qad_assets.science.model.scoring import Scorer, fit_scorer, score_spectra
from qad_assets.science.model.split import select_rows
from qad_assets.science.model.training import TrainOptions, train_vae
from qad_assets.science.model.vae import SpectrumVAE, VaeConfig
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.rest_frame import REST_GRID
from qad_assets.science.validation.baselines import IsolationForestBaseline, PcaBaseline
from qad_assets.science.validation.evaluation import (
    METHODS,
    detection_metrics,
    metrics_by,
    metrics_report,
    spearman,
    top_jaccard,
)
from qad_assets.science.validation.injection import injection_set


def load_release(root: Path, seed: int) -> Spectra:
    """Normalized kept quasars of a demo release; column ``anomaly_class`` ('' for normal quasars)."""
    spectra, classes = read_demo_spectra(write_demo_release(root, seed=seed))
    return spectra.with_columns(anomaly_class=classes)


def train(release: Spectra, seed: int, epochs: int) -> SpectrumVAE:
    """The pipeline's defaults (``qad_assets.assets.vae_model.VaeTrainingConfig``)."""
    options = TrainOptions(seed=seed, max_epochs=epochs, patience=5, batch_size=256, learning_rate=1e-3)
    start = time.perf_counter()
    result = train_vae(release, REST_GRID, VaeConfig(), options)
    print(
        f"seed {seed}: trained in {time.perf_counter() - start:.0f} s, {result.epochs_run} epochs "
        f"(best {result.best_epoch}), val χ²/pixel {result.best_val_reduced_chi2:.3f}"
    )
    return result.model


def fit_and_score(model: SpectrumVAE, release: Spectra, val_fraction: float) -> tuple[Scorer, np.ndarray, float]:
    """The scorer, every spectrum's anomaly score, and scoring throughput (spectra/s, fit excluded)."""
    scorer = fit_scorer(model, release, val_fraction=val_fraction, grid=REST_GRID)
    start = time.perf_counter()
    out = score_spectra(model, scorer, release, REST_GRID, in_training=scorer.training_rows(release.targetid))
    return scorer, out["anomaly_score"], len(release.z) / (time.perf_counter() - start)


def print_table(title: str, rows: dict[str, dict[str, dict[str, float]]], metric: str = "auroc") -> None:
    print(f"\n{title}\n{'':24s}" + "".join(f"{m:>18s}" for m in METHODS))
    for name, by_method in rows.items():
        print(f"{name:24s}" + "".join(f"{by_method[m][metric]:18.3f}" for m in METHODS))


def injection_tables(
    model: SpectrumVAE,
    scorer: Scorer,
    baselines: tuple[PcaBaseline, IsolationForestBaseline],
    release: Spectra,
    val_fraction: float,
    per_class: int,
) -> None:
    """Injected anomalies on held-out normal hosts, judged against those hosts: every method per class,
    and the VAE per class and strength.
    """
    hosts = release[select_rows(release.targetid, "val", val_fraction) & (release.columns["anomaly_class"] == "")]
    injected_spectra, labels = injection_set(hosts, REST_GRID, per_class=per_class, rng=np.random.default_rng(0))
    both = Spectra.concat([injected_spectra.with_columns(anomaly_class=labels["class"].to_numpy()), hosts])
    pca, forest = baselines
    by_method = {
        "vae": score_spectra(model, scorer, both, REST_GRID)["anomaly_score"],
        "pca_chi2": pca.score(both),
        "isolation_forest": forest.score(both),
    }
    n_hosts = len(hosts)
    classes = np.concatenate([np.asarray(labels["class"].to_pylist()), np.full(n_hosts, "")])
    strengths = np.concatenate([labels["strength"].to_numpy(), np.full(n_hosts, np.nan)])
    injected = classes != ""
    print_table(
        f"injected anomalies, AUROC per class ({n_hosts} held-out normal hosts)",
        metrics_by(classes, injected, by_method),
    )
    levels = sorted(set(strengths[injected].tolist()))
    print("\nVAE AUROC per injected class and strength\n" + f"{'':24s}" + "".join(f"{f's={s:g}':>10s}" for s in levels))
    for cls in dict.fromkeys(classes[injected].tolist()):
        cells = [
            detection_metrics(injected[rows], by_method["vae"][rows])["auroc"]
            for rows in (~injected | ((classes == cls) & (strengths == s)) for s in levels)
        ]
        print(f"{cls:24s}" + "".join(f"{c:10.3f}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--demo-seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=60, help="injected spectra per class")
    parser.add_argument("--json", type=Path, help="write the metrics dict here")
    args = parser.parse_args()
    val_fraction = TrainOptions().val_fraction
    with tempfile.TemporaryDirectory() as tmp:
        release = load_release(Path(tmp), args.demo_seed)
    anomaly_class = release.columns["anomaly_class"]
    labels = anomaly_class != ""
    print(f"{len(release.z)} kept quasars, {labels.sum()} labelled anomalies, val_fraction {val_fraction}")
    models = [train(release, seed, args.epochs) for seed in (0, 1)]
    fits = [fit_and_score(m, release, val_fraction) for m in models]
    pca = PcaBaseline(REST_GRID).fit(release, val_fraction=val_fraction)
    forest = IsolationForestBaseline(pca).fit(release, val_fraction=val_fraction)
    by_method = {"vae": fits[0][1], "pca_chi2": pca.score(release), "isolation_forest": forest.score(release)}
    report = metrics_report(labels, anomaly_class, release.snr, release.z, by_method)
    print(f"\noverall{'':17s}" + "".join(f"{m:>18s}" for m in METHODS))
    for metric in ("auroc", "auprc", "recall_top1pct"):
        print(f"{metric:24s}" + "".join(f"{report['overall'][m][metric]:18.3f}" for m in METHODS))
    print_table("AUROC per class", report["per_class"])
    print_table("AUROC per S/N bin", report["per_snr_bin"])
    print_table("AUROC per z bin", report["per_z_bin"])
    normal = ~labels
    rho = ", ".join(f"{m} {abs(spearman(s[normal], release.snr[normal])):.3f}" for m, s in by_method.items())
    print(f"\n|ρ(score, S/N)| on normal quasars: {rho}")
    print(f"top-1% Jaccard, VAE seed 0 vs 1: {top_jaccard(fits[0][1], fits[1][1]):.3f}")
    print(f"VAE seed 1 overall AUROC: {detection_metrics(labels, fits[1][1])['auroc']:.3f}")
    print(f"scoring throughput (CPU, {torch.get_num_threads()} threads): {fits[0][2]:.0f} spectra/s")
    injection_tables(models[0], fits[0][0], (pca, forest), release, val_fraction, args.per_class)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
