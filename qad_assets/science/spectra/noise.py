"""Noise statistics of observed DESI spectra: sky-line pixels, pulls, the per-arm noise shape and S/N.

Why: a simulated release is only a fair test of a detector if its noise looks like DESI's, and "looks
like" has to be a number. This module measures real coadds and demo coadds the same way, so the two can
be compared (``benchmarks/bench_noise_realism.py``, ``docs/realism.md``, the demo's tests).

Everything is derived from the spectra themselves, nothing from a sky-line list:

- *Sky-line pixels.* The pipeline's ivar dips where the sky is bright. Per arm, each spectrum's ivar is
  divided by its running median over ``IVAR_WINDOW`` pixels; the median of that ratio over all spectra,
  D(λ), gives the excess variance e = 1/D − 1 that sky lines add (≈ 0 between lines). A pixel is *near a
  sky line* when e > 0.1 and *near a strong sky line* when e > 1 (the line at least doubles the
  variance), each grown by one pixel on both sides. Per arm, so that the step in ivar where an arm ends
  is not taken for a line; in an overlap the arm that dominates the merged ivar decides.
- *Pulls* r = (flux − running median of flux)·√ivar on the merged ``brz`` grid. The running median spans
  ``FLUX_WINDOW`` = 41 pixels (32.8 Å: 2700 km/s at 3600 Å, 1000 km/s at 9800 Å): it follows broad
  emission lines (FWHM ≥ 3000 km/s, ≥ 60 pixels at z ≈ 2), while a narrow absorber, a sky residual or a
  noise spike (≤ 10 pixels) is far less than half the window and cannot move it. Masked pixels are
  bridged by linear interpolation before filtering. For pure Gaussian noise of the right ivar the robust σ
  of r is 0.973 and P(|r| > 3) = 0.0030 (the pixel is part of its own median), so an ivar that is x %
  optimistic shows as a robust σ of 0.973·(1 + x/100).
- *Per-arm noise shape*: 1/√ivar of each spectrum over the median of its arm, then the median over
  spectra: throughput roll-offs, dichroic edges and sky lines, independent of brightness.
- *S/N per pixel* of a spectrum: the median of flux·√ivar over its good ``brz`` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

from qad_assets.science.io.coadd import CoaddArms
from qad_assets.science.spectra.arms import ARM_WAVE, ARMS, BRZ_WAVE, NPIX, WAVE_STEP, merge_arms
from qad_assets.science.spectra.snr import masked_median

FLUX_WINDOW = 41  # pixels of the running median of flux (see the module docstring)
IVAR_WINDOW = 41  # pixels of the running median of ivar
NEAR_SKY_EXCESS = 0.1  # sky-line variance over continuum variance: "near a sky line"
STRONG_SKY_EXCESS = 1.0  # ... "near a strong sky line"
SKY_GROW = 1  # pixels added on each side of a sky-line pixel
PIXEL_CLASSES = ("continuum", "sky", "strong_sky")
PULL_BINS = np.linspace(-12.0, 12.0, 97)  # histogram edges of the pulls (0.25 wide)
CHUNK = 256  # spectra per block of the running median (bounds memory)


@dataclass(frozen=True)
class PullStats:
    """Pulls of one pixel class: robust σ (1.4826·MAD), σ, P(|r| > 3), P(|r| > 5) and the pixel count."""

    robust_sigma: float
    sigma: float
    p3: float
    p5: float
    n: int


@dataclass(frozen=True)
class NoiseStats:
    """Everything :func:`measure_noise` measures on a set of spectra."""

    n_spectra: int  # spectra in the pulls
    n_pixels: int  # their good brz pixels
    sky_excess: np.ndarray  # (NPIX,) excess variance from sky lines, e = 1/D − 1
    pixel_class: np.ndarray  # (NPIX,) int8 index into PIXEL_CLASSES
    pulls: dict[str, PullStats]  # per pixel class
    pull_hist: dict[str, np.ndarray]  # per pixel class: counts in PULL_BINS
    arm_shape: dict[str, np.ndarray]  # per arm: median normalized 1/√ivar on ARM_WAVE[arm] (pulled spectra)
    snr: np.ndarray  # median S/N per pixel of every spectrum with data

    @property
    def sky_fraction(self) -> dict[str, float]:
        """Fraction of brz pixels near a sky line (strong ones included) and near a strong one."""
        return {"sky": float(np.mean(self.pixel_class > 0)), "strong_sky": float(np.mean(self.pixel_class == 2))}

    def snr_percentiles(self, q: Sequence[float] = (5, 50, 95)) -> np.ndarray:
        return np.percentile(self.snr, q)


def fill_bad(values: np.ndarray, good: np.ndarray) -> np.ndarray:
    """``values`` with every not-good pixel replaced by linear interpolation between its good neighbours
    along the row (the nearest good value at the ends); rows without a good pixel come back unchanged."""
    n = values.shape[1]
    idx = np.arange(n)
    prev = np.maximum.accumulate(np.where(good, idx, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(good, idx, n)[:, ::-1], axis=1)[:, ::-1]
    v_prev = np.take_along_axis(values, np.clip(prev, 0, n - 1), axis=1)
    v_next = np.take_along_axis(values, np.clip(nxt, 0, n - 1), axis=1)
    both = (prev >= 0) & (nxt < n)
    frac = (idx - prev) / np.maximum(nxt - prev, 1)
    bridged = np.where(both, v_prev + frac * (v_next - v_prev), np.where(prev >= 0, v_prev, v_next))
    return np.where(good | ~good.any(axis=1, keepdims=True), values, bridged).astype(values.dtype)


def running_median(values: np.ndarray, good: np.ndarray, window: int = FLUX_WINDOW) -> np.ndarray:
    """Running median along each row over ``window`` pixels, bad pixels bridged first."""
    return median_filter(fill_bad(values, good), size=(1, window), mode="nearest")


def sky_excess(ivar: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Excess variance e(λ) = 1/D − 1 that sky lines add, from the ivar of many spectra of one arm.

    D is the median over spectra of ivar over its running median; 0 where no spectrum has data.
    """
    envelope = running_median(ivar, good, IVAR_WINDOW)
    ratio = np.where(good, ivar / np.where(envelope > 0, envelope, 1.0), np.nan)
    dip = masked_median(ratio.T, good.T)
    return np.where(np.isfinite(dip), 1.0 / np.clip(dip, 1e-3, None) - 1.0, 0.0)


