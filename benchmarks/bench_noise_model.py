"""Is the likelihood right? Reduced χ² of normal quasars with the pipeline's ivar and with the noise model.

Trains the VAE on one realistic demo release (``--train-seed``), fits the scorer (its noise model
among it) there, and measures the normal quasars of an *unseen* release (``--eval-seed``, another
seed than any the detector was tuned on) and the seven real DESI EDR quasars packaged with the
validation harness. For every cell (S/N per pixel of the spectrum; observed arm; pixels on or off a
sky line) it prints the mean pull² (the reduced χ²) and the robust one ((1.4826·MAD)² of the pulls),
first with ``ivar`` alone, then with the noise model's variance (:mod:`~qad_assets.science.model.noise`).
Outside the Lyα forest only (the forest has its own variance term). A sky-line pixel is one observed
where the real DESI sky-line excess variance (measured on real coadds, ``demo/data/demo_noise.npz``)
exceeds half the continuum's.

Run: ``.venv/bin/python benchmarks/bench_noise_model.py [--train-seed 0] [--eval-seed 23] [--pixels 8]
[--epochs 30]`` (≈ 10 min on 2 cores). Figures of a run are in ``docs/model.md``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from qad_assets.demo import read_demo_spectra
from qad_assets.demo.instrument import noise_tables
from qad_assets.demo.release import write_demo_release
from qad_assets.science.model.noise import NoiseModel, pixel_weights
from qad_assets.science.model.scoring import fit_scorer
from qad_assets.science.model.training import TrainOptions, train_vae
from qad_assets.science.model.vae import SpectrumVAE, VaeConfig, reconstruct
from qad_assets.science.spectra.arms import BRZ_WAVE, arm_index
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.rest_frame import REST_GRID, lya_forest_mask
from qad_assets.science.validation.harness import rest_frame
from qad_assets.science.validation.real_quasars import real_quasars

SNR_BINS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, np.inf)
SKY_EXCESS = 0.5


def demo_normals(root: Path, seed: int, pixels: int) -> Spectra:
    spectra, classes = read_demo_spectra(write_demo_release(root, seed=seed, n_pixels=pixels))
    return spectra[np.flatnonzero(classes == "")]


def on_sky_line(spectra: Spectra) -> np.ndarray:
    """(N, P): the pixel was observed where real DESI sky lines add over half the continuum variance."""
    excess = noise_tables()["sky_excess"]
    observed = spectra.wave[None, :] * (1.0 + np.asarray(spectra.z, np.float64))[:, None]
    return np.interp(observed, BRZ_WAVE, excess, left=0.0, right=0.0) > SKY_EXCESS


def pulls(model: SpectrumVAE, noise: NoiseModel, spectra: Spectra) -> dict[str, np.ndarray]:
    """Pulls (N, P) with ivar alone and with the noise model; NaN where a pixel has no data or is in the forest."""
    rec = reconstruct(model, spectra.flux, spectra.ivar)
    forest = lya_forest_mask(REST_GRID)
    cfg = model.config
    out = {}
    for name, used in (("ivar", NoiseModel.identity()), ("noise model", noise)):
        w = pixel_weights(spectra, rec.spectrum, used, forest, cfg.forest_weight, cfg.forest_sigma)
        pull = (spectra.flux - rec.spectrum) * np.sqrt(w)
        out[name] = np.where((spectra.ivar > 0) & ~forest[None, :], pull, np.nan)
    return out


def cells(spectra: Spectra) -> dict[str, np.ndarray]:
    """Boolean (N, P) masks of the table's rows."""
    shape = spectra.flux.shape
    rows: dict[str, np.ndarray] = {"all": np.ones(shape, bool)}
    snr = spectra.snr
    for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:], strict=True):
        rows[f"S/N {lo:g}–{hi:g}"] = np.broadcast_to(((snr >= lo) & (snr < hi))[:, None], shape)
    arms = arm_index(REST_GRID, spectra.z)
    for k, arm in enumerate("brz"):
        rows[f"arm {arm}"] = arms == k
    sky = on_sky_line(spectra)
    rows["off sky lines"], rows["on sky lines"] = ~sky, sky
    return rows


def chi2(pull: np.ndarray) -> tuple[int, float, float]:
    values = pull[np.isfinite(pull)]
    if values.size == 0:
        return 0, np.nan, np.nan
    robust = (1.4826 * np.median(np.abs(values - np.median(values)))) ** 2
    return values.size, float(np.mean(values**2)), float(robust)


def table(title: str, spectra: Spectra, pulled: dict[str, np.ndarray]) -> None:
    print(f"\n{title}: {len(spectra)} spectra, median S/N {np.median(spectra.snr):.1f}")
    print("| pixels | n | χ²/pix ivar | robust ivar | χ²/pix noise model | robust noise model |")
    print("|---|---|---|---|---|---|")
    for name, mask in cells(spectra).items():
        n, mean_ivar, robust_ivar = chi2(np.where(mask, pulled["ivar"], np.nan))
        _, mean_noise, robust_noise = chi2(np.where(mask, pulled["noise model"], np.nan))
        if n:
            print(f"| {name} | {n} | {mean_ivar:.2f} | {robust_ivar:.2f} | {mean_noise:.2f} | {robust_noise:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=23)
    parser.add_argument("--pixels", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train_spectra, _ = read_demo_spectra(
            write_demo_release(Path(tmp) / "train", seed=args.train_seed, n_pixels=args.pixels)
        )
        options = TrainOptions(seed=0, max_epochs=args.epochs, patience=5).for_release(len(train_spectra))
        model = train_vae(train_spectra, REST_GRID, VaeConfig(), options).model
        scorer = fit_scorer(model, train_spectra, val_fraction=options.val_fraction)
        print(
            f"noise model: fractional model error ε = {scorer.noise.model_error:.4f}, inflation "
            f"5/50/95 % = {np.round(np.percentile(scorer.noise.inflation, [5, 50, 95]), 2).tolist()}"
        )
        normals = demo_normals(Path(tmp) / "eval", args.eval_seed, args.pixels)
        table(
            f"unseen demo release (seed {args.eval_seed}), normal quasars", normals, pulls(model, scorer.noise, normals)
        )
        real = rest_frame(real_quasars())
        table("real DESI EDR quasars (tests/data)", real, pulls(model, scorer.noise, real))


if __name__ == "__main__":
    main()
