"""Physical features of rest-frame quasar spectra: S/N, continuum slope, broad lines, BAL indices.

One row per quasar of a ``normalized_spectra`` partition. The numeric core (:func:`feature_arrays`) is
numpy, vectorized across spectra (loops run over the handful of lines and windows, never over spectra);
the dataframe layer turns its NaN ("not measurable: not covered") into nulls, in polars or cuDF.

Units: wavelengths rest-frame vacuum Å, equivalent widths rest Å (emission positive), velocities km/s
(positive = redward), BAL indices km/s. Features are ratios of flux to a continuum, so the per-spectrum
normalization scale drops out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from astropy.io import fits

from qad_assets.errors import GridMismatchError
from qad_assets.science.spectra.container import list_to_numpy
from qad_assets.science.spectra.normalization import masked_median
from qad_assets.science.spectra.rest_frame import C_KMS, EMISSION_LINES, REST_GRID, RestFrameGrid

if TYPE_CHECKING:
    import cudf


@dataclass(frozen=True)
class LineWindow:
    """A broad line: reference wavelength, integration window and two continuum side bands (rest Å)."""

    ref: float
    window: tuple[float, float]
    blue: tuple[float, float]
    red: tuple[float, float]


#: Side bands sit in the quasar's relatively line-free regions (Vanden Berk et al. 2001; Shen et al. 2011).
#: Lyα+N V (window as Diamond-Stanic et al. 2009) takes both bands redward: blueward is the Lyα forest.
LINES: dict[str, LineWindow] = {
    "lya": LineWindow(EMISSION_LINES["LyA"], (1160.0, 1285.0), (1285.0, 1295.0), (1445.0, 1465.0)),
    "siiv": LineWindow(EMISSION_LINES["SiIV"], (1360.0, 1440.0), (1340.0, 1360.0), (1445.0, 1465.0)),
    "civ": LineWindow(EMISSION_LINES["CIV"], (1500.0, 1600.0), (1445.0, 1465.0), (1690.0, 1705.0)),
    "ciii": LineWindow(EMISSION_LINES["CIII]"], (1850.0, 1970.0), (1790.0, 1810.0), (1975.0, 2000.0)),
    "mgii": LineWindow(EMISSION_LINES["MgII"], (2700.0, 2900.0), (2655.0, 2685.0), (2915.0, 2945.0)),
    "hbeta": LineWindow(EMISSION_LINES["Hbeta"], (4760.0, 4940.0), (4610.0, 4640.0), (5080.0, 5120.0)),
    "halpha": LineWindow(EMISSION_LINES["Halpha"], (6400.0, 6700.0), (6190.0, 6250.0), (6800.0, 6850.0)),
}

#: Windows for the power-law continuum f_λ ∝ λ^α (Vanden Berk et al. 2001 used 1350–1365, 4200–4230).
CONTINUUM_WINDOWS: tuple[tuple[float, float], ...] = (
    (1350.0, 1365.0),
    (1445.0, 1465.0),
    (1690.0, 1705.0),
    (2195.0, 2225.0),
    (3020.0, 3040.0),
    (4200.0, 4230.0),
    (5090.0, 5110.0),
    (6005.0, 6035.0),
    (6850.0, 6880.0),
)
#: α needs at least two windows spanning this factor in λ.
MIN_SLOPE_SPAN = 1.2

MIN_WINDOW_GOOD = 0.8  # fraction of a line (or BAL) window that must be good to measure it
MIN_BAND_GOOD = 0.5  # fraction of each continuum band / window that must be good
SMOOTH_PIXELS = 5  # boxcar for peak and FWHM (≈ 860 km/s on REST_GRID, ≪ a broad line)
MIN_PEAK_SNR = 3.0  # a line peak must stand this many σ (of the smoothed profile) above the continuum

# The DESI BAL finder's definitions (paulmartini/baltools, balconfig.py and fitbal.py).
BAL_LINES = {"civ": 1549.0, "siiv": 1398.0}  # baltools' reference wavelengths, Å
BAL_VMIN, BAL_VMAX_BI, BAL_VMAX_AI = -25000.0, -3000.0, 0.0  # km/s
BI_MIN_WIDTH, AI_MIN_WIDTH = 2000.0, 450.0  # km/s of contiguous trough before C = 1
BAL_FIT_RANGE = (1261.0, 2399.0)  # rest Å fitted with the PCA continuum
BAL_MAX_ITER = 10
PCA_FILE = "data/baltools/PCA_Eigenvectors.fits"

Backend = Literal["polars", "cudf"]


def spectral_features(
    normalized: pa.Table | pl.DataFrame, grid: RestFrameGrid = REST_GRID, *, backend: Backend = "polars"
) -> pl.DataFrame | cudf.DataFrame:
    """The feature table of one ``normalized_spectra`` partition: a polars DataFrame (cuDF with
    ``backend="cudf"``; the numbers come from the same numpy core, only the frame differs).

    Columns: TARGETID, Z, snr_b/r/z (passed through), snr_rest (median flux·√ivar per rest pixel),
    alpha_lambda, ``<line>_ew``/``_fwhm``/``_voff`` for each of :data:`LINES`, and ``civ_bi``,
    ``civ_ai``, ``siiv_bi``, ``siiv_ai``. A feature the spectrum does not cover is null.
    """
    if backend not in ("polars", "cudf"):
        raise ValueError(f"backend must be 'polars' or 'cudf', not {backend!r}")
    table = normalized if isinstance(normalized, pa.Table) else normalized.to_arrow()
    flux, ivar = list_to_numpy(table["flux"]), list_to_numpy(table["ivar"])
    if flux.shape[1] != grid.npix:
        raise GridMismatchError(f"spectra have {flux.shape[1]} pixels, the grid {grid.npix}")
    columns: dict[str, Any] = {name: table[name] for name in ("TARGETID", "Z", "snr_b", "snr_r", "snr_z")}
    features = pa.table(columns | feature_arrays(flux, ivar, grid))
    if backend == "cudf":
        import cudf  # optional GPU dataframe; the numeric core is the same

        return cudf.DataFrame.from_arrow(features).nans_to_nulls()
    return pl.from_arrow(features).fill_nan(None)


def feature_arrays(flux: np.ndarray, ivar: np.ndarray, grid: RestFrameGrid = REST_GRID) -> dict[str, np.ndarray]:
    """All features as float64 arrays ``(N,)``, NaN where not measurable; vectorized across spectra."""
    good = ivar > 0
    out = {
        "snr_rest": masked_median(flux * np.sqrt(ivar), good),
        "alpha_lambda": continuum_slope(flux, good, grid),
    }
    for name, line in LINES.items():
        ew, fwhm, voff = line_features(flux, ivar, grid, line)
        out |= {f"{name}_ew": ew, f"{name}_fwhm": fwhm, f"{name}_voff": voff}
    model, fit_ok = pca_continuum(flux, ivar, grid)
    for name, ref in BAL_LINES.items():
        out[f"{name}_bi"], out[f"{name}_ai"] = bal_indices(flux, ivar, model, grid, ref, fit_ok)
    return out


# --------------------------------------------------------------------------------------------------
# Windows on the grid
# --------------------------------------------------------------------------------------------------


def pixels(grid: RestFrameGrid, lo: float, hi: float) -> slice:
    """The grid pixels whose centres lie in ``[lo, hi)`` Å (log grid: a contiguous slice)."""
    return slice(*np.searchsorted(grid.wave, [lo, hi]))


def band_median(flux: np.ndarray, good: np.ndarray, grid: RestFrameGrid, band: tuple[float, float]) -> np.ndarray:
    """Median flux over the good pixels of a band; NaN unless ``MIN_BAND_GOOD`` of it is good."""
    cols = pixels(grid, *band)
    g = good[:, cols]
    median = masked_median(flux[:, cols], g)
    return np.where(g.mean(axis=1) >= MIN_BAND_GOOD, median, np.nan)


def continuum_slope(flux: np.ndarray, good: np.ndarray, grid: RestFrameGrid) -> np.ndarray:
    """Power-law index α_λ (f_λ ∝ λ^α): a line fit of ln(window median) against ln λ, covered windows only.

    Window medians (not pixels) keep narrow absorbers and noise spikes out. NaN unless two usable
    windows span a factor :data:`MIN_SLOPE_SPAN` in λ.
    """
    medians = np.stack([band_median(flux, good, grid, w) for w in CONTINUUM_WINDOWS], axis=1)
    x = np.log([0.5 * (lo + hi) for lo, hi in CONTINUUM_WINDOWS])
    use = medians > 0
    y = np.log(np.where(use, medians, 1.0))
    n = use.sum(axis=1)
    sx, sy = (use * x).sum(axis=1), (use * y).sum(axis=1)
    sxx, sxy = (use * x * x).sum(axis=1), (use * x * y).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    span = np.where(use, x, -np.inf).max(axis=1) - np.where(use, x, np.inf).min(axis=1)
    return np.where((n >= 2) & (span >= math.log(MIN_SLOPE_SPAN)), alpha, np.nan)


# --------------------------------------------------------------------------------------------------
# Broad emission lines
# --------------------------------------------------------------------------------------------------


def line_features(
    flux: np.ndarray, ivar: np.ndarray, grid: RestFrameGrid, line: LineWindow
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rest equivalent width (Å), FWHM (km/s) and peak velocity offset (km/s) of one broad line.

    The continuum is the straight line through the two side-band medians. EW = ∫(f/c − 1) dλ over the
    window (masked pixels take the mean of the good ones). FWHM and the peak use the continuum-
    subtracted profile, boxcar-smoothed over :data:`SMOOTH_PIXELS`: the peak by a parabola through
    the highest pixel and its neighbours, the half-maximum points by linear interpolation between
    pixels; on a log grid both convert to velocity as c·Δln λ. NaN when the window or a band is not
    covered or the continuum is not positive; FWHM and offset also when no peak inside the window
    stands :data:`MIN_PEAK_SNR` σ above the continuum (a noise spike has no width worth recording).
    """
    good = ivar > 0
    cols = pixels(grid, *line.window)
    wave = grid.wave[cols]
    (b_lo, b_hi), (r_lo, r_hi) = line.blue, line.red
    blue, red = band_median(flux, good, grid, line.blue), band_median(flux, good, grid, line.red)
    x_blue, x_red = 0.5 * (b_lo + b_hi), 0.5 * (r_lo + r_hi)
    cont = blue[:, None] + (red - blue)[:, None] * ((wave - x_blue) / (x_red - x_blue))
    g = good[:, cols]
    covered = (g.mean(axis=1) >= MIN_WINDOW_GOOD) & (cont > 0).all(axis=1)
    cont = np.where(covered[:, None], cont, 1.0)
    width = np.diff(grid.edges)[cols]
    excess = np.where(g, flux[:, cols] / cont - 1.0, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ew = (excess * width).sum(axis=1) * width.sum() / (g * width).sum(axis=1)
    with np.errstate(divide="ignore"):
        variance = np.where(g, 1.0 / ivar[:, cols], 0.0)
    profile, sigma = boxcar(np.where(g, flux[:, cols] - cont, 0.0), variance, g, SMOOTH_PIXELS)
    dlnl = math.log(10.0) * grid.loglam_step
    peak_ln, fwhm_ln = peak_and_fwhm(profile, sigma)
    fwhm = C_KMS * dlnl * fwhm_ln
    voff = C_KMS * (math.log(wave[0]) + dlnl * peak_ln - math.log(line.ref))
    return np.where(covered, ew, np.nan), np.where(covered, fwhm, np.nan), np.where(covered, voff, np.nan)


def boxcar(values: np.ndarray, variance: np.ndarray, good: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Running mean over ``width`` pixels of the good values only, and its standard deviation.

    Masked pixels get their neighbours' mean; where a box holds no good pixel, mean 0 and σ ∞.
    """
    pad = width // 2

    def running_sum(a: np.ndarray) -> np.ndarray:
        c = np.cumsum(np.pad(a, ((0, 0), (pad + 1, pad))), axis=1)
        return c[:, width:] - c[:, :-width]

    total, count = running_sum(values * good), running_sum(good.astype(np.float64))
    spread = running_sum(variance * good)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / count, 0.0), np.where(count > 0, np.sqrt(spread) / count, np.inf)


def peak_and_fwhm(profile: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peak position and full width at half maximum of each row, in (fractional) pixels.

    The peak is the maximum refined by a parabola through it and its two neighbours; the half-maximum
    points are the nearest pixels on each side below half the peak value, interpolated linearly with
    their inner neighbours. NaN when the peak is below ``MIN_PEAK_SNR·sigma``, sits on the window
    edge, or a side never falls below half maximum inside the window.
    """
    n, width = profile.shape
    rows = np.arange(n)
    idx = np.arange(width)
    top = np.clip(np.argmax(profile, axis=1), 1, width - 2)
    left_v, top_v, right_v = profile[rows, top - 1], profile[rows, top], profile[rows, top + 1]
    curvature = left_v - 2.0 * top_v + right_v
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.clip(np.where(curvature < 0, 0.5 * (left_v - right_v) / curvature, 0.0), -0.5, 0.5)
    peak = top + shift
    half = 0.5 * top_v
    below = profile < half[:, None]
    left = np.where(below & (idx < top[:, None]), idx, -1).max(axis=1)
    right = np.where(below & (idx > top[:, None]), idx, width).min(axis=1)
    detected = top_v > MIN_PEAK_SNR * sigma[rows, top]
    ok = detected & (top_v >= profile.max(axis=1)) & (left >= 0) & (right < width)
    left_c, right_c = np.clip(left, 0, width - 2), np.clip(right, 1, width - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_left = left_c + (half - profile[rows, left_c]) / (profile[rows, left_c + 1] - profile[rows, left_c])
        x_right = right_c - (half - profile[rows, right_c]) / (profile[rows, right_c - 1] - profile[rows, right_c])
    return np.where(ok, peak, np.nan), np.where(ok, x_right - x_left, np.nan)


# --------------------------------------------------------------------------------------------------
# Broad absorption lines (baltools definitions)
# --------------------------------------------------------------------------------------------------


@cache
def pca_eigenvectors(grid: RestFrameGrid) -> tuple[slice, np.ndarray]:
    """The baltools PCA_Eigenvectors (PCA0–PCA4) interpolated onto ``grid`` over :data:`BAL_FIT_RANGE`.

    Returns the grid slice and a ``(pixels, 5)`` design matrix.
    """
    with resources.as_file(resources.files("qad_assets.science") / PCA_FILE) as path, fits.open(path) as hdus:
        table = hdus[1].data
        wave = np.asarray(table["WAVE"], np.float64)
        vectors = [np.asarray(table[f"PCA{i}"], np.float64) for i in range(5)]
    cols = pixels(grid, *BAL_FIT_RANGE)
    design = np.stack([np.interp(grid.wave[cols], wave, v) for v in vectors], axis=1)
    design.flags.writeable = False
    return cols, design


def pca_continuum(
    flux: np.ndarray, ivar: np.ndarray, grid: RestFrameGrid, max_iter: int = BAL_MAX_ITER
) -> tuple[np.ndarray, np.ndarray]:
    """The baltools continuum: PCA eigenvectors fitted by ivar-weighted least squares, AI troughs masked.

    As ``baltools.fitbal.calcbalparams``: fit, find the AI troughs of CIV and SiIV against the fit,
    mask them, refit, until the mask stops changing (at most ``max_iter`` fits). All spectra are
    fitted together: the 5×5 normal equations of every spectrum come from one matrix product.
    Returns the model on the full grid (0 outside the fit range) and whether the fit had enough data.
    """
    cols, design = pca_eigenvectors(grid)
    weight = np.where(ivar[:, cols] > 0, ivar[:, cols], 0.0).astype(np.float64)
    f = flux[:, cols].astype(np.float64)
    fit_ok = (weight > 0).sum(axis=1) >= 10 * design.shape[1]
    outer = (design[:, :, None] * design[:, None, :]).reshape(design.shape[0], -1)
    keep = np.ones_like(weight, dtype=bool)
    model = np.zeros(flux.shape)
    for _ in range(max_iter):
        w = weight * keep
        normal = (w @ outer).reshape(-1, design.shape[1], design.shape[1])
        normal += np.eye(design.shape[1]) * (1e-12 * np.trace(normal, axis1=1, axis2=2) + 1e-300)[:, None, None]
        coeffs = np.linalg.solve(normal, ((w * f) @ design)[:, :, None])[:, :, 0]
        model[:, cols] = coeffs @ design.T
        troughs = np.zeros_like(keep)
        for ref in BAL_LINES.values():
            window, found = _ai_troughs(flux, ivar, model, grid, ref)
            troughs[:, window.start - cols.start : window.stop - cols.start] |= found
        if np.array_equal(~troughs, keep):
            break
        keep = ~troughs
    return model, fit_ok


def _velocity(grid: RestFrameGrid, ref: float, vmax: float) -> tuple[slice, np.ndarray]:
    """Grid pixels with BAL_VMIN ≤ v < vmax around ``ref`` and their velocities (baltools: c·Δλ/λ)."""
    v = C_KMS * (grid.wave - ref) / ref
    cols = slice(*np.searchsorted(v, [BAL_VMIN, vmax]))
    return cols, v[cols]


def _normalized_window(
    flux: np.ndarray, ivar: np.ndarray, model: np.ndarray, cols: slice
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flux and σ over the continuum model in a BAL window, masked pixels filled from the last good one."""
    good = ivar[:, cols] > 0
    idx = np.arange(good.shape[1])
    last = np.maximum.accumulate(np.where(good, idx, -1), axis=1)
    first = np.argmax(good, axis=1)
    fill = np.where(last >= 0, last, first[:, None])
    rows = np.arange(good.shape[0])[:, None]
    m = model[:, cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        nf = np.where(m > 0, flux[:, cols] / m, np.nan)
        sigma = np.where(m > 0, 1.0 / np.sqrt(ivar[:, cols]) / m, np.nan)
    return nf[rows, fill], sigma[rows, fill], good


def _ai_troughs(
    flux: np.ndarray, ivar: np.ndarray, model: np.ndarray, grid: RestFrameGrid, ref: float
) -> tuple[slice, np.ndarray]:
    """Pixels inside AI troughs (baltools ``baltomask``: trough start up to, not including, its end)."""
    cols, v = _velocity(grid, ref, BAL_VMAX_AI)
    nf, sigma, _ = _normalized_window(flux, ivar, model, cols)
    runs = _trough_runs(nf, sigma, v, AI_MIN_WIDTH, ai=True)
    idx = np.arange(v.size)
    return cols, runs.member & (idx < runs.end)


def bal_indices(
    flux: np.ndarray, ivar: np.ndarray, model: np.ndarray, grid: RestFrameGrid, ref: float, fit_ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Balnicity index BI and absorption index AI (km/s) of the line at ``ref``, against ``model``.

    BI = ∫ (1 − f/0.9)·C dv over −25000…−3000 km/s, C = 1 only once a trough below 0.9 of the
    continuum has run 2000 km/s; AI the same over −25000…0 km/s with 450 km/s (Weymann et al. 1991;
    Hall et al. 2002; as baltools computes them). NaN unless the fit worked and the window is covered.
    """
    observed = ivar > 0
    first, last = np.argmax(observed, axis=1), ivar.shape[1] - 1 - np.argmax(observed[:, ::-1], axis=1)
    result = []
    for vmax, min_width, ai in ((BAL_VMAX_BI, BI_MIN_WIDTH, False), (BAL_VMAX_AI, AI_MIN_WIDTH, True)):
        cols, v = _velocity(grid, ref, vmax)
        nf, sigma, good = _normalized_window(flux, ivar, model, cols)
        runs = _trough_runs(nf, sigma, v, min_width, ai=ai)
        inside = (first <= cols.start) & (last >= cols.stop - 1) & (good.mean(axis=1) >= MIN_WINDOW_GOOD)
        covered = fit_ok & inside & (model[:, cols] > 0).all(axis=1)
        result.append(np.where(covered, _index(runs, nf, v, min_width), np.nan))
    return result[0], result[1]


@dataclass(frozen=True)
class _Runs:
    """Accepted troughs, per pixel: whether it belongs to one, and that trough's first and last pixel."""

    member: np.ndarray  # (N, P) bool
    start: np.ndarray  # (N, P) int
    end: np.ndarray  # (N, P) int


def _trough_runs(nf: np.ndarray, sigma: np.ndarray, v: np.ndarray, min_width: float, *, ai: bool) -> _Runs:
    """Troughs as baltools ``determine_trough_BI/AI`` finds them, for all spectra at once.

    A pixel is in absorption when ``1 − f/0.9 − σ/2 > 0``. One pixel out of absorption does not end a
    trough if the next is in (for AI also the two before). A trough counts when its last pixel lies
    more than ``min_width`` km/s from its first; AI troughs must also be significant:
    ``1 − (⟨f⟩ + 3⟨σ⟩/√n)/0.9 > 0`` (baltools skips that test for a trough reaching the window end).
    No trough is sought when the median flux is below the median σ (too noisy).
    """
    n, p = nf.shape
    absorbed = (1.0 - nf / 0.9) - 0.5 * sigma > 0
    with np.errstate(invalid="ignore"):
        absorbed &= (np.median(nf, axis=1) >= np.median(sigma, axis=1))[:, None]
    ahead = np.zeros_like(absorbed)
    ahead[:, :-2] = absorbed[:, 1:-1]  # baltools bridges only where i < P − 2
    behind = np.zeros_like(absorbed)
    behind[:, 1:] = absorbed[:, :-1]
    bridge = ~absorbed & ahead & behind
    if ai:
        behind2 = np.zeros_like(absorbed)
        behind2[:, 2:] = absorbed[:, :-2]
        bridge &= behind2
    member = absorbed | bridge
    idx = np.arange(p)
    before = np.zeros_like(member)
    before[:, 1:] = member[:, :-1]
    after = np.zeros_like(member)
    after[:, :-1] = member[:, 1:]
    start = np.maximum.accumulate(np.where(member & ~before, idx, 0), axis=1)
    end = np.minimum.accumulate(np.where(member & ~after, idx, p - 1)[:, ::-1], axis=1)[:, ::-1]
    accepted = member & (v[end] - v[start] > min_width)
    if ai:
        accepted &= _significant(nf, sigma, start, end) | (end == p - 1)
    return _Runs(accepted, start, end)


def _significant(nf: np.ndarray, sigma: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """baltools' AI significance test over pixels ``start … end−1`` of each pixel's trough."""
    rows = np.arange(nf.shape[0])[:, None]
    zero = np.zeros((nf.shape[0], 1))
    cf = np.concatenate([zero, np.cumsum(nf, axis=1)], axis=1)
    cs = np.concatenate([zero, np.cumsum(sigma, axis=1)], axis=1)
    count = np.maximum(end - start, 1)
    mean_flux = (cf[rows, end] - cf[rows, start]) / count
    mean_sigma = (cs[rows, end] - cs[rows, start]) / count / np.sqrt(count)
    return 1.0 - (mean_flux + 3.0 * mean_sigma) / 0.9 > 0


def _index(runs: _Runs, nf: np.ndarray, v: np.ndarray, min_width: float) -> np.ndarray:
    """Σ over troughs of max(0, Σ_j (1 − f_j/0.9)(v_j − v_{j−1})) over pixels ``start < j < end`` that
    lie at least ``min_width`` beyond the trough start (baltools ``calculate_Index``)."""
    idx = np.arange(v.size)
    dv = np.diff(v, prepend=v[0])
    inside = runs.member & (idx > runs.start) & (idx < runs.end) & (v - v[runs.start] >= min_width)
    contrib = np.where(inside, (1.0 - nf / 0.9) * dv, 0.0)
    total = np.cumsum(contrib, axis=1)
    rows = np.arange(nf.shape[0])[:, None]
    last = runs.member & (idx == runs.end)
    per_trough = total[rows, runs.end] - total[rows, runs.start]
    return np.where(last, np.maximum(per_trough, 0.0), 0.0).sum(axis=1)