def classify_pixels(excess: np.ndarray) -> np.ndarray:
    """PIXEL_CLASSES index of each pixel from its sky excess: 0 continuum, 1 near a sky line, 2 near a
    strong one (each sky-line pixel grown by SKY_GROW pixels on both sides)."""
    out = np.zeros(excess.shape, np.int8)
    for level, threshold in ((1, NEAR_SKY_EXCESS), (2, STRONG_SKY_EXCESS)):
        hit = excess > threshold
        grown = hit.copy()
        for k in range(1, SKY_GROW + 1):
            grown[k:] |= hit[:-k]
            grown[:-k] |= hit[k:]
        out[grown] = level
    return out


def pulls(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray, window: int = FLUX_WINDOW) -> np.ndarray:
    """r = (flux − running median of flux)·√ivar, NaN where not good."""
    med = running_median(flux, good, window)
    return np.where(good, (flux - med) * np.sqrt(np.clip(ivar, 0.0, None)), np.nan)


def pull_stats(r: np.ndarray) -> PullStats:
    """Robust σ, σ and tail fractions of the finite pulls ``r`` (any shape)."""
    r = r[np.isfinite(r)]
    if r.size == 0:
        return PullStats(np.nan, np.nan, np.nan, np.nan, 0)
    mad = np.median(np.abs(r - np.median(r)))
    absr = np.abs(r)
    return PullStats(float(1.4826 * mad), float(r.std()), float(np.mean(absr > 3)), float(np.mean(absr > 5)), r.size)


