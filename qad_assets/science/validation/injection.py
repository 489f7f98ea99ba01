"""Synthetic anomalies injected into observed quasar spectra, to measure what a detector finds.

The hosts are ``raw_spectra`` rows (flux and ivar on DESI's observed ``brz`` grid, ivar = 0 where there
is no data, with their redshift): normal quasars of a release or real DESI quasars, so the noise,
coverage and intrinsic diversity are real; only the anomaly is synthetic. Injection happens in the
observed frame, where the effects happen (an arm's calibration, a spike, a star at z = 0), and the
pipeline's own :func:`~qad_assets.science.spectra.normalization.normalize_batch` then moves the spectrum
to the rest frame, so that every column the detector uses (``scale``, ``spike_pull``) is computed as in
production. Rest-frame physics (troughs, dust, lines, a wrong redshift) is placed at λ_obs/(1 + z).

The nine classes are those of the demo release, but every recipe is independent of the demo
generator's (other parametrisations, profiles, laws, templates), so the detector is judged on effects it
was not built around. Each runs from subtle (strength 0.1–0.25) to obvious (1):

=================  ===============================================================================
``weak_line``      every broad line's flux above the continuum (:mod:`.host_model`) × 10^−s
                   (equivalent widths 0.56, 0.32, 0.1 of the host's at s = 0.25, 0.5, 1)
``extreme_lines``  the broad lines' flux × 4^s (1.4, 2, 4)
``hibal``          C IV, Si IV, N V and Lyα troughs: 1–2 components with Gaussian optical depth in
                   outflow velocity (centre σ..25000 km/s, σ = 700 + 3300·s km/s), maximum depth
                   0.2 + 0.7·s, saturated-like (τ₀ = 3, partial covering)
``lobal``          the same plus Al III, Al II and Mg II troughs
``reddened``       dust at the quasar, E(B−V) = 0.025·12^s (0.05, 0.09, 0.3), the SMC law of Prévot
                   et al. 1984 (as a power law, A_λ/E = 1.39 λ_µm^−1.2) or Calzetti et al. 2000, at random;
                   the quasar keeps its r-band flux (a magnitude-limited sample)
``wrong_z``        the catalogue redshift off by (1 + z_cat) = (1 + z)(1 ± 0.004·75^s) (0.012, 0.035,
                   0.3); the spectrum itself unchanged
``superposition``  a second object on the fibre with an r-band flux 0.08·12.5^s (0.15, 0.28, 1) of the
                   quasar's: a star-forming galaxy (40 %) or a passive one (30 %) below the quasar's
                   redshift, or a star at z ≈ 0 (30 %) (:mod:`.foregrounds`)
``star_as_qso``    the quasar replaced by a star (any of WD, A, F, G, K, M) of 0.35 + 0.65·s of its
                   r-band flux, keeping the quasar's redshift as the claim
``artifact``       alternately one arm's flux calibration × exp(±(0.02 + 0.3·s)) (10 %, 18 %, 38 %), or
                   1 + round(2·s) spurious unmasked one- or two-pixel spikes of 6·8^s σ (10, 17, 48 σ)
=================  ===============================================================================

**Noise.** Astrophysical effects change the signal; the sky and read noise, which dominate faint
DESI quasars, do not change. An effect with transmission ``T ≤ 1`` multiplies the flux by ``T`` and
tops the noise back up with independent Gaussian noise of variance ``(1 − T²)/ivar``, so the pixel keeps
the host's noise (its sky-line residuals included); ``T > 1`` (extreme lines blueward of Lyα, where the
forest multiplies whatever is emitted; a reddened quasar redward of the r band) scales the noise with
the flux, a little more noise than photon statistics would add. Flux added to the fibre (a
foreground object, stronger lines) brings its own photon noise, ``OBJECT_NOISE_SHARE·V·F/R``
(:mod:`.host_model`). An instrumental effect (an arm's calibration) scales flux and noise alike; a spike
adds counts the ivar does not know about. A star replacing the quasar gets noise drawn at the host's
ivar (the host's noise cannot be separated from its quasar's forest and narrow absorbers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pyarrow as pa

from qad_assets.science.spectra.arms import ARM_EDGES
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.rest_frame import C_KMS
from qad_assets.science.validation import foregrounds as fg
from qad_assets.science.validation.host_model import (
    OBJECT_NOISE_SHARE,
    continuum_and_lines,
    noise_reference,
    rest_wave,
)

INJECTION_CLASSES: tuple[str, ...] = (
    "weak_line",
    "artifact",
    "hibal",
    "lobal",
    "superposition",
    "star_as_qso",
    "extreme_lines",
    "wrong_z",
    "reddened",
)
DEFAULT_STRENGTHS = (0.25, 0.5, 1.0)

#: weak_line: equivalent-width factor 10^−s; extreme_lines: 4^s.
WEAK_LINE_DECADES, EXTREME_LINE_BASE = 1.0, 4.0
#: Broad absorption: ions (rest Å) and their optical depth relative to C IV's.
HIBAL_IONS: tuple[tuple[str, float, float], ...] = (
    ("CIV", 1549.06, 1.0),
    ("SiIV", 1396.76, 0.6),
    ("NV", 1240.14, 0.7),
    ("Lya", 1215.67, 0.5),
)
LOBAL_IONS = HIBAL_IONS + (("AlIII", 1857.40, 0.6), ("AlII", 1670.79, 0.4), ("MgII", 2798.75, 0.8))
BAL_TAU0 = 3.0  # peak optical depth of the main ion: troughs nearly flat-bottomed, depth set by covering
BAL_MAX_KMS = 25_000.0
BAL_SECOND_COMPONENT = 0.4  # probability of a second, shallower trough component
#: Trough ranges (rest Å) a host must have half observed: C IV's for a HiBAL; Mg II's or Al III's for a LoBAL.
HIBAL_RANGE = (1420.0, 1549.0)
LOBAL_RANGES = ((2570.0, 2798.0), (1710.0, 1857.0))
MIN_TROUGH_COVERED = 0.5
EBV_MIN, EBV_BASE = 0.025, 12.0
REDSHIFT_ERROR_MIN, REDSHIFT_ERROR_BASE = 0.004, 75.0
Z_CLAIM_RANGE = (0.05, 6.0)
FOREGROUND_RATIO_MIN, FOREGROUND_RATIO_BASE = 0.08, 12.5
FOREGROUND_KINDS = (("elg", 0.4), ("passive", 0.3), ("star", 0.3))
#: A foreground galaxy sits at least this far below the quasar, at most at these redshifts.
FOREGROUND_MIN_DZ = 0.1
ELG_MAX_Z, PASSIVE_MAX_Z = 1.4, 0.7
STAR_RV_SIGMA_KMS = 60.0
STAR_RATIO_MIN = 0.35
ARM_STEP_MIN, ARM_STEP_SLOPE = 0.02, 0.3
SPIKE_SIGMA_MIN, SPIKE_SIGMA_BASE = 6.0, 8.0
#: Spikes keep this many pixels apart (and from the ends of the data).
SPIKE_SPACING = 8


@dataclass(frozen=True)
class Effect:
    """What a recipe does to its hosts (N, P arrays on the observed grid), before noise.

    The injected signal is ``((replacement or host) · transmission + added) · calibration + spikes``;
    :func:`apply` adds the noise each part brings (module docstring). ``z`` is the redshift the spectrum
    claims afterwards, ``subclass`` and ``detail`` describe each injection.
    """

    transmission: np.ndarray
    added: np.ndarray
    calibration: np.ndarray
    spikes: np.ndarray
    z: np.ndarray
    subclass: list[str]
    detail: list[str]
    replacement: np.ndarray | None = None


@dataclass(frozen=True)
class Hosts:
    """Observed host spectra and what the recipes measure on them (computed once, when needed)."""

    spectra: Spectra

    @cached_property
    def flux(self) -> np.ndarray:
        return np.asarray(self.spectra.flux, np.float64)

    @cached_property
    def ivar(self) -> np.ndarray:
        return np.clip(np.asarray(self.spectra.ivar, np.float64), 0.0, None)

    @cached_property
    def z(self) -> np.ndarray:
        return np.asarray(self.spectra.z, np.float64)

    @cached_property
    def rest(self) -> np.ndarray:
        return rest_wave(self.spectra.wave, self.z)

    @cached_property
    def noise(self) -> tuple[np.ndarray, np.ndarray]:
        """``(V, R)`` of :func:`~.host_model.noise_reference`."""
        return noise_reference(self.flux, self.ivar)

    @cached_property
    def lines(self) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """``(C, L, names)`` of :func:`~.host_model.continuum_and_lines`."""
        return continuum_and_lines(self.flux, self.ivar, self.spectra.wave, self.z)

    @cached_property
    def r_level(self) -> np.ndarray:
        """The host's mean flux over the observed r band (ivar-weighted; > 0) (N,)."""
        wave = self.spectra.wave
        band = (wave >= fg.R_BAND[0]) & (wave <= fg.R_BAND[1])
        w = self.ivar[:, band]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = (w * self.flux[:, band]).sum(axis=1) / w.sum(axis=1)
        floor = np.median(self.noise[1][:, band], axis=1)
        return np.where(np.isfinite(mean) & (mean > 0), mean, floor)

    def none(self) -> Effect:
        """The identity effect, to be modified by a recipe."""
        n, p = self.flux.shape
        return Effect(
            transmission=np.ones((n, p)),
            added=np.zeros((n, p)),
            calibration=np.ones((n, p)),
            spikes=np.zeros((n, p)),
            z=self.z.copy(),
            subclass=[""] * n,
            detail=[""] * n,
        )


