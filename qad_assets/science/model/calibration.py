"""Scores standardised against S/N: a robust median and width of each score as a function of log S/N.

Raw goodness-of-fit numbers grow with S/N (the model is imperfect at the ~1 % level: invisible at S/N 2,
dominant at S/N 30), so every score is standardised against held-out spectra *as a function of S/N*.
Choices and figures: ``docs/scoring.md``. Plain numpy, no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from qad_assets.errors import TooFewSpectraError

#: S/N below this is treated as this (the log of a noise-only median is meaningless).
MIN_SNR = 0.1
#: Fewest held-out spectra that can calibrate a score (median and width against S/N, then a p-value).
MIN_CALIBRATION_ROWS = 20
_MAD_TO_SIGMA = 1.4826
_NORMAL_Q90 = 1.2816


def log_snr(snr: np.ndarray) -> np.ndarray:
    return np.log10(np.clip(np.nan_to_num(np.asarray(snr, np.float64), nan=MIN_SNR), MIN_SNR, None))


@dataclass(frozen=True)
class SnrCalibration:
    """Median and robust width of one score against x = log10 S/N, and the standardisation they give.

    The median is a quadratic in x fitted by least absolute deviations. Above the fitted S/N range it
    continues linearly with its end slope (model imperfection keeps growing with S/N); below, it is
    held at its end value (noise alone sets a χ²-like score there, whatever the S/N). The width is
    ``exp(line in x)``, fitted to log(1.4826·|residual|) by least absolute deviations (so it is the
    MAD at every x, stays positive and can grow tenfold over the S/N range, as a χ² spread does),
    held constant beyond the range and floored. Above the median, values are further divided by
    ``upper_scale``, the 90th percentile of the standardised calibration values over a normal
    distribution's: scores with a heavy upper tail (a maximum over many windows, a latent density) then
    reach a given z as rarely as a Gaussian one does, so that combined they compete on equal terms.
    """

    median_coef: tuple[float, ...]  # numpy.polynomial order: c0 + c1·x + c2·x²
    log_width_coef: tuple[float, ...]
    x_range: tuple[float, float]
    min_width: float
    upper_scale: float = 1.0

    def median(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.x_range
        inside = np.clip(x, lo, hi)
        poly = np.polynomial.Polynomial(self.median_coef)
        return poly(inside) + poly.deriv()(hi) * np.clip(x - hi, 0.0, None)

    def width(self, x: np.ndarray) -> np.ndarray:
        inside = np.clip(x, *self.x_range)
        return np.maximum(np.exp(np.polynomial.Polynomial(self.log_width_coef)(inside)), self.min_width)

    def standardise(self, values: np.ndarray, snr: np.ndarray) -> np.ndarray:
        """``(value − median(S/N)) / width(S/N)``: 0 is a typical normal spectrum of that S/N."""
        x = log_snr(snr)
        z = (np.asarray(values, np.float64) - self.median(x)) / self.width(x)
        return np.where(z > 0, z / self.upper_scale, z)

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_coef": list(self.median_coef),
            "log_width_coef": list(self.log_width_coef),
            "x_range": list(self.x_range),
            "min_width": self.min_width,
            "upper_scale": self.upper_scale,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SnrCalibration:
        return cls(
            tuple(float(c) for c in d["median_coef"]),
            tuple(float(c) for c in d["log_width_coef"]),
            (float(d["x_range"][0]), float(d["x_range"][1])),
            float(d["min_width"]),
            float(d["upper_scale"]),
        )


def fit_snr_calibration(values: np.ndarray, snr: np.ndarray) -> SnrCalibration:
    """Robust S/N trend of ``values`` on (mostly) normal spectra; non-finite rows are ignored.

    Least absolute deviations keep a few anomalies among the calibration spectra from pulling the
    fit. The width floor is 1 % of the median width, so a degenerate stretch cannot divide by ~0.
    """
    x, y = log_snr(snr), np.asarray(values, np.float64)
    use = np.isfinite(y)
    x, y = x[use], y[use]
    if x.size < MIN_CALIBRATION_ROWS:
        raise TooFewSpectraError(f"{x.size} finite calibration values; at least {MIN_CALIBRATION_ROWS} are needed")
    median_coef = _lad_polyfit(x, y, degree=2)
    spread = _MAD_TO_SIGMA * np.abs(y - np.polynomial.Polynomial(median_coef)(x))
    min_width = 0.01 * max(float(np.median(spread)), 1e-9)
    log_width_coef = _lad_polyfit(x, np.log(np.maximum(spread, min_width)), degree=1)
    core = SnrCalibration(tuple(median_coef), tuple(log_width_coef), (float(x.min()), float(x.max())), min_width)
    upper = max(float(np.percentile(core.standardise(y, 10**x), 90)) / _NORMAL_Q90, 0.5)
    return replace(core, upper_scale=upper)


def _lad_polyfit(x: np.ndarray, y: np.ndarray, degree: int, iterations: int = 50) -> np.ndarray:
    """Least-absolute-deviation polynomial (coefficients low → high) by iteratively reweighted LS."""
    design = np.vander(x, degree + 1, increasing=True)
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    scale = max(float(np.median(np.abs(y - np.median(y)))), 1e-12)
    for _ in range(iterations):
        weight = 1.0 / np.sqrt(np.maximum(np.abs(y - design @ coef), 1e-6 * scale))
        coef = np.linalg.lstsq(design * weight[:, None], y * weight, rcond=None)[0]
    return coef
