"""What an injection needs to know about its host, an observed quasar spectrum: its smooth signal, its
noise level, and its continuum and broad emission lines.

Everything is measured on the host's own observed ``brz`` pixels (flux, ivar; ivar = 0 where there is
no data), with the rest wavelength of pixel ``i`` at ``λ_i/(1 + z)``. Plain numpy/scipy.

* :func:`smooth_signal`: the ivar-weighted Gaussian average of the flux (sky-line pixels, with their low
  ivar, barely count): the signal with most of the noise averaged out.
* :func:`noise_reference`: the variance and the flux level a continuum pixel has, smoothed over ~100 Å,
  from which the photon noise of flux added to the fibre is scaled (:data:`OBJECT_NOISE_SHARE`).
* :func:`continuum_and_lines`: a continuum through line-free windows (Vanden Berk et al. 2001; Shen et
  al. 2011), interpolated in log λ and continued as ``f_λ ∝ λ^−1.5`` beyond the outermost ones, and each
  broad line fitted above it by non-negative least squares on a fixed basis of Gaussians in velocity
  (several widths and offsets): a smooth model of the host's lines, not a smoothed copy of its noise.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.optimize import nnls

from qad_assets.science.spectra.rest_frame import C_KMS

#: Smoothing (observed pixels of 0.8 Å) of the signal estimate: σ = 8 px ≈ 6 Å ≈ 350 km/s, well below a
#: broad line's width.
SIGNAL_SMOOTH_PIXELS = 8.0
#: Smoothing of the noise reference: σ = 60 px ≈ 50 Å (throughput and sky continuum vary slowly).
NOISE_SMOOTH_PIXELS = 60.0
#: Fraction of a faint DESI quasar's pixel variance that its own photons make (the sky, the read noise
#: make the rest): a dark-time fibre sees ~20.4 mag of sky in r against r ≈ 21.5 of quasar. Flux ``F``
#: added to a fibre brings variance ``OBJECT_NOISE_SHARE · V · F / R`` (``V``, ``R``: the host's
#: continuum variance and flux level there).
OBJECT_NOISE_SHARE = 0.25

#: Rest-frame windows (Å) free of strong emission lines, where the continuum is measured.
CONTINUUM_WINDOWS: tuple[tuple[float, float], ...] = (
    (1275.0, 1290.0),
    (1350.0, 1360.0),
    (1445.0, 1465.0),
    (1690.0, 1705.0),
    (1770.0, 1810.0),
    (2150.0, 2250.0),
    (2500.0, 2600.0),
    (3050.0, 3150.0),
    (3790.0, 3810.0),
    (4200.0, 4230.0),
    (4470.0, 4600.0),
    (5100.0, 5500.0),
    (6005.0, 6035.0),
    (6110.0, 6250.0),
    (6800.0, 7000.0),
)
#: f_λ ∝ λ^α beyond the outermost measured windows.
CONTINUUM_SLOPE = -1.5
#: A window counts when this fraction of its pixels is observed.
MIN_WINDOW_COVERED = 0.5

#: Broad lines: name, rest centres (vacuum Å) and the rest range (Å) the fit uses. Lyα only redward of
#: its peak (the forest absorbs its blue side); C III] with Si III] and Al III, Si IV with O IV].
BROAD_LINES: tuple[tuple[str, tuple[float, ...], tuple[float, float]], ...] = (
    ("lya_nv", (1215.67, 1240.14), (1216.0, 1275.0)),
    ("siiv", (1399.8,), (1365.0, 1435.0)),
    ("civ", (1549.06,), (1470.0, 1615.0)),
    ("heii", (1640.42,), (1615.0, 1685.0)),
    ("ciii", (1908.73, 1892.03, 1857.40), (1825.0, 1965.0)),
    ("mgii", (2798.75,), (2680.0, 2920.0)),
    ("hgamma", (4341.68,), (4250.0, 4440.0)),
    ("hbeta", (4862.68,), (4700.0, 4940.0)),
    ("halpha", (6564.61,), (6380.0, 6760.0)),
)
#: The Gaussians a line is built of: velocity offsets (km/s, negative = blueshift) × widths σ (km/s).
LINE_OFFSETS_KMS = (-2500.0, -1000.0, 0.0, 1000.0)
LINE_SIGMAS_KMS = (800.0, 1600.0, 3200.0)
#: A line is fitted when this fraction of its range is observed.
MIN_LINE_COVERED = 0.7


def rest_wave(wave: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Rest wavelength (N, P) of every observed pixel of every spectrum."""
    return np.asarray(wave, np.float64)[None, :] / (1.0 + np.asarray(z, np.float64))[:, None]


def _weighted_smooth(values: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    total = gaussian_filter1d(weights * values, sigma, axis=1, mode="nearest")
    norm = gaussian_filter1d(weights, sigma, axis=1, mode="nearest")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm > 1e-12 * norm.max(initial=0.0), total / norm, 0.0)


def smooth_signal(flux: np.ndarray, ivar: np.ndarray, sigma: float = SIGNAL_SMOOTH_PIXELS) -> np.ndarray:
    """ivar-weighted Gaussian average of the flux over the good pixels (N, P)."""
    return _weighted_smooth(np.asarray(flux, np.float64), np.clip(np.asarray(ivar, np.float64), 0.0, None), sigma)