def apply(hosts: Hosts, effect: Effect, rng: np.random.Generator) -> Spectra:
    """The hosts with ``effect`` applied and its noise added (module docstring): observed spectra that
    claim redshift ``effect.z``; a pixel without data stays without."""
    good = hosts.ivar > 0
    ivar = hosts.ivar.copy()
    sigma = np.where(good, 1.0 / np.sqrt(np.where(good, ivar, 1.0)), 0.0)
    flux = hosts.flux.copy()
    if effect.replacement is not None:
        flux = effect.replacement + sigma * rng.standard_normal(flux.shape)
    t = np.clip(effect.transmission, 0.0, None)
    dim = t <= 1.0
    flux = flux * t + np.where(dim, sigma * np.sqrt(np.clip(1.0 - t**2, 0.0, None)), 0.0) * rng.standard_normal(
        flux.shape
    )
    ivar = np.where(dim, ivar, ivar / np.where(dim, 1.0, t**2))
    if np.any(effect.added):
        variance, level = hosts.noise
        extra = OBJECT_NOISE_SHARE * variance * np.clip(effect.added, 0.0, None) / level
        flux = flux + effect.added + np.sqrt(extra) * rng.standard_normal(flux.shape)
        ivar = np.where(good, 1.0 / (1.0 / np.where(good, ivar, 1.0) + extra), 0.0)
    flux = flux * effect.calibration + effect.spikes
    ivar = ivar / effect.calibration**2
    ivar = np.where(good & np.isfinite(flux) & (ivar > 0), ivar, 0.0)
    return replace(
        hosts.spectra,
        flux=np.where(ivar > 0, flux, 0.0).astype(np.float32),
        ivar=ivar.astype(np.float32),
        z=effect.z,
    )


