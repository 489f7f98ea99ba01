"""Signal-to-noise of spectra: per arm on the observed ``brz`` grid, and per rest pixel on the rest grid.

One home for S/N, so ingestion (``snr_b/r/z``), scoring and validation measure it the same way.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from qad_assets.science.spectra.arms import ARM_WAVE, ARMS, BRZ_WAVE, WAVE_STEP
from qad_assets.science.spectra.rest_frame import NORM_MIN_WAVE


def masked_median(values: np.ndarray, select: np.ndarray) -> np.ndarray:
    """Row medians (float64) of ``values[select]``, NaN for empty rows: one vectorized sort (NaN last) and
    the middle index per row, instead of nanmedian's per-row Python loop."""
    ordered = np.sort(np.where(select, values, np.nan), axis=1)
    count = select.sum(axis=1)
    rows = np.arange(values.shape[0])
    low = ordered[rows, np.maximum(count - 1, 0) // 2].astype(np.float64)
    high = ordered[rows, np.minimum(count // 2, values.shape[1] - 1)].astype(np.float64)
    return np.where(count > 0, 0.5 * (low + high), np.nan)


def arm_snr(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray) -> dict[str, pa.Array]:
    """``snr_b/r/z``: row median of flux*sqrt(ivar) over the good pixels of each arm's own window."""
    snr = np.sqrt(ivar)
    snr *= flux
    medians = {name: masked_median(snr[:, w], good[:, w]) for name, w in SNR_WINDOWS.items()}
    return {name: pa.array(m.astype(np.float32), pa.float32(), mask=np.isnan(m)) for name, m in medians.items()}


def _snr_windows() -> dict[str, slice]:
    """Each arm's own wavelength range on the brz grid."""
    out = {}
    for arm in ARMS:
        lo = round((ARM_WAVE[arm][0] - BRZ_WAVE[0]) / WAVE_STEP)
        out[f"snr_{arm.lower()}"] = slice(lo, lo + ARM_WAVE[arm].size)
    return out


SNR_WINDOWS = _snr_windows()


def spectrum_snr(flux: np.ndarray, ivar: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """Median flux·√ivar per rest pixel redward of 1250 Å (no forest), float64 (N,), on the grid ``wave``.

    The pixels that set the normalization; all good pixels when fewer than 50 are there.
    """
    good = ivar > 0
    select = good & (np.asarray(wave) >= NORM_MIN_WAVE)
    few = select.sum(axis=1) < 50
    select[few] = good[few]
    return masked_median(flux * np.sqrt(np.clip(ivar, 0.0, None)), select)
