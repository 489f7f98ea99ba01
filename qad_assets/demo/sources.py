"""The astrophysical sources: quasars (qsogen), galaxies, stars, dust, the IGM, and their photometry."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import expit

from qad_assets.demo.plan import Columns
from qad_assets.science.spectra.arms import BRZ_WAVE
from qad_assets.science.spectra.rest_frame import C_KMS

BANDS = {"g": (4000.0, 5500.0), "r": (5600.0, 7200.0), "z": (8300.0, 9800.0)}  # approximate DECam
DATA_DIR = Path(__file__).parent / "data"


# ---- astrophysics constants ----------------------------------------------------------------------
LYA, LYB, LYG, LYLIMIT = 1215.67, 1025.72, 972.54, 911.75
QSOGEN = {"plslp1": -0.349, "plslp2": 0.593, "plbrk1": 3880.0, "plstep": -1.0, "plbrk3": 1200.0}
#: qsogen's luminosity dependence (config.py of Temple et al. 2021): emission-line type
#: (M_i − BENORM)·BESLOPE, the Baldwin effect and the C IV blueshift in one; host fraction FRAGAL of the
#: 4000–5000 Å light at M_i = −23, scaling as L^(GPLIND − 1)
BESLOPE, BENORM, FRAGAL, GPLIND = 0.183, -27.0, 0.244, 0.684
LINE_TYPE_SCATTER = 0.4  # line type at fixed luminosity (Rankine et al. 2020: a wide C IV space at any L)
#: extra Baldwin effect on every EW, ∝ L^-BALDWIN_SLOPE around M_i = BENORM: with qsogen's line type, the
#: C IV EW falls as about L^-0.15, inside the -0.1..-0.2 range of published slopes (Dietrich et al. 2002)
BALDWIN_SLOPE = 0.1
LINE_WIDTHS_KMS = (0.0, 1000.0, 2000.0)  # extra Gaussian broadening of the line templates, σ
H0_KMS_MPC, OMEGA_M = 70.0, 0.3
QSO_Z_PDF = (  # (z, relative density): DESI-like, peaking at z ~ 1.5-2.5
    np.array([0.3, 0.6, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]),
    np.array([0.25, 0.55, 0.85, 1.0, 1.0, 0.8, 0.4, 0.15, 0.04]),
)
FOREST_SIGMA = 1.4  # lognormal width of the Lyα optical depth
FOREST_SMOOTH_PIX = 1.0  # correlation length of the forest field (~60 km/s per pixel)
BAL_LINES = np.array([(1549.06, 1.0), (1396.76, 0.7), (1240.14, 0.8), (1215.67, 0.5)])  # CIV, SiIV, NV, Lyα
LOBAL_LINES = np.array([(2798.75, 0.8), (1857.40, 0.7), (1670.79, 0.5)])  # Mg II, Al III, Al II: (Å, depth)
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


@lru_cache(maxsize=1)
def templates() -> Columns:
    with np.load(DATA_DIR / "demo_templates.npz") as data:
        return {key: data[key] for key in data.files}


def _star_index(kind: str, quantile: int = 1) -> int:
    """Index of a stellar archetype: ``quantile`` 0/1/2 = bluer/median/redder of that type."""
    return int(np.flatnonzero(templates()["star_type"] == kind)[quantile])


def _interp_star(which: np.ndarray, rest_wave: np.ndarray) -> np.ndarray:
    """Stellar archetype ``which[i]`` at ``rest_wave[i]`` (linear, 1 Å grid, clamped at the ends)."""
    t = templates()
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


@lru_cache(maxsize=1)
def _broadened_lines() -> dict[str, np.ndarray]:
    """qsogen's median, high-EW and high-blueshift line templates, each broadened by LINE_WIDTHS_KMS
    (Gaussian in velocity, flux kept), as (n_widths, n_wave) on the template grid."""
    t = templates()
    wave = t["qsogen_wave"]
    step = 1e-4  # ln λ, 30 km/s: finer than the template anywhere
    grid = np.exp(np.arange(np.log(wave[0]), np.log(wave[-1]), step))
    out = {}
    for name in ("qsogen_median", "qsogen_high_ew", "qsogen_high_blueshift"):
        fine = np.interp(grid, wave, t[name])
        out[name] = np.array(
            [np.interp(wave, grid, gaussian_filter1d(fine, max(v / C_KMS / step, 1e-3))) for v in LINE_WIDTHS_KMS]
        )
    return out


def _qso_line_ratio(rest_wave: np.ndarray, p: Columns) -> np.ndarray:
    """Emission lines over continuum (qsogen EW scaling).

    ``line_type`` > 0 moves towards the strong, peaky high-EW template, < 0 towards the weak,
    blueshifted one (qsogen ``emline_type``); ``line_scale`` multiplies every equivalent width;
    ``line_width`` in [0, 2] broadens the lines by up to LINE_WIDTHS_KMS[-1].
    """
    t = templates()
    wave = t["qsogen_wave"]
    lines = _broadened_lines()
    pos = np.clip(p["line_type"], 0, None)[:, None]
    neg = np.clip(-p["line_type"], 0, None)[:, None]
    width_weight = np.clip(1 - np.abs(p["line_width"][None, :] - np.arange(len(LINE_WIDTHS_KMS))[:, None]), 0, 1)
    total = np.zeros(rest_wave.shape)
    for k in range(len(LINE_WIDTHS_KMS)):
        if not width_weight[k].any():
            continue
        med = np.interp(rest_wave, wave, lines["qsogen_median"][k], left=0.0, right=0.0)
        high_ew = np.interp(rest_wave, wave, lines["qsogen_high_ew"][k], left=0.0, right=0.0)
        blue = np.interp(rest_wave, wave, lines["qsogen_high_blueshift"][k], left=0.0, right=0.0)
        total += width_weight[k][:, None] * (med + pos * (high_ew - med) + neg * (blue - med))
    cont = np.interp(rest_wave, wave, t["qsogen_continuum"])
    return p["line_scale"][:, None] * total / cont


def absolute_mag(rmag: np.ndarray, z: np.ndarray) -> np.ndarray:
    """M_i(z = 2), SDSS DR16Q's convention, from r: flat ΛCDM (H0 = 70, Ωm = 0.3), an f_ν ∝ ν^-0.5
    K-correction normalised at z = 2 (Richards et al. 2006), r − i ≈ 0.15 (typical quasar colour)."""
    zg = np.linspace(0.0, 6.0, 601)
    inv_e = 1 / np.sqrt(OMEGA_M * (1 + zg) ** 3 + 1 - OMEGA_M)
    comoving = np.concatenate([[0.0], np.cumsum(0.5 * (inv_e[1:] + inv_e[:-1]) * np.diff(zg))]) * C_KMS / H0_KMS_MPC
    d_l = np.interp(z, zg, comoving) * (1 + np.asarray(z))  # Mpc
    distance_modulus = 5 * np.log10(np.maximum(d_l, 1e-3) * 1e5)
    k_correction = -2.5 * 0.5 * np.log10((1 + np.asarray(z)) / 3.0)
    return np.asarray(rmag) - 0.15 - distance_modulus - k_correction


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


def quasar_params(rng: np.random.Generator, z: np.ndarray, rmag: np.ndarray) -> Columns:
    """Per-quasar continuum slope, line family, strength and width, host fraction; no dust, no BAL.

    The line family follows luminosity as in qsogen (Baldwin effect, C IV blueshift and asymmetry
    growing with L) with LINE_TYPE_SCATTER at fixed L; the host (z < 1) scales as qsogen's.
    """
    n = len(z)
    m_i = absolute_mag(rmag, z)
    host = FRAGAL / (1 - FRAGAL) * (10 ** (-0.4 * (m_i + 23.0))) ** (GPLIND - 1)
    return {
        "dslope": rng.normal(0.0, 0.3, n),
        "line_type": np.clip(BESLOPE * (m_i - BENORM) + rng.normal(0.0, LINE_TYPE_SCATTER, n), -2.0, 3.0),
        "line_scale": 0.9936 * rng.lognormal(0.0, 0.2, n) * 10 ** (0.4 * BALDWIN_SLOPE * (m_i - BENORM)),
        "line_width": rng.uniform(0.0, len(LINE_WIDTHS_KMS) - 1.0, n),
        "host_frac": np.where(z < 1.0, host / (1 + host), 0.0),
        "ebv": np.zeros(n),
        "bal_depth": np.zeros(n),
        "bal_vmin": np.zeros(n),
        "bal_width": np.zeros(n),
        "lobal": np.zeros(n, dtype=bool),
    }


def quasar_spectra(rng: np.random.Generator, z: np.ndarray, p: Columns) -> np.ndarray:
    """Observed-frame quasar shapes on BRZ_WAVE (arbitrary normalisation), shape (n, 7781)."""
    rest = BRZ_WAVE[None, :] / (1 + z[:, None])
    cont = _qso_continuum(rest, p["dslope"])
    flux = cont * (1 + _qso_line_ratio(rest, p))
    host_at_4400 = _interp_star(np.array([_star_index("K")]), np.array([[4400.0]]))[0, 0]
    qso_at_4400 = _qso_continuum(np.array([[4400.0]]), p["dslope"])[:, 0]
    host_norm = p["host_frac"] / (1 - p["host_frac"]) * qso_at_4400 / host_at_4400
    flux += host_norm[:, None] * _interp_star(np.full(len(z), _star_index("K")), rest)
    flux *= 10 ** (-0.4 * p["ebv"][:, None] * smc_extinction(rest))
    flux *= _bal_transmission(rest, p)
    return np.clip(flux, 0.0, None) * _igm_transmission(rng, BRZ_WAVE, z)


def _bal_transmission(rest: np.ndarray, p: Columns) -> np.ndarray:
    """Broad absorption troughs: smooth-edged boxes in outflow velocity blueward of C IV, Si IV, N V and
    Lyα (HiBAL), and of Mg II, Al III and Al II as well for a LoBAL (``lobal``), each line at its
    relative depth times ``bal_depth``."""
    trans = np.ones_like(rest)
    has = p["bal_depth"] > 0
    if not has.any():
        return trans
    r = rest[has]
    vlo, d = p["bal_vmin"][has, None], p["bal_depth"][has, None]
    vhi = vlo + p["bal_width"][has, None]
    low = p["lobal"][has, None]
    for lines, on in ((BAL_LINES, True), (LOBAL_LINES, low)):
        for line, rel_depth in lines:
            v = C_KMS * (1 - r / line)
            profile = expit((v - vlo) / 300.0) * expit((vhi - v) / 300.0)
            trans[has] *= 1 - rel_depth * d * profile * on
    return trans


def galaxy_spectra(rng: np.random.Generator, z: np.ndarray, is_elg: np.ndarray) -> np.ndarray:
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


def star_spectra(which: np.ndarray, rv_kms: np.ndarray) -> np.ndarray:
    """Stellar archetype shapes Doppler-shifted by ``rv_kms``, shape (n, 7781)."""
    return _interp_star(which, BRZ_WAVE[None, :] / (1 + rv_kms[:, None] / C_KMS))


def band_nmgy(flux: np.ndarray, band: str) -> np.ndarray:
    """Synthetic AB flux in nanomaggies through a top-hat band (photon counting)."""
    lo, hi = BANDS[band]
    sel = (lo <= BRZ_WAVE) & (hi >= BRZ_WAVE)
    w = BRZ_WAVE[sel]
    fnu = (flux[:, sel] * w).sum(axis=1) / (2.99792458e18 / w).sum() * 1e-17
    return fnu / 3.631e-29


def scale_to_rmag(flux: np.ndarray, rmag: np.ndarray) -> np.ndarray:
    return flux * (10 ** (-0.4 * (rmag - 22.5)) / np.maximum(band_nmgy(flux, "r"), 1e-30))[:, None]


def draw_qso_z(rng: np.random.Generator, n: int, zmin: np.ndarray | float = 0.3) -> np.ndarray:
    """Quasar redshifts from the DESI-like QSO_Z_PDF, truncated below at ``zmin``."""
    zg = np.linspace(QSO_Z_PDF[0][0], QSO_Z_PDF[0][-1], 400)
    cdf = np.cumsum(np.interp(zg, *QSO_Z_PDF))
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    lo = np.interp(zmin, zg, cdf)
    return np.interp(lo + (1 - lo) * rng.random(n), cdf, zg)


def draw_mag(rng: np.random.Generator, n: int, bright: float, faint: float, slope: float = 0.35) -> np.ndarray:
    """Magnitudes with number counts rising as 10^(slope m) between ``bright`` and ``faint``."""
    u = rng.random(n)
    lo = 10 ** (-slope * (faint - bright))
    return faint + np.log10(lo + u * (1 - lo)) / slope
