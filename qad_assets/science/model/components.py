"""The raw score components: each looks for one kind of anomaly, in one vectorized pass over a batch.

Every component is a number per spectrum, higher = more anomalous, computed from the data, the VAE's
reconstruction ``m`` and the noise model's weights ``w = 1/variance`` (the Lyα forest down-weighted
and given its own variance, as in training). Pulls ``r = (f − m)·√w`` are winsorized at
:data:`CLIP` σ wherever residuals are summed, so that one pixel (a sky residual, a narrow absorber, a
spike) cannot carry a broad statistic; the forest (IGM absorption, DLAs, Lyman-limit systems: normal
quasar sight-lines) only enters the overall fit.

=================  ===========================================================================
``fit``            log of the mean Huber loss of the pulls: the overall goodness of fit
``coherent``       log mean over 32-pixel (5500 km/s) blocks of (Σ√w·r)²/Σw: broad mismatches
``trough``         the deepest 2000–6000 km/s deficit where broad absorption lives (blueward of
                   Si IV, C IV, Al III, Mg II), in σ: BALs, HiBAL and LoBAL
``weak_lines``     minus the line excess of :mod:`.line_strength` (weak lines for the luminosity)
``strong_lines``   the line excess (extreme emission lines)
``colour``         the continuum slope α_λ through the model: the reconstruction's α plus the
                   slope of the fractional residual against ln λ (dust reddening at the quasar)
``arm_step``       the largest jump of the fractional residual across an arm boundary (5780,
                   7570 Å observed), in σ of its error and of the normal percent-level arm mismatch:
                   one arm's flux calibration off
``spikes``         the largest isolated one- or two-pixel spike in the observed frame, in σ
                   (``spike_pull``, measured before resampling)
``foreground``     the best matched filter of the residual for a second object on the fibre: a
                   star's absorption lines at z = 0, or a galaxy's emission or absorption lines at
                   any redshift below the quasar's, in σ
=================  ===========================================================================
"""

from __future__ import annotations

import warnings

import numpy as np

from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.features import continuum_slope
from qad_assets.science.spectra.rest_frame import C_KMS, RestFrameGrid

CLIP = 3.0
COHERENT_BLOCK = 32

#: Rest-frame ranges (Å) where broad absorption troughs sit: up to ~25,000 km/s blueward of each ion.
TROUGH_RANGES = ((1260.0, 1390.0), (1400.0, 1540.0), (1720.0, 1850.0), (2550.0, 2790.0))
#: Trough widths searched (pixels): 12 ≈ 2000 km/s (the BAL definition's minimum), 36 ≈ 6200 km/s.
TROUGH_WIDTHS = (12, 36)
#: Observed-frame arm boundaries (Å) and how far (Å) on each side the jump is measured.
ARM_BOUNDARIES = (5780.0, 7570.0)
ARM_SIDE = 250.0
#: A star's absorption lines (air ≈ vacuum at this resolution): Å, relative depth, σ (Å).
STAR_LINES = (
    (3933.7, 0.5, 4.0),
    (3968.5, 0.4, 4.0),
    (4101.7, 0.2, 5.0),
    (4304.0, 0.2, 12.0),
    (4340.5, 0.2, 5.0),
    (4861.3, 0.2, 5.0),
    (5172.7, 0.25, 6.0),
    (5892.9, 0.25, 4.0),
    (6562.8, 0.2, 5.0),
    (8498.0, 0.15, 3.0),
    (8542.1, 0.25, 3.0),
    (8662.1, 0.2, 3.0),
)
#: A star-forming galaxy's narrow emission lines (vacuum Å, relative flux) and an old population's
#: absorption lines (Å, relative depth), for the foreground scan.
GALAXY_EMISSION = (
    (3727.1, 0.45),
    (3729.9, 0.55),
    (4862.7, 0.35),
    (4960.3, 0.3),
    (5008.2, 0.9),
    (6564.6, 1.2),
    (6585.3, 0.35),
    (6718.3, 0.25),
    (6732.7, 0.2),
)
GALAXY_ABSORPTION = ((3934.8, 0.4), (3969.6, 0.35), (4305.0, 0.2), (5176.7, 0.2), (5895.6, 0.15))
#: Narrow-line width (km/s): DESI's resolution and a galaxy's velocity dispersion together.
NARROW_SIGMA_KMS = 120.0
#: A foreground galaxy sits at least this much below the quasar in redshift (its own narrow lines).
MIN_FOREGROUND_DZ = 0.05


