"""How strong a quasar's broad lines are against what its luminosity predicts (the Baldwin effect).

A weak-line quasar is reconstructed well by a flexible model (a smooth continuum is easy), so it must
be found by measuring its lines. Each broad line is measured by a matched filter: over the line window
and its two continuum side bands the spectrum is fitted, by weighted least squares, as a straight
continuum plus ``A`` times the release's own composite line profile (the median normalized spectrum of
the training quasars, continuum-subtracted): ``A = 1`` is a typical line, ``A = 0`` none. A matched
filter uses every pixel of the line with its weight, so it still measures ``A`` at S/N 1–2 per pixel
where an equivalent width from side-band medians is mostly noise. The expected ``A`` falls with
luminosity as ``log A = a + b·(log L − log L₀)``, fitted per line on the training quasars (``L`` from
the normalization scale and the luminosity distance; the slope is the Baldwin effect, measured, not
assumed). A spectrum's line excess is the Stouffer combination over its covered lines of
``(A − Â)/√(σ_A² + s²)`` with ``s`` the intrinsic scatter. Plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.cosmology import Planck18

from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.features import LINES, pixels
from qad_assets.science.spectra.rest_frame import LYA_FOREST_MAX, REST_GRID, RestFrameGrid
from qad_assets.science.spectra.snr import masked_median

#: The lines measured: every broad line of ``features.LINES``; Lyα only redward of its peak (the forest).
LINE_NAMES = ("lya", "siiv", "civ", "ciii", "mgii", "hbeta", "halpha")
#: Coverage a measurement needs: of the window, and of each side band.
MIN_WINDOW_COVERED, MIN_BAND_COVERED = 0.8, 0.5
#: A line enters the Baldwin fit when measured this well (σ_A).
MAX_FIT_SIGMA = 0.25
MIN_FIT_SPECTRA = 20
_MAD_TO_SIGMA = 1.4826
_Z_TABLE = np.linspace(0.0, 7.0, 701)
_LOG_DL2 = 2.0 * np.log10(Planck18.luminosity_distance(np.maximum(_Z_TABLE, 1e-4)).to_value("Mpc"))


def _fit_range(name: str, grid: RestFrameGrid) -> tuple[slice, slice, list[slice]]:
    """(whole fit range, line window, side bands) as pixel slices; Lyα's window starts at its peak."""
    line = LINES[name]
    lo = max(line.window[0], LYA_FOREST_MAX) if name == "lya" else line.window[0]
    window = pixels(grid, lo, line.window[1])
    bands = [pixels(grid, *line.blue), pixels(grid, *line.red)]
    start = min(window.start, bands[0].start)
    return slice(start, max(window.stop, bands[1].stop)), window, bands


