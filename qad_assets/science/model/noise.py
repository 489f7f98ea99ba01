"""What the pipeline's inverse variance misses, learned from the release's own residuals.

DESI's ivar is photon and read noise. Real coadds carry more: sky-subtraction residuals at the sky
lines and extra scatter where the arms hand over (both fixed in the *observed* frame, so they land on
different rest pixels for every redshift), and at high S/N the model's own imperfection, a fraction
of the flux. Left out, a normal bright quasar or one whose lines fall on the OH forest looks anomalous.
The model is::

    variance = inflation(λ_obs) / ivar + (ε · model)²

``inflation`` is the robust variance of pulls ``(f − m)·√ivar`` per observed-wavelength bin, ``ε``
the fractional error that makes high-S/N pulls unit-variance too. Both are fitted on normal-looking
pixels (outside the Lyα forest, which has its own variance term) by a few alternations, with
median-absolute-deviation variances so that absorbers and anomalies barely move them. Plain numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from qad_assets.science.spectra.arms import BRZ_WAVE
from qad_assets.science.spectra.container import Spectra

#: Observed-frame bins: log10 spacing of the rest grid's pixels, over DESI's band.
BIN_LOG_STEP = 2.5e-4
_MAD_TO_SIGMA = 1.4826
#: Fewest pixels a bin needs for its own inflation; thinner bins take the median inflation.
MIN_BIN_PIXELS = 50
#: Pixels whose model S/N² (ivar·m²) exceeds this tell the fractional model error.
HIGH_SNR2 = 100.0
ALTERNATIONS = 3
_CHI2_1_MEDIAN = 0.4549


def _bin_edges() -> np.ndarray:
    lo, hi = math.log10(BRZ_WAVE[0]), math.log10(BRZ_WAVE[-1])
    return np.arange(lo, hi + BIN_LOG_STEP, BIN_LOG_STEP)


@dataclass(frozen=True)
class NoiseModel:
    """``variance = inflation(λ_obs)/ivar + (model_error·model)²``; inflation per observed log-λ bin."""

    log_edges: np.ndarray  # (B + 1,) log10 observed Å
    inflation: np.ndarray  # (B,) ≥ 0
    model_error: float

    def variance(self, spectra: Spectra, model: np.ndarray) -> np.ndarray:
        """Total variance per pixel (N, P), ``inf`` where a pixel has no data."""
        inflation = self.inflation_at(spectra)
        with np.errstate(divide="ignore"):
            photon = np.where(spectra.ivar > 0, inflation / spectra.ivar, np.inf)
        return photon + (self.model_error * model) ** 2

    def inflation_at(self, spectra: Spectra) -> np.ndarray:
        """The inflation of each pixel, from where it was observed: λ_rest·(1 + z)."""
        return self.inflation[_observed_bins(spectra, self.log_edges)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "log_edges": [float(self.log_edges[0]), float(BIN_LOG_STEP), int(self.log_edges.size)],
            "inflation": self.inflation.tolist(),
            "model_error": self.model_error,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoiseModel:
        start, step, n = d["log_edges"]
        return cls(start + step * np.arange(int(n)), np.asarray(d["inflation"], np.float64), float(d["model_error"]))

    @classmethod
    def identity(cls) -> NoiseModel:
        edges = _bin_edges()
        return cls(edges, np.ones(edges.size - 1), 0.0)


def fit_noise_model(spectra: Spectra, model: np.ndarray, use: np.ndarray) -> NoiseModel:
    """Fit inflation and ε on the pixels ``use`` (N, P) of ``spectra`` reconstructed as ``model``."""
    edges = _bin_edges()
    use = use & (spectra.ivar > 0) & np.isfinite(model)
    bins = _observed_bins(spectra, edges)[use]
    residual = (spectra.flux - model)[use].astype(np.float64)
    ivar = spectra.ivar[use].astype(np.float64)
    m2 = model[use].astype(np.float64) ** 2
    inflation, error = np.ones(edges.size - 1), 0.0
    for _ in range(ALTERNATIONS):
        pull = residual / np.sqrt(1.0 / ivar + error**2 * m2)
        inflation = _binned_robust_variance(pull, bins, edges.size - 1)
        error = _model_error(residual, ivar, m2, inflation[bins])
    return NoiseModel(edges, inflation, error)


def _observed_bins(spectra: Spectra, edges: np.ndarray) -> np.ndarray:
    log_obs = np.log10(spectra.wave)[None, :] + np.log10(1.0 + np.asarray(spectra.z, np.float64))[:, None]
    return np.clip(np.searchsorted(edges, log_obs, side="right") - 1, 0, edges.size - 2)


def _binned_robust_variance(pull: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """(1.4826·MAD)² of the pulls in each bin; bins with too few pixels get the median over bins."""
    order = np.argsort(bins, kind="stable")
    sorted_bins, sorted_pull = bins[order], pull[order]
    starts = np.searchsorted(sorted_bins, np.arange(n_bins))
    stops = np.searchsorted(sorted_bins, np.arange(n_bins), side="right")
    out = np.full(n_bins, np.nan)
    for b in np.flatnonzero(stops - starts >= MIN_BIN_PIXELS):  # a loop over bins, not spectra
        values = sorted_pull[starts[b] : stops[b]]
        out[b] = (_MAD_TO_SIGMA * np.median(np.abs(values - np.median(values)))) ** 2
    fill = np.nanmedian(out) if np.isfinite(out).any() else 1.0
    return np.where(np.isfinite(out), out, fill)


def _model_error(residual: np.ndarray, ivar: np.ndarray, m2: np.ndarray, inflation: np.ndarray) -> float:
    """ε that makes the high-S/N pixels' pulls unit-variance: the root of median(pull²) = 0.455 (the
    median of χ²₁), found by bisection (median(pull²) falls as ε grows); 0 when they already are.
    """
    bright = ivar * m2 > HIGH_SNR2
    if bright.sum() < MIN_BIN_PIXELS:
        return 0.0
    r2, photon, m2 = residual[bright] ** 2, inflation[bright] / ivar[bright], m2[bright]

    def excess(error: float) -> float:
        return float(np.median(r2 / (photon + error**2 * m2))) - _CHI2_1_MEDIAN

    if excess(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def pixel_weights(
    spectra: Spectra,
    model: np.ndarray,
    noise: NoiseModel,
    forest: np.ndarray,
    forest_weight: float,
    forest_sigma: float,
) -> np.ndarray:
    """``1/variance`` per pixel (0 without data); in the Lyα forest the IGM's variance ``forest_sigma²``
    is added and the weight scaled by ``forest_weight``, as the VAE's likelihood does.
    """
    variance = noise.variance(spectra, model)
    forest_weights = forest_weight / (variance + forest_sigma**2)
    return np.where(forest[None, :], forest_weights, 1.0 / variance)