# ------------------------------------------------------------------------------------------------
# Recipes: (hosts, strengths (N,), rng) → Effect


def _lines(hosts: Hosts, s: np.ndarray, rng: np.random.Generator, *, weak: bool) -> Effect:
    cont, lines, names = hosts.lines
    effect = hosts.none()
    if weak:
        factor = 10.0 ** (-WEAK_LINE_DECADES * s)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(cont + lines > 0, lines / (cont + lines), 0.0)
        transmission = 1.0 - (1.0 - factor[:, None]) * np.clip(share, 0.0, 1.0)
        effect = replace(effect, transmission=transmission)
    else:
        factor = EXTREME_LINE_BASE**s
        boost = (factor - 1.0)[:, None] * lines
        forest = hosts.rest < 1216.0  # the forest multiplies what is emitted: scale the flux there
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(cont + lines > 0, boost / (cont + lines), 0.0)
        effect = replace(
            effect,
            added=np.where(forest, 0.0, boost),
            transmission=np.where(forest, 1.0 + np.clip(ratio, 0.0, None), 1.0),
        )
    detail = [f"ew_factor={f:.2f} lines={'+'.join(n) or 'none'}" for f, n in zip(factor, names, strict=True)]
    return replace(effect, detail=detail)


def _weak_line(hosts: Hosts, s: np.ndarray, rng: np.random.Generator) -> Effect:
    return _lines(hosts, s, rng, weak=True)


