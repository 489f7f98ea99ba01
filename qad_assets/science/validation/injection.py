"""Synthetic anomalies injected into normal rest-frame quasar spectra, to measure what a detector finds.

The hosts are held-out normal quasars of a ``normalized_spectra`` table (flux, ivar on the rest grid,
with their redshift), so the noise, coverage and intrinsic diversity are the release's own; only the
anomaly is synthetic. Each class is a physical effect, parametrised by a strength in (0, 1] (1 = an
obvious case, 0.25 a subtle one):

* ``bal``: broad absorption troughs blueward of C IV, Si IV and N V (outflow 0–5000 km/s onset,
  2000–20000 km/s wide, depth 0.1–0.9 of the continuum);
* ``reddening``: SMC-like dust at the quasar redshift, A_λ/E(B−V) = 1.39 λ_µm^−1.2 (Prevot et al. 1984
  as fitted by Richards et al. 2003 / Hopkins et al. 2004), E(B−V) up to 0.3;
* ``weak_lines`` / ``extreme_lines``: the broad-line flux above a local straight continuum (the side
  bands of :data:`~qad_assets.science.spectra.features.LINES`) scaled by 1 − 0.9·s / 1 + 3·s;
* ``wrong_redshift``: the spectrum de-redshifted with (1 + z_cat) = (1 + z)(1 ± 0.3·s): a shift in
  log λ, the rest coverage moving with it;
* ``superposed``: a second normal quasar of the pool at a redshift ≥ 0.3 away, on the same fibre,
  its normalized flux times s added (with its noise);
* ``calibration_artefact``: the pixels whose observed λ = λ_rest·(1 + z) falls in one spectrograph arm
  multiplied by 1 ± 0.4·s (flux and noise: a flux-calibration error scales both).

Astrophysical effects change the *signal*; the sky and read noise, which dominate faint DESI quasars,
do not change. So an effect with transmission (or boost) ``T`` multiplies the flux by ``T`` and then
tops the noise back up with independent Gaussian noise of variance ``(1 − T²)/ivar`` (``T < 1``), or
lowers the ivar by ``T²`` (``T > 1``): the injected spectrum keeps the host's white noise, in amplitude
and in its spectrum. (Adding ``(T − 1)·S`` for a smoothed copy ``S`` instead would subtract smoothed
noise, leaving too little noise on the scales of a few pixels.) Every injected spectrum is normalized
again as ``normalized_spectra`` does, so it looks like a pipeline product.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from scipy.ndimage import gaussian_filter1d

from qad_assets.errors import TooFewSpectraError
from qad_assets.science.spectra.arms import ARM_EDGES, arm_index
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.features import LINES, band_median, pixels
from qad_assets.science.spectra.normalization import normalize
from qad_assets.science.spectra.rest_frame import C_KMS, EMISSION_LINES, RestFrameGrid

INJECTION_CLASSES: tuple[str, ...] = (
    "bal",
    "reddening",
    "weak_lines",
    "wrong_redshift",
    "superposed",
    "extreme_lines",
    "calibration_artefact",
)
DEFAULT_STRENGTHS = (0.25, 0.5, 1.0)

#: Smoothing of the signal estimate S: σ = 3 pixels (≈ 520 km/s), well below a broad line's width.
SIGNAL_SMOOTH_PIXELS = 3.0
#: BAL troughs: reference lines and their depth relative to C IV (Si IV and N V troughs are shallower).
BAL_TROUGHS = ((EMISSION_LINES["CIV"], 1.0), (EMISSION_LINES["SiIV"], 0.5), (EMISSION_LINES["NV"], 0.7))
BAL_EDGE_KMS = 500.0  # logistic softness of the trough edges
BAL_MAX_ONSET_KMS = 5000.0
#: A BAL host must have this fraction of the C IV trough range (1420–1549 Å) observed.
BAL_MIN_COVERED = 0.5
MAX_EBV = 0.3
WEAK_LINE_LOSS, EXTREME_LINE_GAIN = 0.9, 3.0
MAX_REDSHIFT_ERROR = 0.3  # δ in (1 + z_cat) = (1 + z)(1 + δ)
MIN_SUPERPOSED_DZ = 0.3
MAX_ARM_SCALE_ERROR = 0.4


def inject(
    kind: str,
    flux: np.ndarray,
    ivar: np.ndarray,
    z: np.ndarray,
    grid: RestFrameGrid,
    strength: float | np.ndarray,
    rng: np.random.Generator,
    donors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inject anomaly ``kind`` at ``strength`` into every row of ``(flux, ivar)`` (N, P): new, re-normalized
    float32 arrays and the redshift each spectrum now claims (z_cat for ``wrong_redshift``).
    ``superposed`` takes its second quasars from ``donors`` (default: the other rows).
    """
    flux, ivar = np.asarray(flux, np.float64), np.asarray(ivar, np.float64)
    s = np.broadcast_to(np.asarray(strength, np.float64), z.shape)
    z_used = z
    if kind == "bal":
        flux, ivar = scale_signal(flux, ivar, _bal_transmission(grid, s, rng), rng)
    elif kind == "reddening":
        flux, ivar = scale_signal(flux, ivar, _dust_transmission(grid, s), rng)
    elif kind in ("weak_lines", "extreme_lines"):
        factor = -WEAK_LINE_LOSS * s if kind == "weak_lines" else EXTREME_LINE_GAIN * s
        flux, ivar = scale_signal(flux, ivar, 1.0 + factor[:, None] * line_fraction(flux, ivar, grid), rng)
    elif kind == "wrong_redshift":
        flux, ivar, z_used = _misredshift(flux, ivar, z, grid, s, rng)
    elif kind == "superposed":
        flux, ivar = _superpose(flux, ivar, z, grid, s, rng, donors or (flux, ivar, z))
    elif kind == "calibration_artefact":
        flux, ivar = _arm_scale(flux, ivar, z, grid, s, rng)
    else:
        raise ValueError(f"unknown injection class {kind!r}; expected one of {INJECTION_CLASSES}")
    ivar = np.where(np.isfinite(flux) & (ivar > 0), ivar, 0.0)
    flux = np.where(ivar > 0, flux, 0.0)
    new_flux, new_ivar, _ = normalize(flux.astype(np.float32), ivar.astype(np.float32), grid)
    return new_flux, new_ivar, z_used


