"""Embedded demo release: a small synthetic DESI spectroscopic release with ground truth.

Why it exists: the pipeline has to run end to end anywhere (CI, a laptop, a fresh cluster) on input
that exercises the reader exactly as DESI DR1 does, and the anomaly scores need labelled anomalies
to be judged against. This module writes healpix coadd and redrock files that follow the DESI data
model (desihub/desidatamodel; condensed in the project's realdata notes) and a Parquet truth table
that says, for every FIBERMAP row, what the object is, what the reader must do with it and which
anomaly, if any, was injected. Nothing here is a DESI observation; every primary header says so.

Physics (vectorised over the spectra of a pixel):

- Quasars: the Temple, Hewett & Banerji (2021) ``qsogen`` recipe: a broken power-law continuum with
  a per-object slope, equivalent-width-preserving emission lines mixed between the median, high-EW
  and high-blueshift templates measured on SDSS quasars, an old stellar host below z = 1; then a
  lognormal Lyα forest whose mean transmission follows Becker et al. (2013), Lyβ/Lyγ suppression
  and a Lyman-limit cut.
- Galaxies: old/young stellar archetypes plus nebular lines. Stars: redrock stellar archetypes.
- Instrument: Milky Way dust (CCM89), per-arm throughput, dark/bright sky with [OI], NaD and OH
  lines, a Gaussian line-spread stored as the 11-diagonal RESOLUTION, photon and read noise drawn
  from the ivar, cosmic-ray masks.

Reader contract encoded in the truth table (``expected_status`` / ``expected_reason``, the ledger
codes of ``qad_assets.science.ledger``), first reason that applies: filtered ``unassigned_fiber``
(TARGETID < 0), ``not_target`` (OBJTYPE != 'TGT'), ``bad_fiberstatus`` (COADD_FIBERSTATUS != 0);
quarantined ``duplicate_targetid`` (every row of a repeated TARGETID); filtered ``not_qso``
(SPECTYPE != 'QSO'), ``zwarn`` (ZWARN != 0); quarantined ``nonfinite`` (NaN flux at a good pixel),
``negative_ivar``, ``no_good_pixels`` (good = ivar > 0 and mask == 0). Every injected anomaly is
kept.

Truth table columns: TARGETID, file (coadd path relative to ``root``), row, healpix, survey,
program, objtype, true_class (qso/galaxy/star/sky/unassigned/broken), z_true, z_catalog (redrock
Z), spectype, zwarn, anomaly_class (null for normal rows), anomaly_strength (0.1 subtle .. 1
obvious), anomaly_detail (the physical parameters), expected_status, expected_reason ('' when
kept), r_mag, median_snr (median flux*sqrt(ivar) over the good pixels of the three arms).

Run ``python -m qad_assets.science.demo_release ROOT`` to write the default release (8 pixels of
400 rows, about 1.4 GB: a coadd holds 435 KiB per spectrum, like DESI's own).
"""

from __future__ import annotations

import argparse
import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
from astropy.io import fits
from scipy.ndimage import gaussian_filter1d
from scipy.special import expit

from qad_assets.science.atomic_files import write_atomic
from qad_assets.science.parquet_store import write_table_atomic

DATA_DIR = Path(__file__).parent / "data"
GENERATOR = "qad_assets.science.demo_release"
GENERATOR_VERSION = "1"

NSIDE = 64
FIRST_PIXEL = 26064  # nested nside-64 pixels from here on form a compact patch at RA 217, Dec +3..+5
SURVEY = "main"
C_KMS = 299792.458
HC_ERG_AA = 6.62607015e-27 * 2.99792458e18  # h c in erg Angstrom

# ---- DESI grids and bits (DESI data model) -------------------------------------------------------
WAVE_STEP = 0.8
BRZ_WAVE = np.linspace(3600.0, 9824.0, 7781)  # the merged grid coadd_cameras produces
ARMS: dict[str, tuple[float, float]] = {"B": (3600.0, 5800.0), "R": (5760.0, 7620.0), "Z": (7520.0, 9824.0)}
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

# ---- release composition -------------------------------------------------------------------------
ANOMALY_CLASSES = (
    "bal",
    "reddened",
    "weak_lines",
    "wrong_redshift",
    "superposed",
    "star_as_qso",
    "extreme_lines",
    "calibration_artefact",
)
#: fraction of a pixel's rows per non-quasar role (at least one each); normal quasars fill the rest
ROLE_FRACTIONS = {
    "unassigned": 0.04,
    "sky": 0.06,
    "badposition": 0.0,
    "galaxy": 0.12,
    "star": 0.05,
    "qso_zwarn": 0.03,
}
#: rows per release that the reader must quarantine, spread over the pixels (duplicates come in pairs)
QUARANTINE_ROWS = {"nonfinite": 2, "negative_ivar": 2, "no_good_pixels": 1, "duplicate_targetid": 2}
FILTER_REASON = {
    "unassigned": "unassigned_fiber",
    "sky": "not_target",
    "badposition": "bad_fiberstatus",
    "galaxy": "not_qso",
    "star": "not_qso",
    "qso_zwarn": "zwarn",
}
TRUE_CLASS = {
    "qso": "qso",
    "qso_zwarn": "qso",
    "galaxy": "galaxy",
    "star": "star",
    "star_as_qso": "star",
    "sky": "sky",
    "unassigned": "unassigned",
    "badposition": "qso",
}
QSO_ROLES = ("qso", "qso_zwarn", "badposition", *QUARANTINE_ROWS)

# ---- astrophysics constants ----------------------------------------------------------------------
LYA, LYB, LYG, LYLIMIT = 1215.67, 1025.72, 972.54, 911.75
QSOGEN = {"plslp1": -0.349, "plslp2": 0.593, "plbrk1": 3880.0, "plstep": -1.0, "plbrk3": 1200.0}
QSO_Z_PDF = (  # (z, relative density): DESI-like, peaking at z ~ 1.5-2.5
    np.array([0.3, 0.6, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]),
    np.array([0.25, 0.55, 0.85, 1.0, 1.0, 0.8, 0.4, 0.15, 0.04]),
)
FOREST_SIGMA = 1.4  # lognormal width of the Lyα optical depth
FOREST_SMOOTH_PIX = 1.0  # correlation length of the forest field (~60 km/s per pixel)
BAL_LINES = np.array([(1549.06, 1.0), (1396.76, 0.7), (1240.14, 0.8)])  # CIV, SiIV, NV: (Å, depth)
NEBULAR_LINES = np.array(  # vacuum Å, flux relative to the [OII] doublet
    [
        (3727.09, 0.45),
        (3729.88, 0.55),
        (3870.0, 0.06),
        (4341.7, 0.12),
        (4862.7, 0.28),
        (4960.3, 0.17),
        (5008.2, 0.5),
        (6564.6, 0.8),
        (6585.3, 0.25),
        (6718.3, 0.13),
        (6732.7, 0.1),
    ]
)
PEI92_SMC = np.array(  # Pei (1992) SMC fit: a_i, lambda_i [um], b_i, n_i; R_V = 2.93
    [(185.0, 0.042, 90.0, 2.0), (27.0, 0.08, 5.5, 4.0), (0.005, 0.22, -1.95, 2.0)]
    + [(0.010, 9.7, -1.95, 2.0), (0.012, 18.0, -1.8, 2.0), (0.030, 25.0, 0.0, 2.0)]
)
#: strong night-sky lines (air Å, rough relative intensity): [OI], NaD and OH Meinel bands after
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
AREA_CM2 = 8.678e4
READ_NOISE_E2 = 3.5**2 * 4  # read noise^2 times CCD pixels per spectral pixel
SKY_RESIDUAL = 0.005  # sky-subtraction residual, as a fraction of the sky-line flux
LSF_SIGMA_PIX = {"B": (0.95, 0.80), "R": (0.85, 0.80), "Z": (0.90, 0.95)}  # first, last pixel
BANDS = {"g": (4000.0, 5500.0), "r": (5600.0, 7200.0), "z": (8300.0, 9800.0)}  # approximate DECam
SCORE_WINDOWS = {"B": (4000.0, 5800.0), "R": (5800.0, 7600.0), "Z": (7600.0, 9800.0)}
REDROCK_TEMPLATES = [("GALAXY", "2.6"), ("QSO:::LOZ", "1.0"), ("QSO:::HIZ", "1.0")] + [
    (f"STAR:::{t}", "0.1") for t in ("A", "B", "CV", "F", "G", "K", "M", "WD")
]


Columns = dict[str, np.ndarray]  # named per-row arrays (catalogue, parameters, table columns)
Arms = dict[str, dict[str, np.ndarray]]  # per-arm wave/flux/ivar/mask/resolution/model