def noise_reference(flux: np.ndarray, ivar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(V, R)`` (N, P): the continuum pixel variance (the inverse of the smoothed ivar, so sky-line
    pixels barely count) and the smoothed flux level, floored at 10 % of its median so that a trough or
    the forest does not make the photon noise of added flux explode."""
    ivar = np.clip(np.asarray(ivar, np.float64), 0.0, None)
    good = (ivar > 0).astype(np.float64)
    mean_ivar = _weighted_smooth(ivar, good, NOISE_SMOOTH_PIXELS)
    level = _weighted_smooth(np.asarray(flux, np.float64), ivar, NOISE_SMOOTH_PIXELS)
    positive = np.where(good > 0, np.abs(level), np.nan)
    with np.errstate(all="ignore"):
        floor = 0.1 * np.nan_to_num(np.nanmedian(positive, axis=1), nan=1.0)
    floor = np.where(floor > 0, floor, 1.0)
    variance = np.where(mean_ivar > 0, 1.0 / np.where(mean_ivar > 0, mean_ivar, 1.0), 0.0)
    return variance, np.maximum(level, floor[:, None])


def continuum(flux: np.ndarray, ivar: np.ndarray, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The continuum (N, P) through :data:`CONTINUUM_WINDOWS` and how many windows each spectrum had.

    Per window, the ivar-weighted mean flux of its observed pixels (unbiased at any S/N, unlike a
    median of a skewed distribution); between windows linear in ln λ, beyond them ``λ^α``. A spectrum
    with no window observed gets its smoothed-signal median as a flat continuum.
    """
    flux, ivar = np.asarray(flux, np.float64), np.clip(np.asarray(ivar, np.float64), 0.0, None)
    n = len(flux)
    out = np.empty_like(flux)
    counts = np.zeros(n, np.int64)
    step = np.median(np.diff(rest, axis=1), axis=1)  # rest Å per pixel
    for i in range(n):
        x, y = [], []
        for lo, hi in CONTINUUM_WINDOWS:
            inside = (rest[i] >= lo) & (rest[i] < hi)
            seen = inside & (ivar[i] > 0)
            if seen.sum() < max(3, MIN_WINDOW_COVERED * (hi - lo) / step[i]):
                continue
            x.append(np.log(0.5 * (lo + hi)))
            y.append(np.sum(ivar[i, seen] * flux[i, seen]) / np.sum(ivar[i, seen]))
        counts[i] = len(x)
        log_wave = np.log(rest[i])
        if not x:
            good = ivar[i] > 0
            out[i] = np.median(flux[i, good]) if good.any() else 0.0
            continue
        x_arr, y_arr = np.asarray(x), np.asarray(y)
        out[i] = np.interp(log_wave, x_arr, y_arr)
        blue, red = log_wave < x_arr[0], log_wave > x_arr[-1]
        out[i, blue] = y_arr[0] * np.exp(CONTINUUM_SLOPE * (log_wave[blue] - x_arr[0]))
        out[i, red] = y_arr[-1] * np.exp(CONTINUUM_SLOPE * (log_wave[red] - x_arr[-1]))
    return out, counts


def _line_basis(rest: np.ndarray, centres: tuple[float, ...]) -> np.ndarray:
    """(P, K) Gaussians in velocity around each centre, peak 1."""
    columns = []
    for centre in centres:
        velocity = C_KMS * np.log(rest / centre)
        for offset in LINE_OFFSETS_KMS:
            for sigma in LINE_SIGMAS_KMS:
                columns.append(np.exp(-0.5 * ((velocity - offset) / sigma) ** 2))
    return np.stack(columns, axis=1)


def continuum_and_lines(
    flux: np.ndarray, ivar: np.ndarray, wave: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """``(C, L, names)``: continuum and broad-line flux (N, P) of each observed spectrum, and the lines
    it had enough coverage for. ``L`` is the sum of every fitted line's smooth model (≥ 0); a line is
    fitted to ``flux − C`` minus the lines fitted before it (overlapping wings count once) over its
    range, ivar-weighted, when :data:`MIN_LINE_COVERED` of the range is
    observed and at least two continuum windows are.
    """
    flux, ivar = np.asarray(flux, np.float64), np.clip(np.asarray(ivar, np.float64), 0.0, None)
    rest = rest_wave(wave, z)
    cont, windows = continuum(flux, ivar, rest)
    lines = np.zeros_like(flux)
    names: list[list[str]] = [[] for _ in range(len(flux))]
    step = np.median(np.diff(rest, axis=1), axis=1)
    for i in range(len(flux)):
        if windows[i] < 2:
            continue
        for name, centres, (lo, hi) in BROAD_LINES:
            inside = (rest[i] >= lo) & (rest[i] < hi)
            seen = inside & (ivar[i] > 0)
            if seen.sum() < MIN_LINE_COVERED * (hi - lo) / step[i]:
                continue
            basis = _line_basis(rest[i], centres)
            root = np.sqrt(ivar[i, seen])
            excess = flux[i, seen] - cont[i, seen] - lines[i, seen]
            coef, _ = nnls(basis[seen] * root[:, None], excess * root, maxiter=2000)
            lines[i] += basis @ coef
            names[i].append(name)
    return cont, lines, names
