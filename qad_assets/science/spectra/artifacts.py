"""Instrumental artifacts seen in the observed frame, before resampling blurs them: isolated spikes.

A spurious spike (an unmasked cosmic ray, a bad column, a hot pixel the coadd kept) is one or two
pixels far above their neighbours. Nothing physical in a quasar spectrum is that narrow at DESI's
resolution (a broad line spans tens of pixels, a narrow absorber is negative), and sky-subtraction
residuals sit where the pipeline's own ivar dips (the sky line's photon noise). So the statistic is
the largest positive pull ``(flux − local median)·√ivar`` over pixels that stand alone and are not at
an ivar dip, measured on whatever grid the spectrum arrives on.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy.ndimage import maximum_filter1d

#: Half-width (pixels) of the local median a pixel is compared with: 5 pixels follow a broad line and
#: outvote a one- or two-pixel spike.
HALF_WINDOW = 2
#: Window (pixels) of the ivar reference that tells a sky line (ivar well below its neighbourhood).
IVAR_WINDOW = 51
#: A pixel whose ivar is below this fraction of its neighbourhood's sits on a sky line (or an arm edge).
SKY_IVAR_FRACTION = 0.6
#: A spike stands alone: within ±HALF_WINDOW pixels at most one other pixel rises above ISOLATION_PULL σ.
ISOLATION_PULL = 3.0


def spike_pull(flux: np.ndarray, ivar: np.ndarray) -> np.ndarray:
    """Per spectrum, the largest pull of an isolated, positive, non-sky pixel (0 when none), float32 (N,).

    ``flux``/``ivar`` are (N, P) on one observed grid, ivar 0 where a pixel has no data. A run of two
    high pixels counts (its higher one); a run of three or more is a feature, not a spike.
    """
    flux = np.ascontiguousarray(flux, np.float32)
    ivar = np.ascontiguousarray(ivar, np.float32)
    reference = maximum_filter1d(np.where(ivar > 0, ivar, 0.0).astype(np.float32), IVAR_WINDOW, axis=1)
    return _spike_kernel(flux, ivar, reference)


@numba.njit(nogil=True, cache=False)
def _spike_kernel(flux: np.ndarray, ivar: np.ndarray, reference: np.ndarray) -> np.ndarray:  # pragma: no cover
    n, npix = flux.shape
    out = np.zeros(n, np.float32)
    window = np.empty(2 * HALF_WINDOW + 1, np.float32)
    pull = np.zeros(npix, np.float32)
    for row in range(n):
        for i in range(npix):
            pull[i] = 0.0
            if ivar[row, i] <= 0:
                continue
            m = 0  # insertion sort of the good pixels of the window (at most 5)
            for j in range(max(i - HALF_WINDOW, 0), min(i + HALF_WINDOW + 1, npix)):
                if ivar[row, j] > 0:
                    k = m
                    while k > 0 and window[k - 1] > flux[row, j]:
                        window[k] = window[k - 1]
                        k -= 1
                    window[k] = flux[row, j]
                    m += 1
            median = 0.5 * (window[(m - 1) // 2] + window[m // 2])
            pull[i] = (flux[row, i] - median) * np.sqrt(ivar[row, i])
        best = np.float32(0.0)
        for i in range(npix):
            if pull[i] <= best or ivar[row, i] < SKY_IVAR_FRACTION * reference[row, i]:
                continue
            high = 0
            for j in range(max(i - HALF_WINDOW, 0), min(i + HALF_WINDOW + 1, npix)):
                if pull[j] > ISOLATION_PULL:
                    high += 1
            if high <= 2:
                best = pull[i]
        out[row] = best
    return out
