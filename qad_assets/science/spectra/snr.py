"""Signal-to-noise of spectra: per arm on the observed ``brz`` grid, and per rest pixel on the rest grid.

One home for S/N, so ingestion (``snr_b/r/z``), scoring and validation measure it the same way.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from qad_assets.science.spectra.arms import ARM_WAVE, ARMS, BRZ_WAVE, WAVE_STEP
from qad_assets.science.spectra.normalization import masked_median
from qad_assets.science.spectra.rest_frame import NORM_MIN_WAVE, RestFrameGrid


def arm_snr(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray) -> dict[str, pa.Array]:
    """``snr_b/r/z``: row median of flux*sqrt(ivar) over the good pixels of each arm's own window."""
    snr = np.sqrt(ivar)
    snr *= flux
    np.copyto(snr, np.float32(np.nan), where=~good)
    return {name: _row_median(snr[:, w], good[:, w]) for name, w in SNR_WINDOWS.items()}


def _row_median(values: np.ndarray, good: np.ndarray) -> pa.Array:
    """Median of each row's good values (the others are NaN), null when none: one vectorized sort (NaN
    last) and the middle index per row, instead of nanmedian's per-row Python loop."""
    ordered = np.sort(values, axis=1)
    ngood = np.count_nonzero(good, axis=1)
    lo = np.maximum((ngood - 1) // 2, 0)[:, None]
    hi = np.maximum(ngood // 2, 0)[:, None]
    med = 0.5 * (np.take_along_axis(ordered, lo, 1) + np.take_along_axis(ordered, hi, 1))
    return pa.array(med[:, 0].astype(np.float32), pa.float32(), mask=ngood == 0)


def _snr_windows() -> dict[str, slice]:
    """Each arm's own wavelength range on the brz grid."""
    out = {}
    for arm in ARMS:
        lo = round((ARM_WAVE[arm][0] - BRZ_WAVE[0]) / WAVE_STEP)
        out[f"snr_{arm.lower()}"] = slice(lo, lo + ARM_WAVE[arm].size)
    return out


SNR_WINDOWS = _snr_windows()


def spectrum_snr(flux: np.ndarray, ivar: np.ndarray, grid: RestFrameGrid) -> np.ndarray:
    """Median flux·√ivar per rest pixel redward of 1250 Å (no forest), float64 (N,).

    The pixels that set the normalization; all good pixels when fewer than 50 are there.
    """
    good = ivar > 0
    select = good & (grid.wave >= NORM_MIN_WAVE)
    few = select.sum(axis=1) < 50
    select[few] = good[few]
    return masked_median(flux * np.sqrt(np.clip(ivar, 0.0, None)), select)
