"""The DESI instrument: throughput, sky, line-spread (RESOLUTION), noise, calibration errors, cosmic rays.

Noise is DESI's as measured on real coadds (``qad_assets.science.spectra.noise``, docs/realism.md): the
per-arm noise shape and the sky-line pattern come from ``data/demo_noise.npz``; on top of photon and read
noise, the pipeline's ivar is a few per cent optimistic, a small fraction of pixels has a much wider
noise (heavy tails), sky lines leave subtraction residuals, and every spectrum carries percent-level
flux-calibration wiggles and arm offsets.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.polynomial import legendre

from qad_assets.demo.plan import Arms, Columns
from qad_assets.demo.settings import DemoSettings
from qad_assets.science.spectra.arms import ARM_WAVE, ARMS, BRZ_WAVE, WAVE_STEP

NDIAG = 11
FLUX_UNIT = "10**-17 erg/(s cm2 Angstrom)"
IVAR_UNIT = "10**+34 (s2 cm4 Angstrom2) / erg2"

FIBERSTATUS_UNASSIGNED = 1
FIBERSTATUS_BADPOSITION = 512
SPECMASK_COSMIC = 4
ZWARN_SKY = 1
ZWARN_SMALL_DELTA_CHI2 = 4
ZWARN_NODATA = 512
DESI_LRG, DESI_ELG, DESI_QSO, DESI_SKY, DESI_BGS_ANY = 1, 2, 4, 1 << 32, 1 << 60
BGS_BRIGHT = 2
OBSCONDITIONS = {"dark": 1, "bright": 4}


DATA_DIR = Path(__file__).parent / "data"

# ---- instrument model (calibrated so that a r = 22 point source reaches S/N ~ 1 per pixel in 1000 s)
HC_ERG_AA = 6.62607015e-27 * 2.99792458e18  # h c in erg Angstrom
AREA_CM2 = 8.678e4
READ_NOISE_E2 = 3.5**2 * 4  # read noise^2 times CCD pixels per spectral pixel
LSF_SIGMA_PIX = {"B": (0.95, 0.80), "R": (0.85, 0.80), "Z": (0.90, 0.95)}  # first, last pixel
SCORE_WINDOWS = {"B": (4000.0, 5800.0), "R": (5800.0, 7600.0), "Z": (7600.0, 9800.0)}
REDROCK_TEMPLATES = [("GALAXY", "2.6"), ("QSO:::LOZ", "1.0"), ("QSO:::HIZ", "1.0")] + [
    (f"STAR:::{t}", "0.1") for t in ("A", "B", "CV", "F", "G", "K", "M", "WD")
]
#: Sky-subtraction residuals at ``sky_residual = 1``: per fibre and arm the sky-line flux is off by
#: SKY_SCALE_ERROR (rms; a mis-scaled sky model) and shifted by SKY_SHIFT_AA (rms; a wavelength-solution
#: error, which leaves a derivative-shaped residual), and the sky-line photon variance is
#: SKY_VARIANCE_EXCESS larger than the ivar says (the sky model's own noise). Set so that the pulls near
#: sky lines match real coadds (docs/realism.md): the unstated variance sets the core, the coherent
#: errors the tails at strong lines.
SKY_SCALE_ERROR, SKY_SHIFT_AA, SKY_VARIANCE_EXCESS = 0.005, 0.025, 0.2
SKY_LINE_SPREAD = 0.25  # lognormal σ of the OH line brightness from fibre to fibre (nights differ)
TAIL_SCALE = 3.0  # noise width of the heavy-tail pixels, in units of the stated σ
OPTIMISM_SPREAD = 0.02  # spread of the ivar optimism from spectrum to spectrum
CALIBRATION_DEGREE = 4  # Legendre degree of the smooth flux-calibration error over 3600-9824 Å


@lru_cache(maxsize=1)
def noise_tables() -> dict[str, np.ndarray]:
    """Per-arm throughput and the sky-line excess variance of real coadds (``data/README.md``)."""
    with np.load(DATA_DIR / "demo_noise.npz") as data:
        return {key: data[key].astype(np.float64) for key in data.files}


def throughput(arm: str) -> np.ndarray:
    """Total throughput (atmosphere to CCD, point source) of one arm on ``ARM_WAVE[arm]``, set so that the
    demo's per-arm noise shape (blue roll-off, dichroic edges, red fall-off) is the real coadds'."""
    return noise_tables()[f"throughput_{arm}"]


def sky_line_excess(arm: str) -> np.ndarray:
    """Variance that sky lines add over the continuum variance on ``ARM_WAVE[arm]`` (real DESI median)."""
    lo = round((ARM_WAVE[arm][0] - BRZ_WAVE[0]) / WAVE_STEP)
    return noise_tables()["sky_excess"][lo : lo + ARM_WAVE[arm].size]


def sky_continuum(wave: np.ndarray, program: str) -> np.ndarray:
    """Sky continuum per 1.5" fibre in 1e-17 erg/s/cm2/Å; brighter and bluer in scattered moonlight.

    Dark: the Kitt Peak zenith sky between the lines, B 22.7, V 21.9 mag/arcsec² (Neugent & Massey
    2010), i.e. 1.0 at 5500 Å, rising as λ^1.2.
    """
    cont = 1.0 * (wave / 5500.0) ** 1.2
    if program == "bright":
        cont = 3.0 * cont + 6.0 * (wave / 5000.0) ** -2
    return cont


def _resolution_data(rng: np.random.Generator, arm: str, nwave: int, n: int) -> np.ndarray:
    """RESOLUTION diagonals (n, 11, nwave): a Gaussian line-spread, sigma ~0.8-0.95 pixel.

    Each column holds the normalised kernel; sigma varies slowly, so rows sum to 1 within 1e-4.
    Fibres differ by a few per cent in width, in nine steps so the kernels are computed once.
    """
    lo, hi = LSF_SIGMA_PIX[arm]
    widths = 1 + 0.015 * np.arange(-4, 5, dtype=np.float32)
    sigma = np.linspace(lo, hi, nwave, dtype=np.float32)[None, None, :] * widths[:, None, None]
    offsets = (NDIAG // 2 - np.arange(NDIAG, dtype=np.float32))[None, :, None]
    kernels = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernels /= kernels.sum(axis=1, keepdims=True)
    return kernels[rng.integers(0, len(widths), n)]


def _apply_resolution(flux: np.ndarray, rdata: np.ndarray) -> np.ndarray:
    """R @ flux for every spectrum, with the DESI diagonal convention (offsets 5..-5)."""
    half = NDIAG // 2
    nwave = flux.shape[1]
    padded = np.pad(flux, ((0, 0), (half, half)), mode="edge")
    out = np.zeros_like(flux)
    for k in range(NDIAG):
        start = half + (half - k)
        out += rdata[:, k, :] * padded[:, start : start + nwave]
    return out


def _cosmic_pixels(rng: np.random.Generator, nexp: np.ndarray, nwave: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of pixels hit by cosmic rays that the coadd could not repair, 1-3 pixels each."""
    hits = rng.poisson(0.8 * nexp)
    rows = np.repeat(np.arange(len(nexp)), hits)
    start = rng.integers(0, nwave, rows.size)
    length = rng.integers(1, 4, rows.size)
    offset = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
    return np.repeat(rows, length), np.minimum(np.repeat(start, length) + offset, nwave - 1)