def signal_estimate(flux: np.ndarray, ivar: np.ndarray) -> np.ndarray:
    """Gaussian-smoothed flux over the good pixels: the spectrum's signal with most noise averaged out."""
    good = (ivar > 0).astype(np.float64)
    total = gaussian_filter1d(np.where(ivar > 0, flux, 0.0), SIGNAL_SMOOTH_PIXELS, axis=1, mode="constant")
    weight = gaussian_filter1d(good, SIGNAL_SMOOTH_PIXELS, axis=1, mode="constant")
    return np.where(weight > 1e-3, total / np.maximum(weight, 1e-3), 0.0)


def scale_signal(
    flux: np.ndarray, ivar: np.ndarray, transmission: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Multiply the signal by ``transmission`` (≥ 0), keeping the noise at the host's level (module doc)."""
    t = np.clip(transmission, 0.0, None)
    sigma = np.where(ivar > 0, 1.0 / np.sqrt(np.where(ivar > 0, ivar, 1.0)), 0.0)
    top_up = sigma * np.sqrt(np.clip(1.0 - t**2, 0.0, None)) * rng.standard_normal(flux.shape)
    return flux * t + top_up, ivar / np.maximum(t**2, 1.0)


def _bal_transmission(grid: RestFrameGrid, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth-edged troughs in outflow velocity, the same velocity range for every ion (N, P)."""
    onset = rng.uniform(0.0, BAL_MAX_ONSET_KMS, s.shape)[:, None]
    end = onset + (2000.0 + 18000.0 * s)[:, None]
    depth = (0.1 + 0.8 * s)[:, None]
    transmission = np.ones((s.size, grid.npix))
    for line, relative_depth in BAL_TROUGHS:
        outflow = C_KMS * (1.0 - grid.wave / line)  # km/s, positive blueward of the line
        profile = _logistic((outflow - onset) / BAL_EDGE_KMS) * _logistic((end - outflow) / BAL_EDGE_KMS)
        transmission *= 1.0 - relative_depth * depth * profile
    return transmission


def _logistic(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def smc_extinction(wave: np.ndarray) -> np.ndarray:
    """A_λ / E(B−V) of SMC-like dust, ``1.39 λ_µm^−1.2`` (the law used for reddened SDSS quasars)."""
    return 1.39 * (np.asarray(wave) / 1e4) ** -1.2


def _dust_transmission(grid: RestFrameGrid, s: np.ndarray) -> np.ndarray:
    return 10.0 ** (-0.4 * (MAX_EBV * s)[:, None] * smc_extinction(grid.wave))


def line_fraction(flux: np.ndarray, ivar: np.ndarray, grid: RestFrameGrid) -> np.ndarray:
    """Fraction of the signal that is broad-line emission (N, P), in [0, 1].

    The line is the smoothed flux above a straight continuum through each line's side bands
    (:data:`~qad_assets.science.spectra.features.LINES`); zero outside the line windows and for a
    line whose side bands are not both observed.
    """
    signal = signal_estimate(flux, ivar)
    good = ivar > 0
    fraction = np.zeros_like(flux)
    for line in LINES.values():
        blue, red = band_median(signal, good, grid, line.blue), band_median(signal, good, grid, line.red)
        cols = pixels(grid, *line.window)
        x_blue, x_red = np.mean(line.blue), np.mean(line.red)
        continuum = blue[:, None] + (red - blue)[:, None] * ((grid.wave[cols] - x_blue) / (x_red - x_blue))
        window_signal = signal[:, cols]
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.clip(1.0 - continuum / window_signal, 0.0, 1.0)
        usable = np.isfinite(share) & good[:, cols] & (window_signal > 0) & (continuum > 0)
        fraction[:, cols] = np.where(usable, share, 0.0)
    return fraction


def _misredshift(
    flux: np.ndarray, ivar: np.ndarray, z: np.ndarray, grid: RestFrameGrid, s: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """De-redshift with a wrong z: a feature at rest λ moves to λ/(1 + δ), i.e. −log10(1 + δ) in log λ."""
    delta = MAX_REDSHIFT_ERROR * s * rng.choice([-1.0, 1.0], s.shape)
    delta = np.where((1 + z) * (1 + delta) - 1 < 0.05, np.abs(delta), delta)
    shift = -np.log10(1.0 + delta) / grid.loglam_step  # pixels, per spectrum
    new_flux, new_ivar = shift_spectra(flux, ivar, shift)
    return new_flux, new_ivar, (1 + z) * (1 + delta) - 1


def shift_spectra(flux: np.ndarray, ivar: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each spectrum by ``shift`` pixels (fractional: linear interpolation), ivar 0 where no data.

    Output pixel ``i`` takes the input at ``i − shift``; a pixel needs both neighbours observed.
    """
    n, npix = flux.shape
    source = np.arange(npix)[None, :] - np.asarray(shift, np.float64)[:, None]
    left = np.floor(source).astype(np.int64)
    frac = source - left
    inside = (left >= 0) & (left + 1 < npix)
    lo, hi = np.clip(left, 0, npix - 1), np.clip(left + 1, 0, npix - 1)
    rows = np.arange(n)[:, None]
    observed = inside & (ivar[rows, lo] > 0) & (ivar[rows, hi] > 0)
    new_flux = (1 - frac) * flux[rows, lo] + frac * flux[rows, hi]
    variance = (1 - frac) ** 2 / np.where(observed, ivar[rows, lo], 1.0) + frac**2 / np.where(
        observed, ivar[rows, hi], 1.0
    )
    return np.where(observed, new_flux, 0.0), np.where(observed, 1.0 / variance, 0.0)


def _superpose(
    flux: np.ndarray,
    ivar: np.ndarray,
    z: np.ndarray,
    grid: RestFrameGrid,
    s: np.ndarray,
    rng: np.random.Generator,
    donors: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Add a donor quasar at z2 (|z2 − z| ≥ 0.3), moved to the host's rest frame, times ``s``.

    Both were observed over the same observed range, so the donor covers the host's pixels; a pixel
    where the donor has no data loses its weight. Variances add.
    """
    donor_flux, donor_ivar, donor_z = (np.asarray(a, np.float64) for a in donors)
    far = np.abs(donor_z[None, :] - z[:, None]) >= MIN_SUPERPOSED_DZ
    if not far.any(axis=1).all():
        raise TooFewSpectraError(f"no donor quasar at ≥ {MIN_SUPERPOSED_DZ} in redshift from some hosts")
    pick = np.argmax(far * rng.random(far.shape), axis=1)  # a random far donor per host
    shift = np.log10((1.0 + donor_z[pick]) / (1.0 + z)) / grid.loglam_step  # donor rest → host rest
    moved_flux, moved_ivar = shift_spectra(donor_flux[pick], donor_ivar[pick], shift)
    both = (ivar > 0) & (moved_ivar > 0)
    variance = 1.0 / np.where(both, ivar, 1.0) + s[:, None] ** 2 / np.where(both, moved_ivar, 1.0)
    return np.where(both, flux + s[:, None] * moved_flux, 0.0), np.where(both, 1.0 / variance, 0.0)


def _arm_scale(
    flux: np.ndarray, ivar: np.ndarray, z: np.ndarray, grid: RestFrameGrid, s: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Scale the pixels of one observed arm (drawn among the arms with data) by 1 ± 0.4·s."""
    arm = arm_index(grid, z)
    present = np.stack([((arm == k) & (ivar > 0)).any(axis=1) for k in range(len(ARM_EDGES))], axis=1)
    chosen = np.argmax(present * rng.random(present.shape), axis=1)
    factor = 1.0 + MAX_ARM_SCALE_ERROR * s * rng.choice([-1.0, 1.0], s.shape)
    scale = np.where(arm == chosen[:, None], factor[:, None], 1.0)
    return flux * scale, ivar / scale**2


def eligible_hosts(kind: str, ivar: np.ndarray, grid: RestFrameGrid) -> np.ndarray:
    """Hosts on which ``kind`` is visible at all: a BAL needs its C IV trough range observed."""
    if kind == "bal":
        cols = pixels(grid, 1420.0, EMISSION_LINES["CIV"])
        return (ivar[:, cols] > 0).mean(axis=1) >= BAL_MIN_COVERED
    return np.ones(ivar.shape[0], bool)


INJECTION_SCHEMA = pa.schema(
    [
        ("TARGETID", pa.int64()),
        ("class", pa.string()),
        ("strength", pa.float64()),
        ("snr", pa.float64()),
        ("z", pa.float64()),
        ("z_host", pa.float64()),
    ]
)


def injection_set(
    hosts: Spectra,
    grid: RestFrameGrid,
    *,
    classes: tuple[str, ...] = INJECTION_CLASSES,
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS,
    per_class: int = 60,
    rng: np.random.Generator,
) -> tuple[Spectra, pa.Table]:
    """``per_class`` injected spectra of every class, strengths in turn, on random eligible hosts.

    The hosts should be held-out normal quasars; the same host may serve several classes, never twice
    in one class. ``superposed`` draws its second quasar from all the hosts. Returns the injected
    spectra (TARGETID of the host, ``z`` the redshift the spectrum claims: z_cat for ``wrong_redshift``)
    and their labels: host TARGETID, class, strength, host S/N, ``z``, ``z_host``.
    """
    flux, ivar, z = hosts.flux, hosts.ivar, np.asarray(hosts.z, np.float64)
    parts, labels = [], []
    for kind in classes:
        candidates = np.flatnonzero(eligible_hosts(kind, ivar, grid))
        rows = rng.choice(candidates, min(per_class, candidates.size), replace=False)
        s = np.resize(np.asarray(strengths, np.float64), rows.size)
        f, v, z_used = inject(kind, flux[rows], ivar[rows], z[rows], grid, s, rng, donors=(flux, ivar, z))
        parts.append(Spectra(hosts.wave, f, v, hosts.targetid[rows], z_used, hosts[rows].columns))
        labels.append(
            pa.table(
                {
                    "TARGETID": hosts.targetid[rows],
                    "class": [kind] * rows.size,
                    "strength": s,
                    "snr": hosts.snr[rows],
                    "z": z_used,
                    "z_host": z[rows],
                },
                schema=INJECTION_SCHEMA,
            )
        )
    return Spectra.concat(parts), pa.concat_tables(labels)
