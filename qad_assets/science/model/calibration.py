"""Scores standardised against S/N, then matched to a Gaussian tail.

Raw goodness-of-fit numbers grow with S/N (the model is imperfect at the ~1 % level: invisible at S/N 2,
dominant at S/N 30), so every score is standardised against held-out spectra *as a function of S/N*
(a robust median and width of the score against log S/N). Scores differ in the shape of their upper
tail (a maximum over many windows, an arm offset with a heavy-tailed calibration error), so the upper
half is then mapped through the held-out spectra's own tail onto a normal one: a standardised value
of 3 is as rare for every score, and combined they compete on equal terms.
Choices and figures: ``docs/scoring.md``. Plain numpy, no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.special import ndtri

from qad_assets.errors import TooFewSpectraError

#: S/N below this is treated as this (the log of a noise-only median is meaningless).
MIN_SNR = 0.1
#: Fewest held-out spectra that can calibrate a score (median and width against S/N, then a p-value).
MIN_CALIBRATION_ROWS = 20
_MAD_TO_SIGMA = 1.4826
#: The tail map's knots: upper-tail probabilities from 1/2 down to the TAIL_MIN_COUNT-th largest value.
TAIL_KNOTS, TAIL_MIN_COUNT = 24, 5


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
    held constant beyond the range and floored.

    Above zero the standardised value ``u`` is then mapped piecewise-linearly through ``tail``: knots
    ``(u_k, g_k)`` where ``u_k`` is the held-out spectra's upper quantile of tail probability ``p_k``
    and ``g_k`` the normal quantile of the same ``p_k``. Beyond the last knot it continues with the
    tail's mean slope, so the strongest anomalies stay ranked instead of tied at the last knot.
    """

    median_coef: tuple[float, ...]  # numpy.polynomial order: c0 + c1·x + c2·x²
    log_width_coef: tuple[float, ...]
    x_range: tuple[float, float]
    min_width: float
    tail: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0, 1.0), (0.0, 1.0))

    def median(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.x_range
        inside = np.clip(x, lo, hi)
        poly = np.polynomial.Polynomial(self.median_coef)
        return poly(inside) + poly.deriv()(hi) * np.clip(x - hi, 0.0, None)

    def width(self, x: np.ndarray) -> np.ndarray:
        inside = np.clip(x, *self.x_range)
        return np.maximum(np.exp(np.polynomial.Polynomial(self.log_width_coef)(inside)), self.min_width)

    def standardise(self, values: np.ndarray, snr: np.ndarray) -> np.ndarray:
        """``(value − median(S/N)) / width(S/N)`` with its upper half tail-matched: 0 is a typical
        normal spectrum of that S/N, and a normal spectrum exceeds z as often as a Gaussian does."""
        x = log_snr(snr)
        u = (np.asarray(values, np.float64) - self.median(x)) / self.width(x)
        return np.where(u > 0, self._tail_map(u), u)

    def _tail_map(self, u: np.ndarray) -> np.ndarray:
        knots_u, knots_g = (np.asarray(k) for k in self.tail)
        slope = (knots_g[-1] - knots_g[0]) / max(knots_u[-1] - knots_u[0], 1e-12)
        beyond = knots_g[-1] + slope * (u - knots_u[-1])
        return np.where(u > knots_u[-1], beyond, np.interp(u, knots_u, knots_g))

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_coef": list(self.median_coef),
            "log_width_coef": list(self.log_width_coef),
            "x_range": list(self.x_range),
            "min_width": self.min_width,
            "tail": [list(k) for k in self.tail],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SnrCalibration:
        return cls(
            tuple(float(c) for c in d["median_coef"]),
            tuple(float(c) for c in d["log_width_coef"]),
            (float(d["x_range"][0]), float(d["x_range"][1])),
            float(d["min_width"]),
            (tuple(float(u) for u in d["tail"][0]), tuple(float(g) for g in d["tail"][1])),
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
    return replace(core, tail=_fit_tail(core.standardise(y, 10**x)))


def _fit_tail(u: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Knots from the standardised held-out values' upper quantiles to the normal's, anchored at (0, 0).

    The knots are strictly increasing in both coordinates (ties in ``u`` would make the map a step).
    """
    p_low = max(TAIL_MIN_COUNT / u.size, 1e-6)
    if p_low >= 0.5:
        return (0.0, 1.0), (0.0, 1.0)
    p = np.geomspace(0.5, p_low, TAIL_KNOTS)[1:]
    knots_u = np.maximum(np.quantile(u, 1.0 - p), 0.0)
    knots_u = np.concatenate([[0.0], knots_u])
    knots_u = np.maximum.accumulate(knots_u + 1e-9 * np.arange(knots_u.size))
    knots_g = np.concatenate([[0.0], -ndtri(p)])
    return tuple(knots_u.tolist()), tuple(knots_g.tolist())


def _lad_polyfit(x: np.ndarray, y: np.ndarray, degree: int, iterations: int = 50) -> np.ndarray:
    """Least-absolute-deviation polynomial (coefficients low → high) by iteratively reweighted LS."""
    design = np.vander(x, degree + 1, increasing=True)
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    scale = max(float(np.median(np.abs(y - np.median(y)))), 1e-12)
    for _ in range(iterations):
        weight = 1.0 / np.sqrt(np.maximum(np.abs(y - design @ coef), 1e-6 * scale))
        coef = np.linalg.lstsq(design * weight[:, None], y * weight, rcond=None)[0]
    return coef
