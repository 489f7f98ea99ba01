"""How well the VAE fits held-out normal quasars, next to a 10-component PCA, with and without the training
likelihood's model-error floor ε (``VaeConfig.model_error``).

Writes a demo release (default: bench_detector's untuned seed 2027), trains the VAE with the pipeline's
defaults once per ε, and prints for the held-out rows, by S/N tercile, the median χ² per pixel outside the
Lyα forest with the pipeline's ivar alone (what neither model's noise description can hide) for the VAE
and the PCA baseline, and the quality gate's figures (held-out median reduced χ² with the release's noise
model, VAE and PCA, and whether the gate passes).

Run: ``nice .venv/bin/python benchmarks/bench_model_fit.py [--seed 2027] [--settings JSON] [--n-pixels 10]
[--targets-per-pixel 400] [--model-errors 0 0.05]``
(≈ 5 min on 2 cores). Figures: ``docs/model.md``.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_detector import UNTUNED, load_release, train

from qad_assets.assets.vae_model import VaeTrainingConfig
from qad_assets.demo import DemoSettings
from qad_assets.science.model.scoring import fit_scorer
from qad_assets.science.model.split import select_rows
from qad_assets.science.model.vae import reconstruct
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.rest_frame import REST_GRID, lya_forest_mask
from qad_assets.science.validation.baselines import PcaBaseline
from qad_assets.science.validation.gate import PCA_TOLERANCE, evaluate_gate


def chi2_by_snr_tercile(spectra: Spectra, model: np.ndarray) -> list[float]:
    """Median over spectra of χ²/pixel with the pipeline's ivar, outside the forest, per S/N tercile."""
    outside = ~lya_forest_mask(REST_GRID)
    ivar = np.where(spectra.ivar > 0, spectra.ivar, 0.0)[:, outside]
    chi2 = ivar * (np.nan_to_num(spectra.flux[:, outside]) - model[:, outside]) ** 2
    per_pixel = chi2.sum(1) / np.maximum((ivar > 0).sum(1), 1)
    edges = np.quantile(spectra.snr, [0, 1 / 3, 2 / 3, 1])
    tercile = np.clip(np.searchsorted(edges, spectra.snr, side="right") - 1, 0, 2)
    return [float(np.median(per_pixel[tercile == t])) for t in range(3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--settings", default=UNTUNED.to_json(), help="DemoSettings as JSON (default: UNTUNED)")
    parser.add_argument("--n-pixels", type=int, default=10)
    parser.add_argument("--targets-per-pixel", type=int, default=400)
    parser.add_argument("--model-errors", type=float, nargs="+", default=[0.0, 0.05])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rest, _, classes, _ = load_release(
            Path(tmp), args.seed, DemoSettings.from_json(args.settings), args.n_pixels, args.targets_per_pixel
        )
    defaults = VaeTrainingConfig()
    options = defaults.train_options().for_targets(rest.targetid)
    held_out = rest[select_rows(rest.targetid, "val", options.val_fraction) & (classes == "")]
    edges = np.quantile(held_out.snr, [1 / 3, 2 / 3])
    print(f"\n{len(held_out)} held-out normal quasars; S/N terciles split at {edges[0]:.1f} and {edges[1]:.1f}")
    pca = PcaBaseline(REST_GRID).fit(rest, val_fraction=options.val_fraction)
    coefficients, _, _ = pca.project(held_out)
    rows = [
        ("PCA, 10 components", chi2_by_snr_tercile(held_out, coefficients @ np.vstack([pca.mean, pca.components])), "")
    ]
    for eps in args.model_errors:
        model = train(rest, replace(defaults.vae_config(), model_error=eps), options)
        scorer = fit_scorer(model, rest, val_fraction=options.val_fraction)
        fig = evaluate_gate(model, scorer.noise, rest, options.val_fraction, [0.0]).figures
        vae, pca_chi2 = fig["vae_median_reduced_chi2"], fig["pca_median_reduced_chi2"]
        fitted = reconstruct(model, held_out.flux, held_out.ivar).spectrum
        rows.append(
            (
                f"VAE, ε = {eps:g}",
                chi2_by_snr_tercile(held_out, fitted),
                f"{vae:>12.3f}{pca_chi2:>7.3f}{vae / pca_chi2:>8.2f}",
            )
        )
    print(f"\n{'model':<20}{'χ²/pixel, S/N low':>18}{'mid':>7}{'high':>7}{'gate: VAE':>12}{'PCA':>7}{'ratio':>8}")
    for name, (low, mid, high), gate in rows:
        print(f"{name:<20}{low:>18.2f}{mid:>7.2f}{high:>7.2f}{gate}")
    print(f"(the gate passes a ratio ≤ {PCA_TOLERANCE}; the PCA's weights carry the pipeline's ε)")


if __name__ == "__main__":
    main()