def calibration_errors(rng: np.random.Generator, n: int, settings: DemoSettings) -> dict[str, np.ndarray]:
    """Multiplicative flux-calibration error per arm, shape (n, nwave): a smooth Legendre wiggle over the
    whole range (rms ``calibration_wiggle``) times a per-arm offset (rms ``arm_offset``)."""
    coeff = rng.normal(0.0, settings.calibration_wiggle / np.sqrt(CALIBRATION_DEGREE), (CALIBRATION_DEGREE + 1, n))
    coeff[0] = 0.0
    offset = rng.normal(0.0, settings.arm_offset, (len(ARMS), n, 1))
    out = {}
    for k, arm in enumerate(ARMS):
        x = (ARM_WAVE[arm] - BRZ_WAVE[0]) / (BRZ_WAVE[-1] - BRZ_WAVE[0]) * 2 - 1
        out[arm] = np.clip((1 + legendre.legval(x, coeff)) * (1 + offset[k]), 0.5, 1.5)
    return out


def observe(rng: np.random.Generator, model: np.ndarray, cat: Columns, program: str, settings: DemoSettings) -> Arms:
    """Per-arm WAVELENGTH/FLUX/IVAR/MASK/RESOLUTION for noiseless models on BRZ_WAVE.

    The stated variance is photons from the object (through the fibre), the sky continuum and its lines,
    plus read noise per exposure; the drawn noise is wider by the ivar optimism and, in a fraction of
    pixels, by TAIL_SCALE; sky lines leave residuals the ivar does not know; flux and ivar carry the
    calibration error. The sky lines are the real coadds' excess variance over the sky continuum.
    """
    n = len(model)
    efftime = np.maximum(cat["efftime"], 1.0)[:, None]
    fibre = cat["psf_to_fiber"][:, None]
    optimism = 1 + np.clip(rng.normal(settings.ivar_optimism, OPTIMISM_SPREAD, n), 0.0, None)[:, None]
    line_scale = rng.lognormal(0.0, SKY_LINE_SPREAD, n)[:, None]
    calibration = calibration_errors(rng, n, settings)
    arms = {}
    for arm in ARMS:
        wave = ARM_WAVE[arm]
        start, nwave = round((wave[0] - BRZ_WAVE[0]) / WAVE_STEP), wave.size
        rdata = _resolution_data(rng, arm, nwave, n)
        signal = _apply_resolution(model[:, start : start + nwave], rdata)
        e_per_flux = efftime * AREA_CM2 * throughput(arm) * WAVE_STEP * wave / HC_ERG_AA * 1e-17
        read_e = np.maximum(cat["nexp"], 1)[:, None] * READ_NOISE_E2
        continuum_e = e_per_flux * sky_continuum(wave, program) + read_e
        lines_e = line_scale * sky_line_excess(arm) * continuum_e
        var_e = e_per_flux * fibre * np.clip(signal, 0, None) + continuum_e + lines_e
        sigma = np.sqrt(var_e) / (e_per_flux * fibre)
        wide = np.where(rng.random(signal.shape) < settings.tail_fraction, TAIL_SCALE, 1.0)
        flux = signal + sigma * optimism * wide * rng.standard_normal(signal.shape)
        flux += settings.sky_residual * _sky_residual(rng, lines_e, e_per_flux * fibre, wave)
        ivar = 1.0 / sigma**2
        flux *= calibration[arm]
        ivar /= calibration[arm] ** 2
        mask = np.zeros(signal.shape, dtype=np.uint32)
        rows, cols = _cosmic_pixels(rng, cat["nexp"], nwave)
        mask[rows, cols] |= SPECMASK_COSMIC
        flux[rows, cols] = 0.0
        ivar[rows, cols] = 0.0
        arms[arm] = {
            "wave": wave,
            "flux": flux,
            "ivar": ivar,
            "mask": mask,
            "resolution": rdata,
            "model": signal * calibration[arm],
        }
    return arms


def _sky_residual(
    rng: np.random.Generator, lines_e: np.ndarray, e_per_flux: np.ndarray, wave: np.ndarray
) -> np.ndarray:
    """What subtracting the sky lines (``lines_e`` electrons per pixel) leaves, in object flux units: a
    scale error and a wavelength shift per fibre and arm, and unstated photon noise (SKY_SCALE_ERROR)."""
    n = len(lines_e)
    lines = lines_e / e_per_flux
    scale = rng.normal(0.0, SKY_SCALE_ERROR, (n, 1))
    shift = rng.normal(0.0, SKY_SHIFT_AA, (n, 1))
    unstated = np.sqrt(SKY_VARIANCE_EXCESS * lines_e) / e_per_flux * rng.standard_normal(lines.shape)
    return lines * scale + shift * np.gradient(lines, wave, axis=1) + unstated