@dataclass(frozen=True)
class DemoRelease:
    """What :func:`write_demo_release` wrote: paths are absolute, in pixel order."""

    release: str
    root: Path
    coadd_paths: list[Path]
    redrock_paths: list[Path]
    truth_path: Path


@dataclass
class _PixelPlan:
    index: int
    healpix: int
    program: str
    roles: np.ndarray  # role of each row (before shuffling)
    anomaly: np.ndarray  # anomaly class or ''
    strength: np.ndarray  # anomaly strength in (0, 1], NaN for normal rows


# ==================================================================================================
# public entry point
# ==================================================================================================
def write_demo_release(
    root: Path,
    *,
    release: str = "demo",
    n_pixels: int = 8,
    targets_per_pixel: int = 400,
    seed: int = 0,
    anomaly_fraction: float = 0.05,
) -> DemoRelease:
    """Write a demo release under ``root`` in the DESI DR1 healpix layout, plus its truth table.

    ``root/spectro/redux/<release>/healpix/main/<program>/<hpix//100>/<hpix>/{coadd,redrock}-...fits``
    and ``root/truth-<release>.parquet``. The last pixel is in ``main/bright`` when there are two
    or more. The output depends only on the arguments: the same arguments give the same bytes.
    """
    if not re.fullmatch(r"[a-z0-9]+", release):
        raise ValueError(f"release must match [a-z0-9]+, got {release!r}")
    if not 1 <= n_pixels <= 800:
        raise ValueError("n_pixels must be in 1..800")
    if targets_per_pixel > 5000:
        raise ValueError("targets_per_pixel must be at most 5000 (BRICK_OBJID and fibre ranges)")
    if not 0.0 <= anomaly_fraction <= 0.5:
        raise ValueError("anomaly_fraction must be in [0, 0.5]")
    root = Path(root).resolve()
    plans = _plan_release(n_pixels, targets_per_pixel, anomaly_fraction, seed)
    coadds, redrocks, truth = [], [], []
    for plan in plans:
        rng = np.random.default_rng([seed, plan.healpix])
        pixel = _simulate_pixel(plan, rng)
        folder = _pixel_dir(root, release, plan.program, plan.healpix)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{SURVEY}-{plan.program}-{plan.healpix}.fits"
        coadd, redrock = folder / f"coadd-{stem}", folder / f"redrock-{stem}"
        _write_fits(_coadd_hdus(pixel, plan, release, seed), coadd)
        _write_fits(_redrock_hdus(pixel, plan, release, seed), redrock)
        coadds.append(coadd)
        redrocks.append(redrock)
        truth.append(_truth_table(pixel, plan, coadd.relative_to(root).as_posix()))
    truth_path = write_table_atomic(pa.concat_tables(truth), root / f"truth-{release}.parquet")
    return DemoRelease(release, root, coadds, redrocks, truth_path)


def _pixel_dir(root: Path, release: str, program: str, healpix: int) -> Path:
    return root.joinpath("spectro", "redux", release, "healpix", SURVEY, program, str(healpix // 100), str(healpix))


# ==================================================================================================
# planning: which rows exist, which are anomalous or broken
# ==================================================================================================
def _plan_release(n_pixels: int, n_rows: int, anomaly_fraction: float, seed: int) -> list[_PixelPlan]:
    """Decide every row's role, anomaly class and strength.

    Anomaly classes cycle over the release, so every class is present once there are eight
    anomalies; within a class the strengths are spread evenly from subtle (0.1) to obvious (1)
    and shuffled over the pixels.
    """
    rng = np.random.default_rng([seed, 2**32])
    n_anom = round(anomaly_fraction * n_rows)
    units = [[code] for code, count in QUARANTINE_ROWS.items() if code != "duplicate_targetid" for _ in range(count)]
    units += [["duplicate_targetid"] * 2 for _ in range(QUARANTINE_ROWS["duplicate_targetid"] // 2)]
    cls_of = np.arange(n_anom * n_pixels) % len(ANOMALY_CLASSES)
    strength_all = np.zeros(cls_of.size)
    for c in range(len(ANOMALY_CLASSES)):
        members = np.flatnonzero(cls_of == c)
        strength_all[members] = 0.1 + 0.9 * (rng.permutation(members.size) + 0.5) / members.size
    fixed = {role: max(1, round(frac * n_rows)) for role, frac in ROLE_FRACTIONS.items()}
    plans = []
    for i in range(n_pixels):
        program = "bright" if n_pixels >= 2 and i == n_pixels - 1 else "dark"
        pixel_broken = [code for unit in units[i::n_pixels] for code in unit]
        n_qso = n_rows - sum(fixed.values()) - n_anom - len(pixel_broken)
        if n_qso < 5:
            raise ValueError(f"targets_per_pixel={n_rows} is too small for the release composition")
        classes = np.array(ANOMALY_CLASSES)[cls_of[i * n_anom : (i + 1) * n_anom]]
        roles = np.concatenate(
            [
                np.repeat(list(fixed), list(fixed.values())),
                np.array(pixel_broken, dtype="U20"),
                np.where(classes == "star_as_qso", "star_as_qso", "qso"),
                np.full(n_qso, "qso"),
            ]
        ).astype("U20")
        anomaly = np.concatenate([np.full(n_rows - n_qso - n_anom, ""), classes, np.full(n_qso, "")])
        strength = np.full(n_rows, np.nan)
        strength[n_rows - n_qso - n_anom : n_rows - n_qso] = strength_all[i * n_anom : (i + 1) * n_anom]
        plans.append(_PixelPlan(i, FIRST_PIXEL + i, program, roles, anomaly.astype("U20"), strength))
    return plans


# ==================================================================================================
# geometry and identifiers
# ==================================================================================================
_JRLL = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4])
_JPLL = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7])


def nest_pixel_radec(
    pixel: np.ndarray | int, dx: np.ndarray | float, dy: np.ndarray | float, nside: int = NSIDE
) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec (deg) of the point at fractional position (dx, dy) in [0, 1)^2 of nested pixels.

    HEALPix face geometry (Gorski et al. 2005; healpix_base ``xyf2loc``), so the package needs no
    healpy or astropy_healpix. Uniform (dx, dy) are uniform on the sky: the HEALPix projection is
    equal-area and face coordinates are linear in it.
    """
    pixel = np.asarray(pixel, dtype=np.int64)
    face, ipf = np.divmod(pixel, nside * nside)
    ix = np.zeros_like(ipf)
    iy = np.zeros_like(ipf)
    for bit in range(int(np.log2(nside))):
        ix |= ((ipf >> (2 * bit)) & 1) << bit
        iy |= ((ipf >> (2 * bit + 1)) & 1) << bit
    x = (ix + np.asarray(dx)) / nside
    y = (iy + np.asarray(dy)) / nside
    jr = _JRLL[face] - x - y
    nr = np.where(jr < 1, jr, np.where(jr > 3, 4 - jr, 1.0))
    z = np.where(jr < 1, 1 - nr**2 / 3, np.where(jr > 3, nr**2 / 3 - 1, (2 - jr) * 2 / 3))
    phi = np.where(nr > 1e-15, 0.25 * np.pi * ((_JPLL[face] * nr + x - y) % 8) / np.maximum(nr, 1e-15), 0.0)
    return np.degrees(phi) % 360.0, np.degrees(np.arcsin(np.clip(z, -1.0, 1.0)))


def make_targetid(release: np.ndarray, brickid: np.ndarray, objid: np.ndarray, sky: np.ndarray | int = 0) -> np.ndarray:
    """DESI TARGETID (desitarget): OBJID 22 bits, BRICKID 20, RELEASE 16, MOCK 1, SKY 1, GAIADR 2."""
    release, brickid, objid = (np.asarray(a, dtype=np.int64) for a in (release, brickid, objid))
    return objid | (brickid << 22) | (release << 42) | (np.asarray(sky, dtype=np.int64) << 59)


@lru_cache(maxsize=1)
def _brick_rows() -> tuple[np.ndarray, np.ndarray]:
    """Legacy Surveys-like bricks: 0.25 deg rows in Dec, ~0.25 deg wide in RA; first id per row."""
    dec_c = np.arange(721) * 0.25 - 90.0
    ncol = np.maximum(1, np.round(360.0 * np.cos(np.radians(dec_c)) / 0.25)).astype(np.int64)
    first = 1 + np.concatenate([[0], np.cumsum(ncol)[:-1]])
    return ncol, first


def _bricks(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BRICKID and BRICKNAME ('hhhhpddd', centre RA and |Dec| in 0.1 deg) of each position."""
    ncol, first = _brick_rows()
    row = np.round((dec + 90.0) / 0.25).astype(np.int64)
    col = np.minimum((ra / 360.0 * ncol[row]).astype(np.int64), ncol[row] - 1)
    ra_c = (col + 0.5) * 360.0 / ncol[row]
    dec_c = row * 0.25 - 90.0
    names = np.array(
        [f"{int(r * 10):04d}{'p' if d >= 0 else 'm'}{int(abs(d) * 10):03d}" for r, d in zip(ra_c, dec_c, strict=True)]
    )
    return first[row] + col, names


