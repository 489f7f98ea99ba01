"""Absorbers along a quasar's line of sight: Lyman-limit systems and DLAs, intervening metal doublets,
and associated narrow absorbers near the quasar's own redshift.

Why: real quasar spectra are cut by absorbers the detector must learn to call normal; without them, any
narrow dip or damped trough is "anomalous". Incidences and strengths are the literature's (docs/realism.md):

- H I systems with N_HI ≥ 10^17.2 cm⁻² (Lyman-limit systems; DLAs above 10^20.3): ℓ(z) = 1.0·((1+z)/3.5)^1.8
  per unit redshift (O'Meara et al. 2013 at z ≈ 2.8, Prochaska, O'Meara & Worseck 2010 at z ≈ 3.7), column
  densities from one power law f(N) ∝ N^-1.15 up to 10^22 (flatter among LLS, steeper among DLAs in truth),
  which puts DLAs at ℓ ≈ 0.17 at z = 2.5 (dN/dX ≈ 0.05, Noterdaeme et al. 2012).
  Each is a Voigt profile in Lyα, Lyβ, Lyγ (b = 30 km/s) plus the Lyman continuum below its 912 Å.
- Mg II (+ Fe II, Mg I) systems: dN/dz(W_2796 > 0.3 Å) = 0.7, W_r − 0.3 exponential with W* = 0.7 Å
  (Nestor, Turnshek & Rao 2005); C IV (+ Si IV): dN/dz(W_1548 > 0.3 Å) = 0.6, W* = 0.45 Å (Cooksey et al. 2013).
- Associated absorbers in ``associated_fraction`` of quasars (≈ 25 %; Vestergaard 2003): C IV, N V, Si IV and
  Lyα within −3000…+1000 km/s of z_qso, W_1548 − 0.2 exponential with W* = 0.6 Å.

Metal lines are unresolved at DESI's resolution: each is a Gaussian in flux whose area is the equivalent
width, integrated over the pixel, no deeper than 95 % (a saturated line widens instead); doublet ratios
go from 2 (optically thin) towards 1 (saturated) as the line strengthens.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf, wofz

from qad_assets.demo.settings import DemoSettings
from qad_assets.science.spectra.arms import BRZ_WAVE, WAVE_STEP
from qad_assets.science.spectra.rest_frame import C_KMS

#: H I Lyman series (Morton 2003): rest Å, oscillator strength, damping constant Γ (s⁻¹)
HI_LINES = ((1215.670, 0.4164, 6.265e8), (1025.722, 0.07912, 1.897e8), (972.537, 0.02900, 8.127e7))
LYMAN_LIMIT = 911.753
SIGMA_LL = 6.304e-18  # cm², H I photo-ionisation cross-section at the Lyman limit
HI_B_KMS = 30.0
LOG_N_RANGE, LOG_N_SLOPE = (17.2, 22.0), 1.15
LLS_INCIDENCE = (1.0, 3.5, 1.8)  # ℓ(z) = a·((1 + z)/b)^c for N_HI ≥ 10^17.2
MIN_HI_Z = 1.9  # below, neither Lyα nor the Lyman limit of the system reaches 3600 Å

#: metal systems: (lines, dN/dz above W_MIN, W*); a line is (rest Å, W relative to the leading line,
#: whether it is the weaker member of a doublet with the line before it, whose W it then takes / ratio)
MGII_SYSTEM = (
    ((2796.354, 1.0, False), (2803.531, 1.0, True), (2600.172, 0.6, False), (2586.650, 0.3, False))
    + ((2382.765, 0.55, False), (2344.214, 0.35, False), (2374.461, 0.2, False), (2852.964, 0.2, False)),
    0.7,
    0.7,
)
CIV_SYSTEM = (((1548.204, 1.0, False), (1550.781, 1.0, True), (1393.760, 0.4, False), (1402.773, 0.4, True)), 0.6, 0.45)
ASSOCIATED_LINES = (
    (1548.204, 1.0, False),
    (1550.781, 1.0, True),
    (1238.821, 0.8, False),
    (1242.804, 0.8, True),
    (1393.760, 0.3, False),
    (1402.773, 0.3, True),
    (1215.670, 1.0, False),
)
W_MIN = 0.3  # Å, rest equivalent width above which the incidences hold
W_SATURATE = 0.5  # Å: doublet ratio 1 + exp(-W/W_SATURATE)
ASSOCIATED_W = (0.2, 0.6)  # minimum and W* of the associated C IV
ASSOCIATED_V = (-3000.0, 1000.0)  # km/s relative to z_qso
PROXIMITY_KMS = 5000.0  # intervening systems stay this far below z_qso
MAX_DEPTH = 0.95
HALF_WINDOW = 12  # pixels either side of a metal line's centre


def _poisson_draws(rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
    """Row index of each draw: ``Poisson(mean[i])`` copies of row i."""
    return np.repeat(np.arange(mean.size), rng.poisson(mean))


def hi_systems(rng: np.random.Generator, z_qso: np.ndarray, rate: float) -> tuple[np.ndarray, ...]:
    """(row, z_abs, log N_HI) of the H I systems in front of each quasar."""
    z_hi = (1 + z_qso) * np.exp(-PROXIMITY_KMS / C_KMS) - 1
    a, b, c = LLS_INCIDENCE
    integral = lambda z: a * b / (c + 1) * ((1 + z) / b) ** (c + 1)  # noqa: E731 - ∫ℓ dz
    lo = np.full(z_qso.shape, MIN_HI_Z)
    mean = rate * np.clip(integral(np.maximum(z_hi, lo)) - integral(lo), 0, None)
    rows = _poisson_draws(rng, mean)
    u = rng.random(rows.size)  # invert the cumulative ℓ between MIN_HI_Z and z_hi
    cum = integral(lo[rows]) + u * (integral(np.maximum(z_hi, lo)[rows]) - integral(lo[rows]))
    z_abs = b * (cum * (c + 1) / (a * b)) ** (1 / (c + 1)) - 1
    return rows, z_abs, draw_log_column(rng, rows.size)


def draw_log_column(rng: np.random.Generator, n: int) -> np.ndarray:
    """log10 N_HI from f(N) ∝ N^-LOG_N_SLOPE over LOG_N_RANGE."""
    (lo, hi), k = LOG_N_RANGE, 1 - LOG_N_SLOPE
    u = rng.random(n)
    return np.log10((10 ** (k * lo) + u * (10 ** (k * hi) - 10 ** (k * lo))) ** (1 / k))


def hi_optical_depth(wave: np.ndarray, z_abs: np.ndarray, log_n: np.ndarray, b_kms: float = HI_B_KMS) -> np.ndarray:
    """Optical depth (n, nwave) of H I systems: Voigt Lyα, Lyβ, Lyγ and the Lyman continuum."""
    rest = wave[None, :] / (1 + z_abs[:, None])
    column = 10 ** log_n[:, None]
    tau = np.zeros(rest.shape)
    for lam0, f, gamma in HI_LINES:
        u = (rest / lam0 - 1) * C_KMS / b_kms
        a = gamma * lam0 * 1e-8 / (4 * np.pi * b_kms * 1e5)
        voigt = a / (np.sqrt(np.pi) * np.maximum(u**2, 1e-12))  # the damping wing, exact to 1e-3 beyond |u| = 20
        core = np.abs(u) < 20
        voigt[core] = wofz(u[core] + 1j * a).real
        tau += 1.497e-15 * column * f * lam0 / b_kms * voigt
    return tau + np.where(rest < LYMAN_LIMIT, SIGMA_LL * column * (rest / LYMAN_LIMIT) ** 3, 0.0)


def metal_systems(
    rng: np.random.Generator, z_qso: np.ndarray, rate: float, system: tuple, z_min: float
) -> tuple[np.ndarray, ...]:
    """(row, z_abs, W_r of the leading line) of one kind of intervening metal system."""
    lines, incidence, w_star = system
    z_max = np.minimum((1 + z_qso) * np.exp(-PROXIMITY_KMS / C_KMS) - 1, BRZ_WAVE[-1] / lines[0][0] - 1)
    rows = _poisson_draws(rng, rate * incidence * np.clip(z_max - z_min, 0, None))
    z_abs = z_min + rng.random(rows.size) * (z_max[rows] - z_min)
    return rows, z_abs, W_MIN + rng.exponential(w_star, rows.size)


def _line_list(lines: tuple, z_abs: np.ndarray, w_lead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observed centre and observed equivalent width of every line of every system, shape (n, nlines)."""
    centre = np.array([lam for lam, _, _ in lines])[None, :] * (1 + z_abs[:, None])
    ratio = 1 + np.exp(-w_lead / W_SATURATE)  # doublet ratio: 2 thin, → 1 saturated
    width = np.empty(centre.shape)
    for k, (_, rel, weak) in enumerate(lines):
        width[:, k] = width[:, k - 1] / ratio if weak else rel * w_lead
    return centre, width * (1 + z_abs[:, None])