def _extreme_lines(hosts: Hosts, s: np.ndarray, rng: np.random.Generator) -> Effect:
    return _lines(hosts, s, rng, weak=False)


def outflow_velocity(rest: np.ndarray, line: float) -> np.ndarray:
    """km/s (positive = towards us) at which ``line`` absorbs at ``rest`` Å (relativistic Doppler)."""
    ratio = (line / rest) ** 2
    return C_KMS * (ratio - 1.0) / (ratio + 1.0)


def _bal(hosts: Hosts, s: np.ndarray, rng: np.random.Generator, ions: tuple[tuple[str, float, float], ...]) -> Effect:
    n = len(s)
    sigma = 700.0 + 3300.0 * s
    depth = 0.2 + 0.7 * s
    centre = rng.uniform(sigma, BAL_MAX_KMS - 1.5 * sigma)
    second = rng.random(n) < BAL_SECOND_COMPONENT
    centre2 = rng.uniform(sigma, BAL_MAX_KMS - 1.5 * sigma)
    sigma2 = sigma * rng.uniform(0.3, 0.8, n)
    weight2 = np.where(second, rng.uniform(0.3, 0.7, n), 0.0)
    covering = np.clip(depth / (1.0 - np.exp(-BAL_TAU0)), 0.0, 1.0)[:, None]
    tau = np.zeros_like(hosts.rest)
    for _, line, relative in ions:
        v = outflow_velocity(hosts.rest, line)
        profile = np.exp(-0.5 * ((v - centre[:, None]) / sigma[:, None]) ** 2)
        profile += weight2[:, None] * np.exp(-0.5 * ((v - centre2[:, None]) / sigma2[:, None]) ** 2)
        tau += relative * BAL_TAU0 * profile * (v > -2000.0)
    transmission = 1.0 - covering * (1.0 - np.exp(-tau))
    detail = [
        f"depth={d:.2f} v_kms={c:.0f} sigma_kms={w:.0f}" + (f" second_v_kms={c2:.0f}" if two else "")
        for d, c, w, c2, two in zip(depth, centre, sigma, centre2, second, strict=True)
    ]
    return replace(hosts.none(), transmission=transmission, detail=detail)


def _hibal(hosts: Hosts, s: np.ndarray, rng: np.random.Generator) -> Effect:
    return _bal(hosts, s, rng, HIBAL_IONS)


def _lobal(hosts: Hosts, s: np.ndarray, rng: np.random.Generator) -> Effect:
    return _bal(hosts, s, rng, LOBAL_IONS)


def smc_prevot(rest: np.ndarray) -> np.ndarray:
    """A_λ/E(B−V) of SMC dust as the power law fitted to Prévot et al. (1984): 1.39 λ_µm^−1.2."""
    return 1.39 * (np.asarray(rest) / 1e4) ** -1.2


def calzetti(rest: np.ndarray) -> np.ndarray:
    """A_λ/E(B−V) of Calzetti et al. (2000), R_V = 4.05; continued linearly in 1/λ below 1200 Å."""
    lam = np.asarray(rest, np.float64) / 1e4
    uv = 2.659 * (-2.156 + 1.509 / lam - 0.198 / lam**2 + 0.011 / lam**3) + 4.05
    ir = 2.659 * (-1.857 + 1.040 / lam) + 4.05
    k = np.where(lam < 0.63, uv, ir)
    edge = 0.12
    k_edge = 2.659 * (-2.156 + 1.509 / edge - 0.198 / edge**2 + 0.011 / edge**3) + 4.05
    slope = 2.659 * (1.509 - 2 * 0.198 / edge + 3 * 0.011 / edge**2)  # dk/d(1/λ) at the edge
    return np.where(lam < edge, k_edge + slope * (1.0 / lam - 1.0 / edge), k)