# ==================================================================================================
# templates and spectral models
# ==================================================================================================
@lru_cache(maxsize=1)
def _templates() -> Columns:
    with np.load(DATA_DIR / "demo_templates.npz") as data:
        return {key: data[key] for key in data.files}


def _star_index(kind: str, quantile: int = 1) -> int:
    """Index of a stellar archetype: ``quantile`` 0/1/2 = bluer/median/redder of that type."""
    return int(np.flatnonzero(_templates()["star_type"] == kind)[quantile])


def _interp_star(which: np.ndarray, rest_wave: np.ndarray) -> np.ndarray:
    """Stellar archetype ``which[i]`` at ``rest_wave[i]`` (linear, 1 Å grid, clamped at the ends)."""
    t = _templates()
    wave, flux = t["star_wave"], t["star_flux"]
    pos = np.clip((rest_wave - wave[0]) / (wave[1] - wave[0]), 0, len(wave) - 1.000001)
    i0 = pos.astype(np.int64)
    frac = pos - i0
    rows = np.asarray(which)[:, None]
    return flux[rows, i0] * (1 - frac) + flux[rows, i0 + 1] * frac


def _qso_continuum(rest_wave: np.ndarray, dslope: np.ndarray) -> np.ndarray:
    """qsogen broken power law in f_lambda, 1 at 3000 Å; ``dslope`` tilts f_nu by (lambda/3000)^d."""
    sl1 = -QSOGEN["plslp1"]
    sl2 = -QSOGEN["plslp2"]
    sl3 = sl1 - QSOGEN["plstep"]
    lw = np.log(rest_wave / 3000.0)
    b1, b3 = np.log(QSOGEN["plbrk1"] / 3000.0), np.log(QSOGEN["plbrk3"] / 3000.0)
    log_fnu = np.where(lw > b1, sl1 * b1 + sl2 * (lw - b1), np.where(lw < b3, sl1 * b3 + sl3 * (lw - b3), sl1 * lw))
    return np.exp(log_fnu + (np.asarray(dslope)[:, None] - 2.0) * lw)


def _qso_line_ratio(rest_wave: np.ndarray, line_type: np.ndarray, line_scale: np.ndarray) -> np.ndarray:
    """Emission lines over continuum (qsogen EW scaling).

    ``line_type`` > 0 moves towards the strong, peaky high-EW template, < 0 towards the weak,
    blueshifted one (qsogen ``emline_type``); ``line_scale`` multiplies every equivalent width.
    """
    t = _templates()
    wave = t["qsogen_wave"]
    med = np.interp(rest_wave, wave, t["qsogen_median"], left=0.0, right=0.0)
    high_ew = np.interp(rest_wave, wave, t["qsogen_high_ew"], left=0.0, right=0.0)
    blue = np.interp(rest_wave, wave, t["qsogen_high_blueshift"], left=0.0, right=0.0)
    cont = np.interp(rest_wave, wave, t["qsogen_continuum"])
    pos = np.clip(line_type, 0, None)[:, None]
    neg = np.clip(-line_type, 0, None)[:, None]
    lines = med + pos * (high_ew - med) + neg * (blue - med)
    return line_scale[:, None] * lines / cont


def tau_eff_lya(z: np.ndarray) -> np.ndarray:
    """Lyα effective optical depth of the IGM, Becker et al. (2013), as used by qsogen."""
    return np.clip(0.751 * ((1 + np.asarray(z)) / 4.5) ** 2.90 - 0.132, 0.0, None)


@lru_cache(maxsize=1)
def _lognormal_tau_table() -> tuple[np.ndarray, np.ndarray]:
    """tau_eff(tau0) of a lognormal optical depth tau0 exp(s g - s^2/2), g ~ N(0, 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(60)
    w = w / w.sum()
    tau0 = np.logspace(-5, 3, 800)
    lognormal = np.exp(FOREST_SIGMA * x - FOREST_SIGMA**2 / 2)
    mean_flux = (w * np.exp(-tau0[:, None] * lognormal)).sum(axis=1)
    return -np.log(mean_flux), tau0


def _igm_transmission(rng: np.random.Generator, wave: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Stochastic Lyα forest, mean Lyβ/Lyγ absorption and a Lyman-limit cut, shape (n, nwave).

    The forest optical depth is a correlated lognormal field, calibrated pixel by pixel so that
    <exp(-tau)> equals exp(-tau_eff) at the absorber redshift.
    """
    rest = wave[None, :] / (1 + z[:, None])
    field = gaussian_filter1d(rng.standard_normal((len(z), len(wave))), FOREST_SMOOTH_PIX, axis=1)
    field /= np.sqrt(1 / (2 * np.sqrt(np.pi) * FOREST_SMOOTH_PIX))
    tau_table, tau0_table = _lognormal_tau_table()
    tau0 = np.interp(tau_eff_lya(wave / LYA - 1), tau_table, tau0_table)
    tau = tau0 * np.exp(FOREST_SIGMA * field - FOREST_SIGMA**2 / 2)
    trans = np.where(rest < LYA, np.exp(-tau), 1.0)
    trans *= np.where(rest < LYB, np.exp(-0.16 * tau_eff_lya(wave / LYB - 1)), 1.0)
    trans *= np.where(rest < LYG, np.exp(-0.056 * tau_eff_lya(wave / LYG - 1)), 1.0)
    tau_ll = rng.uniform(1.0, 4.0, len(z))[:, None]
    return trans * np.where(rest < LYLIMIT, np.exp(-tau_ll), 1.0)


def smc_extinction(rest_wave: np.ndarray) -> np.ndarray:
    """A_lambda / E(B-V) of SMC dust (Pei 1992), the usual law for reddened quasars."""
    lam = np.asarray(rest_wave) / 1e4
    xi = sum(a / ((lam / l0) ** n + (l0 / lam) ** n + b) for a, l0, b, n in PEI92_SMC)
    return (2.93 + 1.0) * xi


def ccm_extinction(wave: np.ndarray, r_v: float = 3.1) -> np.ndarray:
    """A_lambda / E(B-V) of Milky Way dust, Cardelli, Clayton & Mathis (1989), 0.3-3.3 um^-1."""
    x = 1e4 / np.asarray(wave)
    y = x - 1.82
    a_opt = np.polyval([0.32999, -0.77530, 0.01979, 0.72085, -0.02427, -0.50447, 0.17699, 1.0], y)
    b_opt = np.polyval([-2.09002, 5.30260, -0.62251, -5.38434, 1.07233, 2.28305, 1.41338, 0.0], y)
    a = np.where(x < 1.1, 0.574 * x**1.61, a_opt)
    b = np.where(x < 1.1, -0.527 * x**1.61, b_opt)
    return r_v * a + b


def _quasar_params(rng: np.random.Generator, z: np.ndarray) -> Columns:
    """Per-quasar continuum slope, line family and strength, host fraction; no dust, no BAL."""
    n = len(z)
    return {
        "dslope": rng.normal(0.0, 0.3, n),
        "line_type": np.clip(rng.normal(0.0, 0.5, n), -1.5, 2.0),
        "line_scale": 0.9936 * rng.lognormal(0.0, 0.2, n),
        "host_frac": np.where(z < 1.0, rng.uniform(0.0, 0.4, n), 0.0),
        "ebv": np.zeros(n),
        "bal_depth": np.zeros(n),
        "bal_vmin": np.zeros(n),
        "bal_width": np.zeros(n),
    }


def _quasar_spectra(rng: np.random.Generator, z: np.ndarray, p: Columns) -> np.ndarray:
    """Observed-frame quasar shapes on BRZ_WAVE (arbitrary normalisation), shape (n, 7781)."""
    rest = BRZ_WAVE[None, :] / (1 + z[:, None])
    cont = _qso_continuum(rest, p["dslope"])
    flux = cont * (1 + _qso_line_ratio(rest, p["line_type"], p["line_scale"]))
    host_at_4400 = _interp_star(np.array([_star_index("K")]), np.array([[4400.0]]))[0, 0]
    qso_at_4400 = _qso_continuum(np.array([[4400.0]]), p["dslope"])[:, 0]
    host_norm = p["host_frac"] / (1 - p["host_frac"]) * qso_at_4400 / host_at_4400
    flux += host_norm[:, None] * _interp_star(np.full(len(z), _star_index("K")), rest)
    flux *= 10 ** (-0.4 * p["ebv"][:, None] * smc_extinction(rest))
    flux *= _bal_transmission(rest, p["bal_depth"], p["bal_vmin"], p["bal_width"])
    return np.clip(flux, 0.0, None) * _igm_transmission(rng, BRZ_WAVE, z)


