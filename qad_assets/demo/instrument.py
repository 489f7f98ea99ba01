"""The DESI instrument: throughput, sky, line-spread (RESOLUTION), noise and cosmic rays."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from qad_assets.demo.plan import Arms, Columns
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


#: Osterbrock et al. (1996); a noise model, not a sky atlas
SKY_LINES = np.array(
    [(5577.34, 100), (5889.95, 15), (5895.92, 15), (6300.30, 40), (6363.78, 13)]
    + [(w, 6) for w in (6498.7, 6533.0, 6553.6, 6568.8, 6577.3, 6596.6, 6604.3)]
    + [(w, 15) for w in (6827.5, 6834.0, 6864.0, 6871.1, 6912.6, 6923.2, 6939.5, 6949.0, 6978.5)]
    + [(w, 25) for w in (7276.4, 7284.4, 7316.3, 7329.1, 7340.9, 7358.7, 7369.2, 7401.7)]
    + [(w, 40) for w in (7750.6, 7794.1, 7821.5, 7841.3, 7853.2, 7913.7, 7949.2, 7964.6, 7993.3)]
    + [(w, 60) for w in (8344.6, 8382.4, 8399.2, 8415.2, 8430.2, 8452.3, 8465.4, 8493.4, 8504.6)]
    + [(w, 60) for w in (8761.3, 8767.9, 8778.3, 8791.2, 8827.1, 8885.8, 8903.1, 8919.6, 8943.4)]
    + [(w, 60) for w in (8958.1, 8988.4, 9001.4, 9313.9, 9375.9, 9439.7, 9476.9, 9519.2, 9567.6)]
    + [(w, 60) for w in (9607.1, 9621.3, 9653.1, 9701.7, 9714.9, 9792.4)]
)

# ---- instrument model (calibrated so that a r = 22 point source reaches S/N ~ 1 per pixel in 1000 s)
HC_ERG_AA = 6.62607015e-27 * 2.99792458e18  # h c in erg Angstrom
AREA_CM2 = 8.678e4
READ_NOISE_E2 = 3.5**2 * 4  # read noise^2 times CCD pixels per spectral pixel
SKY_RESIDUAL = 0.005  # sky-subtraction residual, as a fraction of the sky-line flux
LSF_SIGMA_PIX = {"B": (0.95, 0.80), "R": (0.85, 0.80), "Z": (0.90, 0.95)}  # first, last pixel
SCORE_WINDOWS = {"B": (4000.0, 5800.0), "R": (5800.0, 7600.0), "Z": (7600.0, 9800.0)}
REDROCK_TEMPLATES = [("GALAXY", "2.6"), ("QSO:::LOZ", "1.0"), ("QSO:::HIZ", "1.0")] + [
    (f"STAR:::{t}", "0.1") for t in ("A", "B", "CV", "F", "G", "K", "M", "WD")
]


def _edge(wave: np.ndarray, centre: float, width: float) -> np.ndarray:
    return expit((wave - centre) / width)


def throughput(arm: str, wave: np.ndarray) -> np.ndarray:
    """Total throughput (atmosphere to CCD, point source) of one arm; dichroic edges in overlaps.

    Shapes follow DESI's: blue end and far red weak, each arm rolling off where the next takes over.
    """
    if arm == "B":
        return 0.30 * _edge(wave, 3800.0, 110.0) * (1 - _edge(wave, 5790.0, 25.0))
    if arm == "R":
        return 0.32 * _edge(wave, 5770.0, 25.0) * (1 - _edge(wave, 7600.0, 40.0))
    return 0.32 * _edge(wave, 7540.0, 40.0) * np.clip(1 - ((wave - 8000.0) / 3000.0) ** 2, 0.05, None)


def _air_to_vacuum(wave_air: np.ndarray) -> np.ndarray:
    s2 = (1e4 / wave_air) ** 2
    return wave_air * (1 + 1e-8 * (8342.54 + 2406147.0 / (130.0 - s2) + 15998.0 / (38.9 - s2)))


def sky_model(wave: np.ndarray, program: str) -> tuple[np.ndarray, np.ndarray]:
    """Sky per fibre in 1e-17 erg/s/cm2/Å at the instrument resolution: (continuum, lines)."""
    cont = 2.0 * (wave / 6000.0) ** 0.8
    if program == "bright":  # scattered moonlight: brighter and bluer
        cont = 3.0 * cont + 6.0 * (wave / 5000.0) ** -2
    centres = _air_to_vacuum(SKY_LINES[:, 0])
    sigma = 0.75
    prof = np.exp(-0.5 * ((wave[None, :] - centres[:, None]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    return cont, 2.5 * (SKY_LINES[:, 1:2] * prof).sum(axis=0)


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


def observe(rng: np.random.Generator, model: np.ndarray, cat: Columns, program: str) -> Arms:
    """Per-arm WAVELENGTH/FLUX/IVAR/MASK/RESOLUTION for noiseless models on BRZ_WAVE.

    Noise: photons from the object (through the fibre) and the sky, plus read noise per exposure;
    ivar is the inverse of that variance and the flux noise is drawn from it, as in the pipeline.
    """
    arms = {}
    exptime = np.maximum(cat["exptime"], 1.0)[:, None]
    fibre = cat["psf_to_fiber"][:, None]
    for arm in ARMS:
        wave = ARM_WAVE[arm]
        start, nwave = round((wave[0] - BRZ_WAVE[0]) / WAVE_STEP), wave.size
        rdata = _resolution_data(rng, arm, nwave, len(model))
        signal = _apply_resolution(model[:, start : start + nwave], rdata)
        sky_cont, sky_lines = sky_model(wave, program)
        e_per_flux = exptime * AREA_CM2 * throughput(arm, wave) * WAVE_STEP * wave / HC_ERG_AA * 1e-17
        var_e = e_per_flux * (fibre * np.clip(signal, 0, None) + sky_cont + sky_lines)
        var_e += np.maximum(cat["nexp"], 1)[:, None] * READ_NOISE_E2
        sigma = np.sqrt(var_e) / (e_per_flux * fibre)
        flux = signal + sigma * rng.standard_normal(signal.shape)
        flux += SKY_RESIDUAL * sky_lines / fibre * rng.standard_normal(signal.shape)
        ivar = 1.0 / sigma**2
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
            "model": signal,
        }
    return arms