def _reddened(hosts: Hosts, s: np.ndarray, rng: np.random.Generator) -> Effect:
    """Dust at the quasar, the quasar kept at its observed r-band flux: a magnitude-limited target list
    holds reddened quasars at the magnitudes of the others (intrinsically brighter ones), not the host
    dimmed below the survey's limit. Where the renormalized transmission exceeds 1 (redward of the r
    band) the noise grows with the flux (:func:`apply`)."""
    ebv = EBV_MIN * EBV_BASE**s
    use_calzetti = rng.random(len(s)) < 0.5
    k = np.where(use_calzetti[:, None], calzetti(hosts.rest), smc_prevot(hosts.rest))
    transmission = 10.0 ** (-0.4 * ebv[:, None] * k)
    wave = hosts.spectra.wave
    band = ((wave >= fg.R_BAND[0]) & (wave <= fg.R_BAND[1]))[None, :] & (hosts.ivar > 0)
    level = np.where(band, hosts.noise[1], 0.0)
    r_band = (level * transmission).sum(axis=1) / np.maximum(level.sum(axis=1), 1e-30)
    transmission = transmission / np.where(r_band > 0, r_band, 1.0)[:, None]
    law = np.where(use_calzetti, "calzetti", "smc_prevot")
    return replace(
        hosts.none(),
        transmission=transmission,
        subclass=law.tolist(),
        detail=[f"ebv={e:.3f} law={name}" for e, name in zip(ebv, law, strict=True)],
    )


def _wrong_z(hosts: Hosts, s: np.ndarray, rng: np.random.Generator) -> Effect:
    delta = REDSHIFT_ERROR_MIN * REDSHIFT_ERROR_BASE**s * rng.choice([-1.0, 1.0], len(s))
    z = hosts.z
    claim = (1 + z) * (1 + delta) - 1
    outside = (claim < Z_CLAIM_RANGE[0]) | (claim > Z_CLAIM_RANGE[1])
    claim = np.where(outside, (1 + z) * (1 - delta) - 1, claim)
    return replace(hosts.none(), z=claim, detail=[f"dz={b - a:+.4f}" for a, b in zip(z, claim, strict=True)])


def _superposition(hosts: Hosts, s: np.ndarray, rng: np.random.Generator) -> Effect:
    n, wave = len(s), hosts.spectra.wave
    names, probs = zip(*FOREGROUND_KINDS, strict=True)
    kind = rng.choice(np.asarray(names), n, p=np.asarray(probs))
    kind = np.where(hosts.z - FOREGROUND_MIN_DZ < 0.05, "star", kind)  # no room below the quasar
    ratio = FOREGROUND_RATIO_MIN * FOREGROUND_RATIO_BASE**s
    second = np.zeros_like(hosts.flux)
    detail = [""] * n
    star = np.flatnonzero(kind == "star")
    if star.size:
        which = rng.choice(len(fg.stars()[2]), star.size)
        rv = rng.normal(0.0, STAR_RV_SIGMA_KMS, star.size)
        second[star] = fg.star_spectra(which, rv, wave)
        for row, k, v in zip(star, which, rv, strict=True):
            detail[row] = f"star={fg.stars()[2][k]} rv_kms={v:.0f}"
    passive = np.flatnonzero(kind == "passive")
    if passive.size:
        z_gal = rng.uniform(0.05, np.minimum(PASSIVE_MAX_Z, hosts.z[passive] - FOREGROUND_MIN_DZ))
        which = rng.choice(fg.stars_of_type(("G", "K")), passive.size)
        dispersion = rng.uniform(150.0, 300.0, passive.size)
        second[passive] = fg.passive_galaxy(which, z_gal, dispersion, wave)
        for row, zg, d in zip(passive, z_gal, dispersion, strict=True):
            detail[row] = f"passive z_gal={zg:.4f} sigma_kms={d:.0f}"
    elg = np.flatnonzero(kind == "elg")
    if elg.size:
        z_gal = rng.uniform(0.05, np.minimum(ELG_MAX_Z, hosts.z[elg] - FOREGROUND_MIN_DZ))
        second[elg], described = fg.emission_line_galaxy(z_gal, wave, rng)
        for row, zg, text in zip(elg, z_gal, described, strict=True):
            detail[row] = f"elg z_gal={zg:.4f} {text}"
    added = second * (ratio * hosts.r_level)[:, None]
    detail = [f"{d} flux_ratio={r:.2f}" for d, r in zip(detail, ratio, strict=True)]
    return replace(hosts.none(), added=added, subclass=kind.tolist(), detail=detail)