def _bal_transmission(rest: np.ndarray, depth: np.ndarray, vmin: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Broad absorption troughs blueward of CIV, SiIV and NV: smooth-edged boxes in velocity."""
    trans = np.ones_like(rest)
    has = depth > 0
    if not has.any():
        return trans
    r = rest[has]
    vlo, vhi, d = vmin[has, None], (vmin + width)[has, None], depth[has, None]
    for line, rel_depth in BAL_LINES:
        v = C_KMS * (1 - r / line)
        profile = expit((v - vlo) / 300.0) * expit((vhi - v) / 300.0)
        trans[has] *= 1 - rel_depth * d * profile
    return trans


def _galaxy_spectra(rng: np.random.Generator, z: np.ndarray, is_elg: np.ndarray) -> np.ndarray:
    """LRG/ELG shapes: old (K) and young (A) archetype mix plus nebular lines, shape (n, 7781)."""
    n = len(z)
    rest = BRZ_WAVE[None, :] / (1 + z[:, None])
    young = np.where(is_elg, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.15, n))[:, None]
    old_spec = _interp_star(np.full(n, _star_index("K", 2)), rest)
    young_spec = _interp_star(np.full(n, _star_index("A")), rest)
    flux = (1 - young) * old_spec + young * young_spec
    ew_oii = np.where(is_elg, rng.uniform(15.0, 80.0, n), rng.uniform(0.0, 4.0, n))
    cont_oii = (1 - young[:, 0]) * _interp_star(np.full(n, _star_index("K", 2)), np.full((n, 1), 3728.0))[:, 0]
    cont_oii += young[:, 0] * _interp_star(np.full(n, _star_index("A")), np.full((n, 1), 3728.0))[:, 0]
    sigma_v = rng.uniform(40.0, 120.0, n)[:, None]
    for line, rel in NEBULAR_LINES:
        s = line * sigma_v / C_KMS
        flux += (rel * ew_oii * cont_oii)[:, None] * np.exp(-0.5 * ((rest - line) / s) ** 2) / (s * np.sqrt(2 * np.pi))
    return flux


def _star_spectra(which: np.ndarray, rv_kms: np.ndarray) -> np.ndarray:
    """Stellar archetype shapes Doppler-shifted by ``rv_kms``, shape (n, 7781)."""
    return _interp_star(which, BRZ_WAVE[None, :] / (1 + rv_kms[:, None] / C_KMS))


def _band_nmgy(flux: np.ndarray, band: str) -> np.ndarray:
    """Synthetic AB flux in nanomaggies through a top-hat band (photon counting)."""
    lo, hi = BANDS[band]
    sel = (lo <= BRZ_WAVE) & (hi >= BRZ_WAVE)
    w = BRZ_WAVE[sel]
    fnu = (flux[:, sel] * w).sum(axis=1) / (2.99792458e18 / w).sum() * 1e-17
    return fnu / 3.631e-29


def _scale_to_rmag(flux: np.ndarray, rmag: np.ndarray) -> np.ndarray:
    return flux * (10 ** (-0.4 * (rmag - 22.5)) / np.maximum(_band_nmgy(flux, "r"), 1e-30))[:, None]


def _draw_qso_z(rng: np.random.Generator, n: int, zmin: np.ndarray | float = 0.3) -> np.ndarray:
    """Quasar redshifts from the DESI-like QSO_Z_PDF, truncated below at ``zmin``."""
    zg = np.linspace(QSO_Z_PDF[0][0], QSO_Z_PDF[0][-1], 400)
    cdf = np.cumsum(np.interp(zg, *QSO_Z_PDF))
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    lo = np.interp(zmin, zg, cdf)
    return np.interp(lo + (1 - lo) * rng.random(n), cdf, zg)


def _draw_mag(rng: np.random.Generator, n: int, bright: float, faint: float, slope: float = 0.35) -> np.ndarray:
    """Magnitudes with number counts rising as 10^(slope m) between ``bright`` and ``faint``."""
    u = rng.random(n)
    lo = 10 ** (-slope * (faint - bright))
    return faint + np.log10(lo + u * (1 - lo)) / slope


# ==================================================================================================
# anomalies: one function per class, applied at the stage where the effect happens
# ==================================================================================================
def _bal(p: Columns, sel: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Broad absorption-line quasar: troughs 2000-20000 km/s wide, depth 0.15-0.9 (with strength)."""
    p["bal_depth"][sel] = 0.15 + 0.75 * s
    p["bal_width"][sel] = 2000.0 + 18000.0 * s
    p["bal_vmin"][sel] = rng.uniform(0.0, 5000.0, sel.sum())
    return [
        f"depth={d:.2f} vmin_kms={v:.0f} width_kms={w:.0f}"
        for d, v, w in zip(p["bal_depth"][sel], p["bal_vmin"][sel], p["bal_width"][sel], strict=True)
    ]


def _reddened(p: Columns, sel: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Dust-reddened quasar: SMC extinction E(B-V) = 0.03-0.4 at the quasar redshift."""
    p["ebv"][sel] = 0.03 + 0.37 * s
    return [f"ebv_smc={e:.3f}" for e in p["ebv"][sel]]


def _weak_lines(p: Columns, sel: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Weak-line quasar: every emission-line EW reduced by a factor 0.9 (subtle) to 0.1."""
    factor = 1.0 - 0.9 * s
    p["line_scale"][sel] *= factor
    return [f"ew_factor={f:.2f}" for f in factor]


def _extreme_lines(p: Columns, sel: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Extreme emitter: EWs boosted 1.3-4x and the line family pushed to the peaky high-EW end."""
    factor = 1.0 + 3.0 * s
    p["line_scale"][sel] *= factor
    p["line_type"][sel] = np.maximum(p["line_type"][sel], 0.5 + 1.5 * s)
    return [f"ew_factor={f:.2f}" for f in factor]


INTRINSIC_ANOMALIES: dict[str, Callable[..., list[str]]] = {
    "bal": _bal,
    "reddened": _reddened,
    "weak_lines": _weak_lines,
    "extreme_lines": _extreme_lines,
}


def _wrong_redshift(z: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Catalogue redshift off by a factor (1 + z) * (1 +- (0.005-0.35)); the spectrum keeps z."""
    delta = (0.005 + 0.345 * s) * rng.choice([-1.0, 1.0], len(z))
    z_cat = (1 + z) * (1 + delta) - 1
    flip = (z_cat < 0.05) | (z_cat > 5.0)
    z_cat = np.where(flip, (1 + z) * (1 - delta) - 1, z_cat)
    return z_cat, [f"dz={b - a:+.4f}" for a, b in zip(z, z_cat, strict=True)]


def _superposed(
    rng: np.random.Generator, primary: np.ndarray, z: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """A second object on the fibre: a quasar or an emission-line galaxy at another redshift.

    Its r-band flux is 0.15 (subtle) to 1 (obvious) times the primary's.
    """
    n = len(z)
    is_qso = rng.random(n) < 0.5
    dz = rng.uniform(0.3, 1.5, n) * rng.choice([-1.0, 1.0], n)
    z_qso = np.where((z + dz < 0.3) | (z + dz > 4.0), z - dz, z + dz)
    z_gal = rng.uniform(0.3, 1.4, n)
    z_gal = np.where(np.abs(z_gal - z) >= 0.3, z_gal, np.where(z_gal + 0.6 <= 1.6, z_gal + 0.6, z_gal - 0.6))
    z2 = np.where(is_qso, z_qso, np.clip(z_gal, 0.05, None))
    second = np.where(
        is_qso[:, None],
        _quasar_spectra(rng, z2, _quasar_params(rng, z2)),
        _galaxy_spectra(rng, z2, np.ones(n, dtype=bool)),
    )
    ratio = 0.15 + 0.85 * s
    second *= (ratio * _band_nmgy(primary, "r") / np.maximum(_band_nmgy(second, "r"), 1e-30))[:, None]
    kinds = np.where(is_qso, "qso", "galaxy")
    return primary + second, [
        f"second={k} z2={b:.3f} flux_ratio={r:.2f}" for k, b, r in zip(kinds, z2, ratio, strict=True)
    ]


def _arm_scale(arms: Arms, row: int, s: float, rng: np.random.Generator) -> str:
    """One arm's flux calibration off by 5-60 %: a jump at the arm boundary."""
    arm = str(rng.choice(["B", "Z"]))
    factor = 1 + (0.05 + 0.55 * s) * rng.choice([-1.0, 1.0])
    arms[arm]["flux"][row] *= factor
    arms[arm]["ivar"][row] /= factor**2
    return f"arm_scale arm={arm} factor={factor:.3f}"


def _spikes(arms: Arms, row: int, s: float, rng: np.random.Generator) -> str:
    """A periodic series of 1-pixel spikes of 3-30 sigma in the R arm, not flagged in the mask."""
    r = arms["R"]
    period = int(rng.integers(40, 200))
    cols = np.arange(int(rng.integers(0, period)), r["flux"].shape[1], period)
    sigma = np.median(1 / np.sqrt(r["ivar"][row][r["ivar"][row] > 0]))
    amp = 3.0 + 27.0 * s
    r["flux"][row, cols] += amp * sigma
    return f"spikes arm=R period_pix={period} amp_sigma={amp:.1f}"


def _wiggle(arms: Arms, row: int, s: float, rng: np.random.Generator) -> str:
    """A sinusoidal flux-calibration ripple of 3-33 % amplitude over all arms."""
    amp = 0.03 + 0.3 * s
    period, phase = rng.uniform(300.0, 900.0), rng.uniform(0, 2 * np.pi)
    for a in arms.values():
        ripple = 1 + amp * np.sin(2 * np.pi * a["wave"] / period + phase)
        a["flux"][row] *= ripple
        a["ivar"][row] /= ripple**2
    return f"wiggle amp={amp:.3f} period_aa={period:.0f}"


def _calibration_artefact(arms: Arms, rows: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Instrumental defects after extraction, cycling over arm scale, spikes and ripple."""
    kinds = (_arm_scale, _spikes, _wiggle)
    return [kinds[k % 3](arms, row, strength, rng) for k, (row, strength) in enumerate(zip(rows, s, strict=True))]


# ==================================================================================================
# instrument: throughput, sky, resolution, noise
# ==================================================================================================
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


def _observe(rng: np.random.Generator, model: np.ndarray, cat: Columns, program: str) -> Arms:
    """Per-arm WAVELENGTH/FLUX/IVAR/MASK/RESOLUTION for noiseless models on BRZ_WAVE.

    Noise: photons from the object (through the fibre) and the sky, plus read noise per exposure;
    ivar is the inverse of that variance and the flux noise is drawn from it, as in the pipeline.
    """
    arms = {}
    exptime = np.maximum(cat["exptime"], 1.0)[:, None]
    fibre = cat["psf_to_fiber"][:, None]
    for arm, (lo, hi) in ARMS.items():
        start = round((lo - BRZ_WAVE[0]) / WAVE_STEP)
        nwave = round((hi - lo) / WAVE_STEP) + 1
        wave = np.linspace(lo, hi, nwave)
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


# ==================================================================================================
# one pixel: catalogue, spectra, redshifts
# ==================================================================================================
@dataclass
class _Pixel:
    cat: Columns  # per-row catalogue and truth
    arms: Arms
    exposures: Columns  # EXP_FIBERMAP
    redshifts: Columns  # REDSHIFTS


def _simulate_pixel(plan: _PixelPlan, rng: np.random.Generator) -> _Pixel:
    """Draw the objects of one healpix pixel, their spectra and their redrock results."""
    order = rng.permutation(len(plan.roles))
    cat: Columns = {
        "role": plan.roles[order],
        "anomaly": plan.anomaly[order],
        "strength": plan.strength[order],
    }
    _place_duplicates(cat)
    _draw_catalogue(rng, cat, plan)
    exposures = _draw_exposures(rng, cat, plan)
    model = _noiseless_models(rng, cat, plan.program)
    arms = _observe(rng, model, cat, plan.program)
    _corrupt_rows(rng, cat, arms)
    redshifts = _redshifts(rng, cat, arms)
    _summaries(cat, arms)
    return _Pixel(cat, arms, exposures, redshifts)


def _place_duplicates(cat: Columns) -> None:
    """Pair the 'duplicate_targetid' rows: the later row of a pair repeats the earlier one's target."""
    rows = np.flatnonzero(cat["role"] == "duplicate_targetid")
    cat["dup_source"] = np.full(len(cat["role"]), -1)
    cat["dup_source"][rows[1::2]] = rows[0::2]


def _draw_catalogue(rng: np.random.Generator, cat: Columns, plan: _PixelPlan) -> None:
    """Positions, identifiers, redshifts, magnitudes and targeting bits of every row."""
    _draw_identity(rng, cat, plan)
    _draw_redshifts(rng, cat)
    _draw_magnitudes(rng, cat, plan.program)
    dup = np.flatnonzero(cat["dup_source"] >= 0)
    for key in ("ra", "dec", "brickid", "brickname", "release", "objid", "photsys", "targetid"):
        cat[key][dup] = cat[key][cat["dup_source"][dup]]
    for key in ("z", "z_cat", "rmag", "ebv_mw", "psf_to_fiber"):
        cat[key][dup] = cat[key][cat["dup_source"][dup]]


def _draw_identity(rng: np.random.Generator, cat: Columns, plan: _PixelPlan) -> None:
    """Sky position inside the pixel, imaging identifiers, TARGETID and targeting bits."""
    n, role = len(cat["role"]), cat["role"]
    ra, dec = nest_pixel_radec(np.full(n, plan.healpix), rng.random(n), rng.random(n))
    brickid, brickname = _bricks(ra, dec)
    north = dec > 32.375  # DR9 north/south photometric split
    release = np.where(north, 9011, 9010)
    objid = plan.index * 5000 + rng.choice(5000, n, replace=False)
    is_sky, is_galaxy = role == "sky", role == "galaxy"
    is_elg = is_galaxy & (rng.random(n) < 0.6)
    target = np.where(is_galaxy, np.where(is_elg, DESI_ELG, DESI_LRG), DESI_QSO)
    target = np.where(plan.program == "bright", DESI_BGS_ANY, target)
    target = np.select([is_sky, role == "unassigned"], [DESI_SKY, 0], target)
    cat.update(
        ra=ra,
        dec=dec,
        brickid=brickid,
        brickname=brickname,
        release=release,
        objid=objid,
        photsys=np.where(north, "N", "S"),
        targetid=make_targetid(release, brickid, objid, sky=is_sky.astype(np.int64)),
        is_elg=is_elg,
        desi_target=target.astype(np.int64),
        ebv_mw=np.clip(0.035 + 0.01 * (plan.index % 3) + rng.normal(0.0, 0.003, n), 0.005, None),
        psf_to_fiber=np.clip(rng.normal(0.78, 0.03, n), 0.6, 0.85),
        subpriority=rng.random(n),
    )


def _draw_redshifts(rng: np.random.Generator, cat: Columns) -> None:
    """True and catalogue redshifts; BAL quasars need z >= 1.6 for CIV to be observed."""
    n, role, anomaly = len(cat["role"]), cat["role"], cat["anomaly"]
    qso_like = np.isin(role, QSO_ROLES)
    z = np.where(qso_like, _draw_qso_z(rng, n, np.where(anomaly == "bal", 1.6, 0.3)), 0.0)
    is_galaxy = role == "galaxy"
    z = np.where(cat["is_elg"], rng.uniform(0.6, 1.6, n), np.where(is_galaxy, rng.uniform(0.4, 1.0, n), z))
    is_star = np.isin(role, ("star", "star_as_qso"))
    rv = rng.normal(0.0, 80.0, n)
    z = np.where(is_star, rv / C_KMS, z)
    z_cat = z + rng.normal(0.0, 3e-4, n) * (1 + z) * qso_like
    details = np.full(n, "", dtype=object)
    wrong = anomaly == "wrong_redshift"
    z_cat[wrong], details[wrong] = _wrong_redshift(z[wrong], cat["strength"][wrong], rng)
    fake = role == "star_as_qso"
    z_cat[fake] = _draw_qso_z(rng, int(fake.sum()), 0.5)
    details[fake] = [f"star_z_rr={zc:.3f}" for zc in z_cat[fake]]
    cat.update(z=z, z_cat=z_cat, rv=rv, details=details, star_which=_draw_star_types(rng, n, role))


def _draw_magnitudes(rng: np.random.Generator, cat: Columns, program: str) -> None:
    """r magnitudes: quasars 19-23 (17.5-20.5 in bright), fainter for ZWARN failures.

    A star labelled QSO is subtle when faint (r = 22.5) and obvious when bright (r = 19.5).
    """
    n, role = len(cat["role"]), cat["role"]
    bright = program == "bright"
    rmag = _draw_mag(rng, n, 17.5, 20.5) if bright else _draw_mag(rng, n, 19.0, 23.0)
    rmag = np.where(role == "qso_zwarn", rng.uniform(22.6, 23.3, n), rmag)
    galaxy_mag = rng.uniform(19.5, 21.0, n) if bright else rng.uniform(20.5, 23.0, n)
    rmag = np.where(role == "galaxy", galaxy_mag, rmag)
    cat["rmag"] = np.where(role == "star_as_qso", 22.5 - 3.0 * np.nan_to_num(cat["strength"]), rmag)


def _draw_star_types(rng: np.random.Generator, n: int, role: np.ndarray) -> np.ndarray:
    """Stellar archetype per row: stars selected as QSO targets are mostly F/G/K, some A/WD/M."""
    types = _templates()["star_type"]
    weight = np.select([types == t for t in ("A", "F", "G", "K", "M", "WD")], [1.0, 3.0, 3.0, 2.0, 1.0, 1.0])
    which = rng.choice(len(types), n, p=weight / weight.sum())
    return np.where(np.isin(role, ("star", "star_as_qso")), which, -1)


def _draw_exposures(rng: np.random.Generator, cat: Columns, plan: _PixelPlan) -> Columns:
    """Six exposures cover the pixel; each target gets 1-4 (more for z > 2.1 Lyα quasars).

    Returns the EXP_FIBERMAP columns and fills COADD_* and fibre-location columns of ``cat``.
    """
    n, n_pool = len(cat["role"]), 6
    bright = plan.program == "bright"
    mjd0 = 59300 + 40 * plan.index + np.sort(rng.integers(0, 300, n_pool))
    pool = {
        "tileid": (20000 if bright else 1000) + rng.integers(0, 9000, n_pool),
        "mjd": mjd0 + rng.uniform(0.15, 0.45, n_pool),
        "exptime": np.clip(rng.normal(300.0, 50.0, n_pool) if bright else rng.normal(1000.0, 120.0, n_pool), 150, 1500),
    }
    pool["night"] = np.array(
        [int((datetime.date(1858, 11, 17) + datetime.timedelta(days=int(m))).strftime("%Y%m%d")) for m in mjd0]
    )
    pool["expid"] = 80000 + 150 * (mjd0 - 59300) + np.arange(n_pool)

    lya = (cat["z"] > 2.1) & np.isin(cat["role"], QSO_ROLES) & ~bright
    nexp = np.where(lya, rng.choice([1, 2, 3, 4], n, p=[0.2, 0.3, 0.3, 0.2]), rng.choice([1, 2], n, p=[0.75, 0.25]))
    nodata = np.isin(cat["role"], ("unassigned", "badposition"))
    nexp = np.where(nodata, 0, nexp)
    rank = np.argsort(rng.random((n, n_pool)), axis=1).argsort(axis=1)
    used = rank < nexp[:, None]
    on_tile = rank < np.maximum(nexp, 1)[:, None]

    location = np.sort(rng.choice(10 * 543, n, replace=False))
    location = (location // 543) * 1000 + location % 543
    petal, device = location // 1000, location % 1000
    first_tile = pool["tileid"][np.argmin(np.where(on_tile, rank, n_pool), axis=1)]
    unassigned = cat["role"] == "unassigned"
    cat["targetid"] = np.where(unassigned, -(first_tile * 10000 + location), cat["targetid"])

    cat["nexp"] = nexp
    cat["exptime"] = (used * pool["exptime"]).sum(axis=1)
    cat["numnight"] = sum((used & (pool["night"] == night)).any(axis=1) for night in np.unique(pool["night"]))
    cat["numtile"] = sum((used & (pool["tileid"] == tile)).any(axis=1) for tile in np.unique(pool["tileid"]))
    cat["fiberstatus"] = np.select(
        [unassigned, cat["role"] == "badposition"], [FIBERSTATUS_UNASSIGNED, FIBERSTATUS_BADPOSITION], 0
    )

    row, e = np.nonzero(on_tile)
    return {
        "TARGETID": cat["targetid"][row],
        "NIGHT": pool["night"][e],
        "EXPID": pool["expid"][e],
        "MJD": pool["mjd"][e],
        "TILEID": pool["tileid"][e],
        "EXPTIME": pool["exptime"][e],
        "PETAL_LOC": petal[row],
        "DEVICE_LOC": device[row],
        "LOCATION": location[row],
        "FIBER": petal[row] * 500 + device[row] % 500,
        "FIBERSTATUS": cat["fiberstatus"][row],
        "FIBER_RA": cat["ra"][row] + rng.normal(0.0, 0.1 / 3600, row.size),
        "FIBER_DEC": cat["dec"][row] + rng.normal(0.0, 0.1 / 3600, row.size),
    }


def _noiseless_models(rng: np.random.Generator, cat: Columns, program: str) -> np.ndarray:
    """Observed-frame noiseless spectra on BRZ_WAVE in 1e-17 erg/s/cm2/Å, Milky Way dust included."""
    n = len(cat["role"])
    role, anomaly, strength = cat["role"], cat["anomaly"], cat["strength"]
    model = np.zeros((n, BRZ_WAVE.size))

    qso = np.isin(role, QSO_ROLES)
    params = _quasar_params(rng, cat["z"][qso])
    for name, inject in INTRINSIC_ANOMALIES.items():
        sel = anomaly[qso] == name
        if sel.any():
            cat["details"][np.flatnonzero(qso)[sel]] = inject(params, sel, strength[qso][sel], rng)
    model[qso] = _quasar_spectra(rng, cat["z"][qso], params)

    gal = role == "galaxy"
    model[gal] = _galaxy_spectra(rng, cat["z"][gal], cat["is_elg"][gal])
    star = np.isin(role, ("star", "star_as_qso"))
    model[star] = _star_spectra(cat["star_which"][star], cat["rv"][star])

    has_flux = qso | gal | star
    model[has_flux] = _scale_to_rmag(model[has_flux], cat["rmag"][has_flux])
    sup = anomaly == "superposed"
    if sup.any():
        model[sup], cat["details"][sup] = _superposed(rng, model[sup], cat["z"][sup], strength[sup])
    src = cat["dup_source"] >= 0
    model[src] = model[cat["dup_source"][src]]
    model *= 10 ** (-0.4 * cat["ebv_mw"][:, None] * ccm_extinction(BRZ_WAVE)[None, :])

    for band in BANDS:
        cat[f"flux_{band}"] = np.where(has_flux, _band_nmgy(model, band), 0.0)
    cat["rmag"] = np.where(has_flux, 22.5 - 2.5 * np.log10(np.maximum(cat["flux_r"], 1e-9)), np.nan)
    return model


def _corrupt_rows(rng: np.random.Generator, cat: Columns, arms: Arms) -> None:
    """Empty fibres, calibration artefacts and the broken rows the reader must quarantine."""
    role = cat["role"]
    empty = np.isin(role, ("unassigned", "badposition", "no_good_pixels"))
    for a in arms.values():
        a["flux"][empty] = 0.0
        a["ivar"][empty] = 0.0
        a["mask"][empty] = 0
    art = np.flatnonzero(cat["anomaly"] == "calibration_artefact")
    if art.size:
        cat["details"][art] = _calibration_artefact(arms, art, cat["strength"][art], rng)
    for row in np.flatnonzero(role == "nonfinite"):
        good = np.flatnonzero((arms["R"]["ivar"][row] > 0) & (arms["R"]["mask"][row] == 0))
        arms["R"]["flux"][row, rng.choice(good, 5, replace=False)] = np.nan
    for row in np.flatnonzero(role == "negative_ivar"):
        arms["B"]["ivar"][row, rng.choice(arms["B"]["ivar"].shape[1], 5, replace=False)] *= -1.0


def _redshifts(rng: np.random.Generator, cat: Columns, arms: Arms) -> Columns:
    """Redrock-like REDSHIFTS columns.

    CHI2 is the chi2 of the true noiseless model and DELTACHI2 grows with the squared S/N; COEFF
    holds the mean model flux and zeros (not a template fit).
    """
    n = len(cat["role"])
    role = cat["role"]
    good = {a: (d["ivar"] > 0) & (d["mask"] == 0) & np.isfinite(d["flux"]) for a, d in arms.items()}
    npix = sum(g.sum(axis=1) for g in good.values())
    chi2 = sum(
        np.where(good[a], (np.nan_to_num(d["flux"]) - d["model"]) ** 2 * np.abs(d["ivar"]), 0).sum(axis=1)
        for a, d in arms.items()
    )
    snr2 = sum(np.where(good[a], d["model"] ** 2 * d["ivar"], 0).sum(axis=1) for a, d in arms.items())

    is_galaxy, is_star = role == "galaxy", role == "star"
    spectype = np.where(is_galaxy | np.isin(role, ("sky", "unassigned", "badposition")), "GALAXY", "QSO")
    spectype = np.where(is_star, "STAR", spectype)
    subtype = np.where(is_star, _templates()["star_type"][cat["star_which"]], "")
    zwarn = np.select(
        [role == "sky", np.isin(role, ("unassigned", "badposition")), role == "qso_zwarn"],
        [ZWARN_SKY, ZWARN_NODATA, ZWARN_SMALL_DELTA_CHI2],
        0,
    )
    z = np.where(role == "sky", rng.uniform(0.0, 1.5, n), cat["z_cat"])
    z = np.where(np.isin(role, ("unassigned", "badposition")), 0.0, z)
    deltachi2 = 25.0 + 0.02 * snr2
    deltachi2 = np.where(role == "qso_zwarn", rng.uniform(1.0, 9.0, n), deltachi2)
    deltachi2 = np.where(np.isin(role, ("sky", "unassigned", "badposition")), rng.uniform(0.0, 5.0, n), deltachi2)
    zerr = np.select([spectype == "QSO", spectype == "GALAXY"], [2e-4, 2e-5], 1e-5) * (1 + np.abs(z))
    ncoeff = np.select([spectype == "QSO", spectype == "STAR"], [4, 5], 10)
    coeff = np.zeros((n, 10))
    coeff[:, 0] = np.nanmean(np.concatenate([d["model"] for d in arms.values()], axis=1), axis=1)
    return {
        "TARGETID": cat["targetid"],
        "Z": z,
        "ZERR": zerr * rng.lognormal(0.0, 0.3, n),
        "ZWARN": zwarn.astype(np.int64),
        "CHI2": chi2,
        "COEFF": coeff,
        "NPIXELS": npix.astype(np.int64),
        "SPECTYPE": spectype,
        "SUBTYPE": subtype,
        "NCOEFF": ncoeff.astype(np.int64),
        "DELTACHI2": deltachi2,
    }


def _row_nanmedian(values: np.ndarray) -> np.ndarray:
    """Median of the finite values of each row, NaN for a row without any.

    Sorting puts NaN last, so the median sits at the middle of each row's finite prefix; this is
    much faster than np.nanmedian along an axis.
    """
    ordered = np.sort(values, axis=1)
    count = np.isfinite(values).sum(axis=1)
    lo = np.take_along_axis(ordered, (np.maximum(count - 1, 0) // 2)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(ordered, (count // 2)[:, None], axis=1)[:, 0]
    return np.where(count > 0, 0.5 * (lo + hi), np.nan)


def _summaries(cat: Columns, arms: Arms) -> None:
    """SCORES-like per-arm summaries and the truth table's median S/N over all good pixels."""
    snr_all = []
    for arm, d in arms.items():
        good = (d["ivar"] > 0) & (d["mask"] == 0) & np.isfinite(d["flux"])
        snr = np.where(good, d["flux"] * np.sqrt(np.abs(d["ivar"])), np.nan)
        snr_all.append(snr)
        lo, hi = SCORE_WINDOWS[arm]
        win = (d["wave"] >= lo) & (d["wave"] <= hi)
        flux = np.where(good[:, win], d["flux"][:, win], np.nan)
        cat[f"median_flux_{arm}"] = np.nan_to_num(_row_nanmedian(flux))
        cat[f"integ_flux_{arm}"] = np.nansum(flux, axis=1) * WAVE_STEP
        cat[f"median_snr_{arm}"] = np.nan_to_num(_row_nanmedian(snr[:, win]))
    cat["median_snr"] = _row_nanmedian(np.concatenate(snr_all, axis=1))
    teff = cat["exptime"] / 1000.0
    cat["tsnr2_qso"] = 40.0 * teff
    cat["tsnr2_lya"] = 120.0 * teff
    cat["tsnr2_elg"] = 90.0 * teff
    cat["tsnr2_lrg"] = 80.0 * teff


# ==================================================================================================
# FITS and Parquet writers
# ==================================================================================================
def _primary(plan: _PixelPlan, release: str, seed: int, extra: list[tuple[object, ...]]) -> fits.PrimaryHDU:
    """PRIMARY header of a healpix coadd or redrock file (no dates or checksums: reproducible bytes)."""
    hdu = fits.PrimaryHDU()
    cards = [
        *extra,
        ("SPGRP", "healpix"),
        ("SPGRPVAL", plan.healpix),
        ("HPXPIXEL", plan.healpix),
        ("HPXNSIDE", NSIDE),
        ("HPXNEST", True),
        ("SURVEY", SURVEY),
        ("PROGRAM", plan.program),
        ("DEPNAM00", "desi-qad-demo"),
        ("DEPVER00", f"{GENERATOR} v{GENERATOR_VERSION}"),
        ("DEPNAM01", "SPECPROD"),
        ("DEPVER01", release),
        ("DEMOSEED", seed, "seed of the synthetic demo release"),
    ]
    for card in cards:
        hdu.header[card[0]] = card[1:] if len(card) > 2 else card[1]
    hdu.header["COMMENT"] = f"Synthetic demo data written by {GENERATOR}; not a DESI observation."
    return hdu


def _table(name: str, columns: list[tuple[str, str, np.ndarray]]) -> fits.BinTableHDU:
    return fits.BinTableHDU.from_columns([fits.Column(name=c, format=f, array=a) for c, f, a in columns], name=name)


def _fibermap(pixel: _Pixel, plan: _PixelPlan) -> fits.BinTableHDU:
    cat = pixel.cat
    n = len(cat["role"])
    tgt = ~np.isin(cat["role"], ("unassigned", "sky"))
    assigned = cat["role"] != "unassigned"
    zeros = np.zeros(n)
    is_galaxy = cat["role"] == "galaxy"
    ivar = {"g": 600.0, "r": 250.0, "z": 60.0}
    fiber_frac = np.where(is_galaxy, 0.45, cat["psf_to_fiber"])
    bright = plan.program == "bright"
    flux = {b: np.where(tgt, cat[f"flux_{b}"], 0.0) for b in BANDS}
    cols = [
        ("TARGETID", "K", cat["targetid"]),
        ("COADD_FIBERSTATUS", "J", cat["fiberstatus"]),
        ("TARGET_RA", "D", cat["ra"]),
        ("TARGET_DEC", "D", cat["dec"]),
        ("PMRA", "E", zeros),
        ("PMDEC", "E", zeros),
        ("REF_EPOCH", "E", np.where(tgt, 2015.5, 0.0)),
        ("FA_TARGET", "K", cat["desi_target"]),
        ("FA_TYPE", "B", np.select([tgt, cat["role"] == "sky"], [1, 4], 0)),
        ("OBJTYPE", "3A", np.select([tgt, cat["role"] == "sky"], ["TGT", "SKY"], "")),
        ("SUBPRIORITY", "D", np.where(assigned, cat["subpriority"], 0.0)),
        ("OBSCONDITIONS", "J", np.where(assigned, OBSCONDITIONS[plan.program], 0)),
        ("RELEASE", "I", np.where(assigned, cat["release"], 0)),
        ("BRICKNAME", "8A", np.where(assigned, cat["brickname"], "")),
        ("BRICKID", "J", np.where(assigned, cat["brickid"], 0)),
        ("BRICK_OBJID", "J", np.where(assigned, cat["objid"], 0)),
        ("MORPHTYPE", "4A", np.select([is_galaxy, tgt], [np.where(cat["is_elg"], "EXP", "DEV"), "PSF"], "")),
        ("EBV", "E", np.where(assigned, cat["ebv_mw"], 0.0)),
        *[(f"FLUX_{b.upper()}", "E", flux[b]) for b in BANDS],
        *[(f"FLUX_IVAR_{b.upper()}", "E", np.where(tgt, ivar[b], 0.0)) for b in BANDS],
        *[(f"FIBERFLUX_{b.upper()}", "E", flux[b] * fiber_frac) for b in BANDS],
        ("MASKBITS", "I", np.zeros(n, dtype=np.int16)),
        ("PHOTSYS", "1A", np.where(tgt, cat["photsys"], "")),
        ("PRIORITY_INIT", "K", np.select([is_galaxy & tgt, tgt, cat["role"] == "sky"], [3200, 3400, -1], 0)),
        ("NUMOBS_INIT", "K", np.select([is_galaxy & tgt, tgt, cat["role"] == "sky"], [2, 4, -1], 0)),
        ("DESI_TARGET", "K", cat["desi_target"]),
        ("BGS_TARGET", "K", np.where(tgt & bright, BGS_BRIGHT, 0)),
        ("MWS_TARGET", "K", np.zeros(n, dtype=np.int64)),
        ("SCND_TARGET", "K", np.zeros(n, dtype=np.int64)),
        ("PLATE_RA", "D", cat["ra"]),
        ("PLATE_DEC", "D", cat["dec"]),
        ("COADD_NUMEXP", "I", cat["nexp"]),
        ("COADD_EXPTIME", "E", cat["exptime"]),
        ("COADD_NUMNIGHT", "I", cat["numnight"]),
        ("COADD_NUMTILE", "I", cat["numtile"]),
        ("MEAN_FIBER_RA", "D", cat["ra"]),
        ("MEAN_FIBER_DEC", "D", cat["dec"]),
        ("MEAN_PSF_TO_FIBER_SPECFLUX", "E", np.where(assigned, cat["psf_to_fiber"], 0.0)),
    ]
    return _table("FIBERMAP", cols)


def _exp_fibermap(pixel: _Pixel) -> fits.BinTableHDU:
    formats = {"TARGETID": "K", "NIGHT": "J", "EXPID": "J", "MJD": "D", "TILEID": "J", "EXPTIME": "D"}
    formats |= {"PETAL_LOC": "I", "DEVICE_LOC": "J", "LOCATION": "K", "FIBER": "J", "FIBERSTATUS": "J"}
    formats |= {"FIBER_RA": "D", "FIBER_DEC": "D"}
    return _table("EXP_FIBERMAP", [(k, formats[k], v) for k, v in pixel.exposures.items()])


def _coadd_hdus(pixel: _Pixel, plan: _PixelPlan, release: str, seed: int) -> fits.HDUList:
    hdus: list[fits.hdu.base.ExtensionHDU] = [_fibermap(pixel, plan), _exp_fibermap(pixel)]
    for arm, d in pixel.arms.items():
        hdus.append(fits.ImageHDU(d["wave"], name=f"{arm}_WAVELENGTH"))
        hdus[-1].header["BUNIT"] = "Angstrom"
        hdus.append(fits.ImageHDU(d["flux"].astype(np.float32), name=f"{arm}_FLUX"))
        hdus[-1].header["BUNIT"] = FLUX_UNIT
        hdus.append(fits.ImageHDU(d["ivar"].astype(np.float32), name=f"{arm}_IVAR"))
        hdus[-1].header["BUNIT"] = IVAR_UNIT
        hdus.append(fits.ImageHDU(d["mask"], name=f"{arm}_MASK"))  # uint32 -> int32 + BZERO
        hdus.append(fits.ImageHDU(d["resolution"], name=f"{arm}_RESOLUTION"))
    cat = pixel.cat
    scores = [("TARGETID", "K", cat["targetid"])]
    for arm in ARMS:
        scores += [
            (f"INTEG_COADD_FLUX_{arm}", "E", cat[f"integ_flux_{arm}"]),
            (f"MEDIAN_COADD_FLUX_{arm}", "E", cat[f"median_flux_{arm}"]),
            (f"MEDIAN_COADD_SNR_{arm}", "E", cat[f"median_snr_{arm}"]),
        ]
    scores += [("TSNR2_QSO", "E", cat["tsnr2_qso"]), ("TSNR2_LYA", "E", cat["tsnr2_lya"])]
    hdus.append(_table("SCORES", scores))
    return fits.HDUList([_primary(plan, release, seed, []), *hdus])


def _redrock_hdus(pixel: _Pixel, plan: _PixelPlan, release: str, seed: int) -> fits.HDUList:
    templates: list[tuple[object, ...]] = [("RRVER", "0.17.0", "DR1 redrock format; not a redrock run")]
    for i, (name, version) in enumerate(REDROCK_TEMPLATES):
        templates += [(f"TEMNAM{i:02d}", name), (f"TEMVER{i:02d}", version)]
    rr = pixel.redshifts
    formats = {"TARGETID": "K", "Z": "D", "ZERR": "D", "ZWARN": "K", "CHI2": "D", "COEFF": "10D"}
    formats |= {"NPIXELS": "K", "SPECTYPE": "6A", "SUBTYPE": "20A", "NCOEFF": "K", "DELTACHI2": "D"}
    redshifts = _table("REDSHIFTS", [(k, formats[k], rr[k]) for k in formats])
    cat = pixel.cat
    tsnr2 = _table(
        "TSNR2",
        [("TARGETID", "K", cat["targetid"])]
        + [(f"TSNR2_{k.upper()}", "E", cat[f"tsnr2_{k}"]) for k in ("elg", "lrg", "qso", "lya")],
    )
    return fits.HDUList(
        [
            _primary(plan, release, seed, templates),
            redshifts,
            _fibermap(pixel, plan),
            _exp_fibermap(pixel),
            tsnr2,
        ]
    )


def _write_fits(hdul: fits.HDUList, path: Path) -> None:
    """Write atomically, so a reader never sees a partial file."""
    write_atomic(path, lambda tmp: hdul.writeto(tmp, overwrite=True))


def _truth_table(pixel: _Pixel, plan: _PixelPlan, file: str) -> pa.Table:
    """One row per FIBERMAP row: what it is and what the reader must do with it."""
    cat, rr = pixel.cat, pixel.redshifts
    role = cat["role"]
    n = len(role)
    broken = np.isin(role, list(QUARANTINE_ROWS))
    status = np.where(broken, "quarantined", np.where(np.isin(role, list(FILTER_REASON)), "filtered", "kept"))
    reason = np.array([FILTER_REASON.get(r, r if r in QUARANTINE_ROWS else "") for r in role])
    true_class = np.array([TRUE_CLASS.get(r, "broken") for r in role])
    has_anomaly = cat["anomaly"] != ""
    no_flux = np.isin(role, ("sky", "unassigned"))
    objtype = np.select([role == "unassigned", role == "sky"], ["", "SKY"], "TGT")
    return pa.table(
        {
            "TARGETID": pa.array(cat["targetid"], pa.int64()),
            "file": pa.array([file] * n, pa.string()),
            "row": pa.array(np.arange(n), pa.int32()),
            "healpix": pa.array(np.full(n, plan.healpix), pa.int32()),
            "survey": pa.array([SURVEY] * n, pa.string()),
            "program": pa.array([plan.program] * n, pa.string()),
            "objtype": pa.array(objtype, pa.string()),
            "true_class": pa.array(true_class, pa.string()),
            "z_true": pa.array(cat["z"], pa.float64()),
            "z_catalog": pa.array(rr["Z"], pa.float64()),
            "spectype": pa.array(rr["SPECTYPE"], pa.string()),
            "zwarn": pa.array(rr["ZWARN"], pa.int64()),
            "anomaly_class": pa.array(cat["anomaly"].tolist(), pa.string(), mask=~has_anomaly),
            "anomaly_strength": pa.array(cat["strength"], pa.float64(), mask=~has_anomaly),
            "anomaly_detail": pa.array(cat["details"].tolist(), pa.string(), mask=~has_anomaly),
            "expected_status": pa.array(status, pa.string()),
            "expected_reason": pa.array(reason, pa.string()),
            "r_mag": pa.array(cat["rmag"], pa.float32(), mask=no_flux | ~np.isfinite(cat["rmag"])),
            "median_snr": pa.array(cat["median_snr"], pa.float32(), mask=~np.isfinite(cat["median_snr"])),
        }
    )


# ==================================================================================================
# command line
# ==================================================================================================
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the embedded DESI-format demo release.")
    parser.add_argument("root", type=Path, help="archive root (gets spectro/redux/<release>/...)")
    parser.add_argument("--release", default="demo")
    parser.add_argument("--n-pixels", type=int, default=8)
    parser.add_argument("--targets-per-pixel", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--anomaly-fraction", type=float, default=0.05)
    args = parser.parse_args(argv)
    demo = write_demo_release(
        args.root,
        release=args.release,
        n_pixels=args.n_pixels,
        targets_per_pixel=args.targets_per_pixel,
        seed=args.seed,
        anomaly_fraction=args.anomaly_fraction,
    )
    print(f"wrote {len(demo.coadd_paths)} pixels of release {demo.release!r} under {demo.root}")
    print(f"truth: {demo.truth_path}")


if __name__ == "__main__":
    main()