def narrow_log_transmission(
    n: int, rows: np.ndarray, centre: np.ndarray, ew: np.ndarray, sigma_kms: np.ndarray
) -> np.ndarray:
    """log transmission (n, NPIX) of unresolved lines: a pixel-integrated Gaussian dip of area ``ew`` (Å),
    width ``sigma_kms``, at most MAX_DEPTH deep (wider instead). ``rows``/``centre``/``ew``/``sigma_kms``:
    one entry per line."""
    sigma = np.maximum(centre * sigma_kms / C_KMS, ew / (MAX_DEPTH * np.sqrt(2 * np.pi)))
    first = np.rint((centre - BRZ_WAVE[0]) / WAVE_STEP).astype(np.int64)
    cols = first[:, None] + np.arange(-HALF_WINDOW, HALF_WINDOW + 1)[None, :]
    inside = (cols >= 0) & (cols < BRZ_WAVE.size)
    lo = BRZ_WAVE[0] + (cols - 0.5) * WAVE_STEP - centre[:, None]
    scale = np.sqrt(2) * sigma[:, None]
    dip = ew[:, None] / WAVE_STEP * 0.5 * (erf((lo + WAVE_STEP) / scale) - erf(lo / scale))
    flat = (rows[:, None] * BRZ_WAVE.size + cols)[inside]
    log_t = np.log(np.clip(1 - dip[inside], 1 - MAX_DEPTH, 1))
    return np.bincount(flat, log_t, minlength=n * BRZ_WAVE.size).reshape(n, BRZ_WAVE.size)