def _star_as_qso(hosts: Hosts, s: np.ndarray, rng: np.random.Generator) -> Effect:
    which = rng.choice(len(fg.stars()[2]), len(s))
    rv = rng.normal(0.0, STAR_RV_SIGMA_KMS, len(s))
    ratio = STAR_RATIO_MIN + (1.0 - STAR_RATIO_MIN) * s
    star = fg.star_spectra(which, rv, hosts.spectra.wave) * (ratio * hosts.r_level)[:, None]
    kinds = fg.stars()[2][which]
    return replace(
        hosts.none(),
        replacement=star,
        subclass=kinds.tolist(),
        detail=[f"star={k} rv_kms={v:.0f} flux_ratio={r:.2f}" for k, v, r in zip(kinds, rv, ratio, strict=True)],
    )


def arm_of(wave: np.ndarray) -> np.ndarray:
    """Index into :data:`~qad_assets.science.spectra.arms.ARM_EDGES` (0 b, 1 r, 2 z) of observed pixels."""
    bounds = [lo for lo, _ in ARM_EDGES.values()][1:]
    return np.searchsorted(bounds, wave, side="right")


def _artifact(hosts: Hosts, s: np.ndarray, rng: np.random.Generator) -> Effect:
    n, wave = len(s), hosts.spectra.wave
    effect = hosts.none()
    calibration, spikes = effect.calibration.copy(), effect.spikes.copy()
    subclass, detail = [], []
    arms = arm_of(wave)
    names = list(ARM_EDGES)
    for row in range(n):
        if row % 2 == 0:
            arm = int(rng.integers(len(names)))
            factor = float(np.exp(rng.choice([-1.0, 1.0]) * (ARM_STEP_MIN + ARM_STEP_SLOPE * s[row])))
            calibration[row, arms == arm] = factor
            subclass.append("arm_step")
            detail.append(f"arm={names[arm]} factor={factor:.3f}")
            continue
        count = 1 + int(round(2 * s[row]))
        amplitude = SPIKE_SIGMA_MIN * SPIKE_SIGMA_BASE ** s[row]
        places = _spike_places(hosts.ivar[row], count, rng)
        where = []
        for col in places:
            width = int(rng.integers(1, 3))
            share = np.array([1.0, rng.uniform(0.3, 1.0)])[:width]
            cols = slice(col, col + width)
            spikes[row, cols] = amplitude * share / np.sqrt(hosts.ivar[row, cols])
            where.append(f"{wave[col]:.1f}x{width}")
        subclass.append("spikes")
        detail.append(f"n={len(places)} sigma={amplitude:.1f} at={','.join(where)}")
    return replace(effect, calibration=calibration, spikes=spikes, subclass=subclass, detail=detail)


