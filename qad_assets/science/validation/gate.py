"""The quality gate of a freshly trained model: checks that hold on any S/N mix, recorded, never blocking.

An absolute bound on the validation χ² per pixel means nothing on a release of S/N 1–2 spectra with a
few per cent optimistic ivar, and stopping the pipeline on it leaves a release unscored. The gate
instead compares the model with what it must beat, on the same held-out spectra with the same noise
model: (1) the VAE reconstructs them nearly as well as a 10-component PCA fitted on the same
training rows (within :data:`PCA_TOLERANCE`); (2) with the release's noise model the median reduced χ²
of held-out spectra is near 1 (the model and the noise description agree); (3) training lowered the
validation loss. A model that fails is still registered and still scores the release when nothing better
exists; the gate decides whether it may become ``challenger`` and later ``champion``. Plain numpy/torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from qad_assets.science.model.noise import NoiseModel, pixel_weights
from qad_assets.science.model.split import select_rows
from qad_assets.science.model.vae import SpectrumVAE, reconstruct
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.rest_frame import REST_GRID
from qad_assets.science.validation.baselines import PcaBaseline

#: The noise-calibrated median reduced χ² of held-out spectra must fall in this range.
CHI2_RANGE = (0.8, 1.3)
#: The VAE's held-out median reduced χ² may exceed the PCA's by this factor: the PCA fits every spectrum's
#: 11 coefficients by least squares, the VAE's encoder infers its latents in one pass (an amortisation gap
#: of a few per cent on a good model; a model that did not learn quasars is off by far more).
PCA_TOLERANCE = 1.1


@dataclass(frozen=True)
class GateResult:
    """Whether a model may be promoted, the figures that decided it, and in words why not."""

    passed: bool
    figures: dict[str, float]
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateResult:
        return cls(bool(d["passed"]), {k: float(v) for k, v in d["figures"].items()}, list(d["reasons"]))

    def summary(self) -> str:
        return "passed" if self.passed else "failed: " + "; ".join(self.reasons)


def evaluate_gate(
    model: SpectrumVAE, noise: NoiseModel, spectra: Spectra, val_fraction: float, val_loss: list[float]
) -> GateResult:
    """The three checks on ``spectra`` (the release, or a bounded sample), split as training split it."""
    held_out = select_rows(spectra.targetid, "val", val_fraction)
    pca = PcaBaseline(REST_GRID).fit(spectra, val_fraction=val_fraction)
    test = spectra[held_out]
    vae_model = reconstruct(model, test.flux, test.ivar).spectrum
    coefficients, _, _ = pca.project(test)
    pca_model = coefficients @ np.vstack([pca.mean, pca.components])
    forest = model.forest_mask.cpu().numpy()
    cfg = model.config
    vae_chi2 = _median_reduced_chi2(test, vae_model, noise, forest, cfg.forest_weight, cfg.forest_sigma)
    pca_chi2 = _median_reduced_chi2(test, pca_model, noise, forest, cfg.forest_weight, cfg.forest_sigma)
    figures = {
        "heldout_spectra": float(len(test)),
        "vae_median_reduced_chi2": vae_chi2,
        "pca_median_reduced_chi2": pca_chi2,
        "first_val_loss": float(val_loss[0]),
        "best_val_loss": float(min(val_loss)),
    }
    reasons = []
    if not vae_chi2 <= PCA_TOLERANCE * pca_chi2:
        reasons.append(
            f"held-out median reduced χ² {vae_chi2:.3f} is over {PCA_TOLERANCE} × the PCA baseline's {pca_chi2:.3f}"
        )
    if not CHI2_RANGE[0] <= vae_chi2 <= CHI2_RANGE[1]:
        reasons.append(
            f"held-out median reduced χ² {vae_chi2:.3f} with the noise model is outside {CHI2_RANGE}: the model "
            "and the release's noise do not agree"
        )
    if not min(val_loss) < val_loss[0]:
        reasons.append("training did not lower the validation loss")
    return GateResult(not reasons, figures, reasons)


def _median_reduced_chi2(
    spectra: Spectra, model: np.ndarray, noise: NoiseModel, forest: np.ndarray, weight: float, sigma: float
) -> float:
    """Median over spectra of Σw·(f − m)²/Σ(w > 0)·(forest weight), the weights of the noise model."""
    w = pixel_weights(spectra, model, noise, forest, weight, sigma)
    chi2 = (w * (spectra.flux - model) ** 2).sum(axis=1)
    n_eff = ((w > 0) * np.where(forest, weight, 1.0)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmedian(np.where(n_eff > 1, chi2 / (n_eff - 1.0), np.nan)))