def log_luminosity(spectra: Spectra) -> np.ndarray:
    """log10(scale·D_L²) (arbitrary zero point): the luminosity that sets the Baldwin effect; NaN
    without a normalization scale."""
    scale = np.asarray(spectra.columns.get("scale", np.full(len(spectra), np.nan)), np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log10(np.where(scale > 0, scale, np.nan)) + np.interp(spectra.z, _Z_TABLE, _LOG_DL2)


@dataclass(frozen=True)
class LineModel:
    """Composite profiles of the lines and their Baldwin relations, fitted on one release."""

    profiles: dict[str, np.ndarray]  # line → profile over its fit range (0 in the side bands)
    intercept: dict[str, float]  # log10 Â at log L₀
    slope: dict[str, float]  # d log10 Â / d log L
    scatter: dict[str, float]  # intrinsic scatter of log10 A
    log_l0: float

    def amplitudes(self, spectra: Spectra, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``A`` and σ_A of every line (N, K), NaN where a line is not covered."""
        return measure_lines(spectra, weights, self.profiles, REST_GRID)

    def excess(self, spectra: Spectra, weights: np.ndarray) -> np.ndarray:
        """Stouffer combination of the lines' standardized deviations from the Baldwin relation, (N,):
        negative for weak lines, positive for strong ones, NaN when no line is covered.
        """
        amplitude, sigma = self.amplitudes(spectra, weights)
        log_l = log_luminosity(spectra)
        log_l = np.where(np.isfinite(log_l), log_l, self.log_l0)[:, None]
        names = list(self.profiles)
        a = np.array([self.intercept[n] for n in names])
        b = np.array([self.slope[n] for n in names])
        s = np.array([self.scatter[n] for n in names])
        expected = 10.0 ** (a + b * (log_l - self.log_l0))
        spread = expected * np.log(10.0) * s
        t = (amplitude - expected) / np.sqrt(sigma**2 + spread**2)
        covered = np.isfinite(t)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(covered.any(axis=1), np.nansum(t, axis=1) / np.sqrt(covered.sum(axis=1)), np.nan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profiles": {n: p.tolist() for n, p in self.profiles.items()},
            "intercept": self.intercept,
            "slope": self.slope,
            "scatter": self.scatter,
            "log_l0": self.log_l0,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LineModel:
        return cls(
            {n: np.asarray(p, np.float64) for n, p in d["profiles"].items()},
            {n: float(v) for n, v in d["intercept"].items()},
            {n: float(v) for n, v in d["slope"].items()},
            {n: float(v) for n, v in d["scatter"].items()},
            float(d["log_l0"]),
        )


def fit_line_model(spectra: Spectra, weights: np.ndarray, grid: RestFrameGrid = REST_GRID) -> LineModel:
    """Composite profiles from ``spectra`` (training quasars), then each line's Baldwin relation."""
    composite = masked_median(spectra.flux.T, (spectra.ivar > 0).T)
    profiles = {name: _profile(composite, name, grid) for name in LINE_NAMES}
    profiles = {name: p for name, p in profiles.items() if p is not None}
    amplitude, sigma = measure_lines(spectra, weights, profiles, grid)
    log_l = log_luminosity(spectra)
    log_l0 = float(np.nanmedian(log_l)) if np.isfinite(log_l).any() else 0.0
    intercept, slope, scatter = {}, {}, {}
    for k, name in enumerate(profiles):
        intercept[name], slope[name], scatter[name] = _baldwin(amplitude[:, k], sigma[:, k], log_l - log_l0)
    return LineModel(profiles, intercept, slope, scatter, log_l0)


def _profile(composite: np.ndarray, name: str, grid: RestFrameGrid) -> np.ndarray | None:
    """The composite's line over a straight continuum through its side bands (≥ 0), on the fit range."""
    whole, window, bands = _fit_range(name, grid)
    wave = grid.wave[whole]
    centres = [np.log(grid.wave[b]).mean() for b in bands]
    levels = [np.nanmedian(composite[b]) if np.isfinite(composite[b]).any() else np.nan for b in bands]
    if not all(np.isfinite(levels)) or min(levels) <= 0:
        return None
    continuum = np.interp(np.log(wave), centres, levels)
    profile = np.nan_to_num(composite[whole] / continuum - 1.0).clip(min=0.0)
    inside = np.zeros(wave.size, bool)
    inside[window.start - whole.start : window.stop - whole.start] = True
    return np.where(inside, profile, 0.0)


def measure_lines(
    spectra: Spectra, weights: np.ndarray, profiles: dict[str, np.ndarray], grid: RestFrameGrid
) -> tuple[np.ndarray, np.ndarray]:
    """Per line, the weighted least-squares fit ``f = c₀ + c₁·x + B·profile`` (batched 3×3 normal
    equations) and ``A = B/c₀`` with its standard error; NaN where the line is not covered.
    """
    n = len(spectra)
    amplitude = np.full((n, len(profiles)), np.nan)
    sigma = np.full((n, len(profiles)), np.nan)
    for k, (name, profile) in enumerate(profiles.items()):  # a loop over lines, vectorized over spectra
        whole, window, bands = _fit_range(name, grid)
        w = np.asarray(weights[:, whole], np.float64)
        covered = (w[:, window.start - whole.start : window.stop - whole.start] > 0).mean(axis=1) >= MIN_WINDOW_COVERED
        for band in bands:
            covered &= (w[:, band.start - whole.start : band.stop - whole.start] > 0).mean(axis=1) >= MIN_BAND_COVERED
        x = np.linspace(-1.0, 1.0, profile.size)
        basis = np.stack([np.ones_like(x), x, profile])  # (3, M)
        gram = np.einsum("nm,im,jm->nij", w, basis, basis)
        rhs = np.einsum("nm,im->ni", w * spectra.flux[:, whole], basis)
        ok = covered & (np.linalg.det(gram) > 0)
        gram[~ok] = np.eye(3)
        solution = np.linalg.solve(gram, rhs[..., None])[..., 0]
        covariance = np.linalg.inv(gram)
        c0, b = solution[:, 0], solution[:, 2]
        valid = ok & (c0 > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            amplitude[:, k] = np.where(valid, b / c0, np.nan)
            sigma[:, k] = np.where(valid, np.sqrt(covariance[:, 2, 2]) / c0, np.nan)
    return amplitude, sigma


def _baldwin(amplitude: np.ndarray, sigma: np.ndarray, log_l: np.ndarray) -> tuple[float, float, float]:
    """(intercept, slope, intrinsic scatter) of log10 A against log L on the well-measured lines;
    no luminosity trend and 0.15 dex when too few are measured."""
    use = np.isfinite(amplitude) & (sigma < MAX_FIT_SIGMA) & (amplitude > 0.05) & np.isfinite(log_l)
    if use.sum() < MIN_FIT_SPECTRA:
        return 0.0, 0.0, 0.15
    y, x = np.log10(amplitude[use]), log_l[use]
    slope, intercept = _lad_line(x, y)
    residual = y - (intercept + slope * x)
    spread = _MAD_TO_SIGMA * np.median(np.abs(residual - np.median(residual)))
    noise = np.median(sigma[use] / (amplitude[use] * np.log(10.0)))
    return float(intercept), float(slope), float(np.sqrt(max(spread**2 - noise**2, 0.05**2)))


def _lad_line(x: np.ndarray, y: np.ndarray, iterations: int = 30) -> tuple[float, float]:
    """Least-absolute-deviation line by iteratively reweighted least squares: (slope, intercept)."""
    design = np.stack([np.ones_like(x), x], axis=1)
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    for _ in range(iterations):
        weight = 1.0 / np.sqrt(np.maximum(np.abs(y - design @ coef), 1e-4))
        coef = np.linalg.lstsq(design * weight[:, None], y * weight, rcond=None)[0]
    return float(coef[1]), float(coef[0])