def line_of_sight(rng: np.random.Generator, z_qso: np.ndarray, settings: DemoSettings) -> tuple[np.ndarray, np.ndarray]:
    """Transmission (n, NPIX) of everything in front of each quasar, and a description per quasar
    ('' when nothing was drawn): ``DLA z=… logN=…``, ``LLS …``, ``MgII z=… W=…``, ``CIV …``, ``assoc …``."""
    n = z_qso.size
    notes: list[list[str]] = [[] for _ in range(n)]
    rows, z_hi, log_n = hi_systems(rng, z_qso, settings.absorber_rate)
    tau = np.zeros((n, BRZ_WAVE.size))
    np.add.at(tau, rows, hi_optical_depth(BRZ_WAVE, z_hi, log_n))
    for r, z, ln in zip(rows, z_hi, log_n, strict=True):
        notes[r].append(f"{'DLA' if ln >= 20.3 else 'LLS'} z={z:.4f} logN={ln:.2f}")

    line_rows, centres, widths, sigmas = [], [], [], []
    for name, system, z_min in (
        ("MgII", MGII_SYSTEM, BRZ_WAVE[0] / MGII_SYSTEM[0][0][0] - 1),
        ("CIV", CIV_SYSTEM, BRZ_WAVE[0] / CIV_SYSTEM[0][0][0] - 1),
    ):
        r, z, w = metal_systems(rng, z_qso, settings.absorber_rate, system, z_min)
        centre, ew = _line_list(system[0], z, w)
        line_rows.append(np.repeat(r, centre.shape[1]))
        centres.append(centre.ravel())
        widths.append(ew.ravel())
        sigmas.append(np.repeat(rng.uniform(15.0, 40.0, r.size) + 40.0 * w, centre.shape[1]))
        for row, zz, ww in zip(r, z, w, strict=True):
            notes[row].append(f"{name} z={zz:.4f} W={ww:.2f}")

    has = np.flatnonzero(rng.random(n) < settings.associated_fraction)
    v = rng.uniform(*ASSOCIATED_V, has.size)
    z_assoc = (1 + z_qso[has]) * np.exp(v / C_KMS) - 1
    w_assoc = ASSOCIATED_W[0] + rng.exponential(ASSOCIATED_W[1], has.size)
    centre, ew = _line_list(ASSOCIATED_LINES, z_assoc, w_assoc)
    line_rows.append(np.repeat(has, centre.shape[1]))
    centres.append(centre.ravel())
    widths.append(ew.ravel())
    sigmas.append(np.repeat(rng.uniform(20.0, 80.0, has.size), centre.shape[1]))
    for row, vv, ww in zip(has, v, w_assoc, strict=True):
        notes[row].append(f"assoc dv={vv:+.0f} W={ww:.2f}")

    log_t = narrow_log_transmission(
        n, np.concatenate(line_rows), np.concatenate(centres), np.concatenate(widths), np.concatenate(sigmas)
    )
    return np.exp(log_t - tau), np.array(["; ".join(parts) for parts in notes], dtype=object)