def arm_noise_shape(ivar: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Median over spectra of 1/√ivar divided by each spectrum's median over the arm; NaN where no data."""
    sigma = np.where(good, 1.0 / np.sqrt(np.where(good, ivar, 1.0)), np.nan)
    norm = masked_median(sigma, good)
    return masked_median((sigma / norm[:, None]).T, good.T)


def bare_coadd(
    path: str, wave: dict[str, np.ndarray], flux: dict[str, np.ndarray], ivar: dict[str, np.ndarray]
) -> CoaddArms:
    """A coadd from per-arm arrays alone (no FIBERMAP, no MASK: QuasarNP's test coadd is one)."""
    mask = {arm: np.zeros(np.shape(flux[arm]), np.uint32) for arm in ARMS}
    ids = {"TARGETID": np.arange(len(flux[ARMS[0]]), dtype=np.int64)}
    f32 = {arm: np.asarray(flux[arm], np.float32) for arm in ARMS}
    return CoaddArms(path, {}, ids, dict(wave), f32, {arm: np.asarray(ivar[arm], np.float32) for arm in ARMS}, mask)


def _with_data(arms: CoaddArms) -> np.ndarray:
    """Rows with at least one good pixel, a finite flux at every good pixel and no negative ivar."""
    ok = np.zeros(arms.nspec, bool)
    sound = np.ones(arms.nspec, bool)
    for arm in ARMS:
        good = (arms.ivar[arm] > 0) & (arms.mask[arm] == 0)
        ok |= good.any(axis=1)
        sound &= np.where(good, np.isfinite(arms.flux[arm]), True).all(axis=1) & (arms.ivar[arm] >= 0).all(axis=1)
    return np.flatnonzero(ok & sound)


def _spread(rows: list[np.ndarray], most: int | None) -> list[np.ndarray]:
    """At most ``most`` of the rows, spread evenly over all coadds (all of them when ``most`` is None)."""
    total = sum(r.size for r in rows)
    if most is None or total <= most:
        return rows
    pick = np.unique(np.linspace(0, total - 1, most).round().astype(np.int64))
    first = np.cumsum([0] + [r.size for r in rows])
    return [r[pick[(pick >= lo) & (pick < lo + r.size)] - lo] for r, lo in zip(rows, first[:-1], strict=True)]


def _stack(coadds: Sequence[CoaddArms], rows: list[np.ndarray], arm: str) -> tuple[np.ndarray, np.ndarray]:
    """ivar and good of one arm for the given rows of every coadd, stacked."""
    ivar = np.concatenate([c.ivar[arm][r] for c, r in zip(coadds, rows, strict=True)])
    good = np.concatenate([(c.ivar[arm][r] > 0) & (c.mask[arm][r] == 0) for c, r in zip(coadds, rows, strict=True)])
    return ivar, good


def _sky(coadds: Sequence[CoaddArms], rows: list[np.ndarray]) -> np.ndarray:
    """Sky excess on the brz grid from the given rows.

    In an arm overlap the arm with the higher median ivar (the one that dominates the merged spectrum)
    decides, so the steep throughput edge of the other arm is not taken for a sky line.
    """
    excess, level = np.zeros(NPIX), np.zeros(NPIX)
    for arm in ARMS:
        ivar, good = _stack(coadds, rows, arm)
        lo = round((ARM_WAVE[arm][0] - BRZ_WAVE[0]) / WAVE_STEP)
        window = slice(lo, lo + ARM_WAVE[arm].size)
        arm_level = np.nan_to_num(masked_median(ivar.T, good.T))
        wins = arm_level > level[window]
        excess[window] = np.where(wins, sky_excess(ivar, good), excess[window])
        level[window] = np.maximum(arm_level, level[window])
    return excess


def measure_noise(coadds: Sequence[CoaddArms], max_snr: float = np.inf, max_spectra: int | None = 1000) -> NoiseStats:
    """Noise statistics of the spectra with data in ``coadds`` (objects, sky fibres, anything).

    Rows with no good pixel, a non-finite flux at a good pixel or a negative ivar are left out. The S/N
    comes from all of them; sky lines, noise shape and pulls from at most ``max_spectra`` spread evenly
    over the input (the running medians cost ~1 µs per pixel); pulls and noise shape only from those with
    S/N per pixel up to ``max_snr`` (noise-dominated spectra: little of the objects' own lines in the
    pulls, little of their photons in the noise).
    """
    rows = [_with_data(c) for c in coadds]
    snr = np.concatenate(
        [np.zeros(0)]
        + [
            masked_median(flux * np.sqrt(ivar), good)
            for c, r in zip(coadds, rows, strict=True)
            for start in range(0, r.size, CHUNK)
            for flux, ivar, good in [merge_arms(c, r[start : start + CHUNK])]
        ]
    )
    sample = _spread(rows, max_spectra)
    pixel_class = classify_pixels(excess := _sky(coadds, sample))
    hist = {name: np.zeros(PULL_BINS.size - 1, np.int64) for name in PIXEL_CLASSES}
    by_class: dict[str, list[np.ndarray]] = {name: [np.zeros(0, np.float32)] for name in PIXEL_CLASSES}
    n_spectra = n_pixels = 0
    chosen = []
    for coadd, r in zip(coadds, sample, strict=True):
        chosen.append([])
        for start in range(0, r.size, CHUNK):
            flux, ivar, good = merge_arms(coadd, r[start : start + CHUNK])
            use = masked_median(flux * np.sqrt(ivar), good) <= max_snr
            chosen[-1].append(r[start : start + CHUNK][use])
            n_spectra += int(use.sum())
            n_pixels += int(good[use].sum())
            pull = pulls(flux[use], ivar[use], good[use])
            for k, name in enumerate(PIXEL_CLASSES):
                values = pull[:, pixel_class == k]
                values = values[np.isfinite(values)].astype(np.float32)
                by_class[name].append(values)
                hist[name] += np.histogram(np.clip(values, PULL_BINS[0], PULL_BINS[-1]), PULL_BINS)[0]
    used = [np.concatenate([np.zeros(0, np.int64), *parts]) for parts in chosen]
    return NoiseStats(
        n_spectra=n_spectra,
        n_pixels=n_pixels,
        sky_excess=excess,
        pixel_class=pixel_class,
        pulls={name: pull_stats(np.concatenate(v)) for name, v in by_class.items()},
        pull_hist=hist,
        arm_shape={arm: arm_noise_shape(*_stack(coadds, used, arm)) for arm in ARMS},
        snr=snr,
    )