def pulls(spectra: Spectra, model: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(f − m)·√w``, 0 where a pixel has no weight."""
    return np.where(weights > 0, (spectra.flux - model) * np.sqrt(weights), 0.0)


def fit(pull: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log mean Huber loss (quadratic within :data:`CLIP`, linear beyond) over weighted pixels."""
    a = np.abs(pull)
    loss = np.where(a <= CLIP, a**2, 2 * CLIP * a - CLIP**2)
    n = (weights > 0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.log(loss.sum(axis=1) / n), np.nan)


def block_chi2(pull: np.ndarray, weights: np.ndarray, block: int) -> np.ndarray:
    """``(Σ√w·r)²/Σw`` per block (N, P/block) of winsorized pulls; NaN for blocks without data."""
    n, npix = pull.shape
    root = np.sqrt(weights)
    summed = (root * np.clip(pull, -CLIP, CLIP)).reshape(n, -1, block).sum(axis=2)
    weight = weights.reshape(n, -1, block).sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(weight > 0, summed**2 / weight, np.nan)


def coherent(pull: np.ndarray, weights: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: a spectrum without data is NaN
        return np.log(np.nanmean(block_chi2(pull, weights, COHERENT_BLOCK), axis=1))


def trough(pull: np.ndarray, weights: np.ndarray, grid: RestFrameGrid) -> np.ndarray:
    """The most significant deficit ``−Σ√w·r/√Σw`` over windows inside :data:`TROUGH_RANGES`, in σ;
    a window counts when 80 % of it is observed. NaN when no window is.
    """
    root = np.sqrt(weights)
    signal = _prefix(root * np.clip(pull, -CLIP, CLIP))
    weight, seen = _prefix(weights), _prefix((weights > 0).astype(np.float64))
    best = np.full(len(pull), -np.inf)
    for lo, hi in TROUGH_RANGES:  # a few ranges and widths, vectorized over spectra and windows
        start, stop = np.searchsorted(grid.wave, [lo, hi])
        for width in TROUGH_WIDTHS:
            starts = np.arange(start, max(stop - width, start) + 1)
            s = signal[:, starts + width] - signal[:, starts]
            w = weight[:, starts + width] - weight[:, starts]
            ok = (seen[:, starts + width] - seen[:, starts]) >= 0.8 * width
            with np.errstate(divide="ignore", invalid="ignore"):
                deficit = np.where(ok & (w > 0), -s / np.sqrt(w), -np.inf)
            best = np.maximum(best, deficit.max(axis=1))
    return np.where(np.isfinite(best), best, np.nan)


def colour(spectra: Spectra, model: np.ndarray, weights: np.ndarray, grid: RestFrameGrid) -> np.ndarray:
    """α_λ of the noiseless reconstruction over the observed range, plus the weighted slope of the
    fractional residual ``(f − m)/m`` against ln λ: the part of a tilt the model could not follow.

    A reddened quasar's slope is measured from every pixel this way, not from a few window medians,
    so it still counts at a per-pixel S/N well below 1. ``weights`` should exclude the forest.
    """
    alpha = continuum_slope(model, spectra.ivar > 0, grid)
    u = weights * model**2
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(u > 0, np.clip((spectra.flux - model) / model, -CLIP, CLIP), 0.0)
        x = np.log(grid.wave)[None, :]
        dx = x - (u * x).sum(axis=1, keepdims=True) / u.sum(axis=1, keepdims=True)
        tilt = (u * dx * fraction).sum(axis=1) / (u * dx * dx).sum(axis=1)
    return alpha + np.where(np.isfinite(tilt), tilt, 0.0)


def arm_jumps(
    spectra: Spectra, model: np.ndarray, pull: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The jump of the weighted mean fractional residual across each arm boundary (N, B), and its
    statistical error; NaN where a boundary lacks data on a side.

    The fractional residual ``(f − m)/m`` has weight ``u = w·m²``; its weighted mean on a side is
    ``Σ√u·r/Σu`` (winsorized pulls ``r``), with variance ``1/Σu``.
    """
    observed = spectra.wave[None, :] * (1.0 + np.asarray(spectra.z, np.float64))[:, None]
    u = weights * model**2
    term = np.sqrt(u) * np.clip(pull, -CLIP, CLIP)
    jumps, errors = [], []
    for boundary in ARM_BOUNDARIES:
        sides = []
        for lo, hi in ((boundary - ARM_SIDE, boundary), (boundary, boundary + ARM_SIDE)):
            inside = (observed >= lo) & (observed < hi)
            total = np.where(inside, u, 0.0).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                sides.append((np.where(inside, term, 0.0).sum(axis=1) / total, 1.0 / total))
        (mean_b, var_b), (mean_r, var_r) = sides
        jumps.append(mean_r - mean_b)
        errors.append(np.sqrt(var_b + var_r))
    return np.stack(jumps, axis=1), np.stack(errors, axis=1)


def arm_step(jumps: np.ndarray, errors: np.ndarray, systematic: float) -> np.ndarray:
    """The most significant arm jump ``|Δ|/√(σ² + s²)``: ``s`` is the percent-level calibration
    mismatch every DESI spectrum has (learned by :func:`arm_systematic`), so a bright normal quasar's
    1 % offset is not a many-σ artifact while a 10 % jump is."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(np.abs(jumps) / np.sqrt(errors**2 + systematic**2), axis=1)


def arm_systematic(jumps: np.ndarray, errors: np.ndarray) -> float:
    """The normal arm-to-arm calibration scatter: the robust spread of the jumps beyond their errors."""
    use = np.isfinite(jumps) & np.isfinite(errors)
    if use.sum() < 20:
        return 0.0
    spread = 1.4826 * np.median(np.abs(jumps[use] - np.median(jumps[use])))
    return float(np.sqrt(max(spread**2 - np.median(errors[use] ** 2), 0.0)))


def foreground(spectra: Spectra, pull: np.ndarray, weights: np.ndarray, grid: RestFrameGrid) -> np.ndarray:
    """The best matched-filter S/N, in σ, of a star's absorption lines at z = 0 or of a galaxy's
    emission or absorption lines at a redshift between 0 and ``z − MIN_FOREGROUND_DZ``.

    A template ``t`` (depth or flux, unit continuum) is fitted to the residual with a free positive
    amplitude: S/N = ``Σ√w·r·t / √Σw·t²``. The galaxy scan shifts its templates along the log-λ grid
    (a redshift is a shift there), all shifts at once by FFT correlation.
    """
    root = np.sqrt(weights)
    winsorized = root * np.clip(pull, -CLIP, CLIP)
    observed = grid.wave[None, :] * (1.0 + np.asarray(spectra.z, np.float64))[:, None]
    star = -np.interp(observed, _STAR_WAVE, _STAR_DEPTH)
    with np.errstate(divide="ignore", invalid="ignore"):
        star_snr = (winsorized * star).sum(axis=1) / np.sqrt((weights * star**2).sum(axis=1))
    emission = _galaxy_template(grid, GALAXY_EMISSION, sign=1.0)
    absorption = _galaxy_template(grid, GALAXY_ABSORPTION, sign=-1.0)
    scans = [_scan(winsorized, weights, template, spectra.z, grid) for template in (emission, absorption)]
    return np.fmax(np.nan_to_num(star_snr, nan=-np.inf), np.fmax(*scans))


def _star_depth() -> tuple[np.ndarray, np.ndarray]:
    """The star's line depths Σ depth·Gaussian(λ; centre, σ) on a 0.5 Å grid (interpolated per spectrum)."""
    wave = np.arange(3000.0, 11000.0, 0.5)
    depth = sum(d * np.exp(-0.5 * ((wave - c) / s) ** 2) for c, d, s in STAR_LINES)
    return wave, depth


_STAR_WAVE, _STAR_DEPTH = _star_depth()


def _galaxy_template(grid: RestFrameGrid, lines: tuple[tuple[float, float], ...], sign: float) -> np.ndarray:
    """The galaxy's lines on a log-λ grid with the rest grid's step, starting at the grid's first λ."""
    sigma_log = NARROW_SIGMA_KMS / C_KMS / np.log(10.0)
    n = int(np.ceil((np.log10(7000.0) - np.log10(grid.wave[0])) / grid.loglam_step))
    log_wave = np.log10(grid.wave[0]) + grid.loglam_step * np.arange(n)
    template = np.zeros(n)
    for centre, strength in lines:
        template += strength * np.exp(-0.5 * ((log_wave - np.log10(centre)) / sigma_log) ** 2)
    return sign * template


def _scan(
    winsorized: np.ndarray, weights: np.ndarray, template: np.ndarray, z: np.ndarray, grid: RestFrameGrid
) -> np.ndarray:
    """max over foreground redshifts of ``Σ√w·r·t_s / √Σw·t_s²`` for the template shifted by ``s``.

    Rest pixel ``i`` of the quasar is observed at log λ_i + log(1 + z); the galaxy at z_g sees it at
    rest log λ_i + log((1 + z)/(1 + z_g)), i.e. template index ``i + s`` with
    ``s = log10((1 + z)/(1 + z_g))/step``. Correlations over every ``s`` at once by FFT.
    """
    n, npix = winsorized.shape
    size = 1 << int(np.ceil(np.log2(npix + template.size)))
    flipped = np.fft.rfft(template[::-1], size)
    numerator = np.fft.irfft(np.fft.rfft(winsorized, size) * flipped, size)
    denominator = np.fft.irfft(np.fft.rfft(weights, size) * np.fft.rfft(template[::-1] ** 2, size), size)
    # correlation at shift s sits at index template.size − 1 − s
    s = np.arange(template.size)
    index = template.size - 1 - s
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = numerator[:, index] / np.sqrt(np.clip(denominator[:, index], 1e-12, None))
    log_z = np.log10(1.0 + np.asarray(z, np.float64))[:, None]
    lowest = np.log10(1.0 + np.clip(np.asarray(z, np.float64) - MIN_FOREGROUND_DZ, 0.0, None))[:, None]
    shift_log = s[None, :] * grid.loglam_step
    allowed = (shift_log >= log_z - lowest) & (shift_log <= log_z) & (denominator[:, index] > 1e-9)
    return np.where(allowed, snr, -np.inf).max(axis=1)


def _prefix(values: np.ndarray) -> np.ndarray:
    """Cumulative sums along pixels with a leading 0: a window's sum is two lookups."""
    return np.concatenate([np.zeros((len(values), 1)), np.cumsum(values, axis=1)], axis=1)