def _spike_places(ivar: np.ndarray, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` pixels where a two-pixel spike fits on observed data, :data:`SPIKE_SPACING` apart."""
    ok = (ivar > 0) & np.roll(ivar > 0, -1)
    ok[-SPIKE_SPACING:] = ok[:SPIKE_SPACING] = False
    places: list[int] = []
    for col in rng.permutation(np.flatnonzero(ok)):
        if all(abs(col - p) >= SPIKE_SPACING for p in places):
            places.append(int(col))
        if len(places) == count:
            break
    return places


RECIPES: dict[str, Callable[[Hosts, np.ndarray, np.random.Generator], Effect]] = {
    "weak_line": _weak_line,
    "artifact": _artifact,
    "hibal": _hibal,
    "lobal": _lobal,
    "superposition": _superposition,
    "star_as_qso": _star_as_qso,
    "extreme_lines": _extreme_lines,
    "wrong_z": _wrong_z,
    "reddened": _reddened,
}


def effect_of(kind: str, hosts: Hosts, strength: float | np.ndarray, rng: np.random.Generator) -> Effect:
    """The noiseless effect of anomaly ``kind`` at ``strength`` on every host."""
    if kind not in RECIPES:
        raise ValueError(f"unknown injection class {kind!r}; expected one of {INJECTION_CLASSES}")
    s = np.broadcast_to(np.asarray(strength, np.float64), hosts.z.shape).copy()
    effect = RECIPES[kind](hosts, s, rng)
    subclass = [sub or kind for sub in effect.subclass]
    return replace(effect, subclass=subclass)


def inject(
    kind: str, hosts: Spectra | Hosts, strength: float | np.ndarray, rng: np.random.Generator
) -> tuple[Spectra, Effect]:
    """Inject anomaly ``kind`` at ``strength`` into every observed host: the injected observed spectra
    (``z`` the redshift each now claims) and the effect (its subclass and detail per spectrum)."""
    hosts = hosts if isinstance(hosts, Hosts) else Hosts(hosts)
    effect = effect_of(kind, hosts, strength, rng)
    return apply(hosts, effect, rng), effect


def eligible_hosts(kind: str, hosts: Spectra) -> np.ndarray:
    """Hosts on which ``kind`` is visible at all: a BAL needs its troughs' range half observed."""
    rest = rest_wave(hosts.wave, hosts.z)
    seen = hosts.ivar > 0

    def covered(lo: float, hi: float) -> np.ndarray:
        inside = (rest >= lo) & (rest < hi)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num((inside & seen).sum(axis=1) / inside.sum(axis=1)) >= MIN_TROUGH_COVERED

    if kind == "hibal":
        return covered(*HIBAL_RANGE)
    if kind == "lobal":
        return np.logical_or.reduce([covered(*r) for r in LOBAL_RANGES])
    return np.ones(len(hosts), bool)


INJECTION_SCHEMA = pa.schema(
    [
        ("TARGETID", pa.int64()),
        ("class", pa.string()),
        ("subclass", pa.string()),
        ("strength", pa.float64()),
        ("z", pa.float64()),
        ("z_host", pa.float64()),
        ("detail", pa.string()),
    ]
)


@dataclass(frozen=True)
class InjectionSet:
    """Injected observed spectra and one label row each (:data:`INJECTION_SCHEMA`), in the same order."""

    spectra: Spectra
    labels: pa.Table


def injection_set(
    hosts: Spectra,
    *,
    classes: tuple[str, ...] = INJECTION_CLASSES,
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS,
    per_class: int = 60,
    draws: int | None = None,
    rng: np.random.Generator,
) -> InjectionSet:
    """Injected observed spectra of every class on eligible observed hosts, and their labels.

    By default ``per_class`` of each class, strengths in turn, on random hosts, a host at most once per
    class (fewer when fewer are eligible): the hosts should be normal quasars the detector did not
    train on. With ``draws``, every eligible host instead gets every strength ``draws`` times, each
    with its own random parameters (few hosts, e.g. real spectra).
    """
    parts, labels = [], []
    levels = np.asarray(strengths, np.float64)
    for kind in classes:
        candidates = np.flatnonzero(eligible_hosts(kind, hosts))
        if candidates.size == 0:
            continue
        if draws is None:
            rows = rng.choice(candidates, min(per_class, candidates.size), replace=False)
            s = np.resize(levels, rows.size)
        else:
            rows = np.repeat(candidates, levels.size * draws)
            s = np.tile(np.repeat(levels, draws), candidates.size)
        injected, effect = inject(kind, hosts[rows], s, rng)
        parts.append(injected)
        labels.append(
            pa.table(
                {
                    "TARGETID": hosts.targetid[rows],
                    "class": [kind] * rows.size,
                    "subclass": effect.subclass,
                    "strength": s,
                    "z": np.asarray(injected.z, np.float64),
                    "z_host": np.asarray(hosts.z, np.float64)[rows],
                    "detail": effect.detail,
                },
                schema=INJECTION_SCHEMA,
            )
        )
    return InjectionSet(Spectra.concat(parts), pa.concat_tables(labels))
