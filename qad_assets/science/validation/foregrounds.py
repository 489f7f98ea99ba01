"""Spectra of other objects an injection puts on a quasar's fibre: stars, passive and star-forming galaxies.

Observed-frame flux densities on any wavelength grid, each scaled to a mean of 1 over the observed
5600–7500 Å (the r band, where a host's brightness is measured). Independent of the demo generator:

* stars: 30 real stellar spectra (``data/stars.npz``: five random redrock archetypes per type WD, A, F,
  G, K, M, at DESI's resolution; provenance in ``data/README.md``), at a radial velocity;
* a passive galaxy: a G or K stellar spectrum (an old population's light) broadened by a velocity
  dispersion of 150–300 km/s and redshifted;
* a star-forming galaxy: a blue power-law continuum ``f_λ ∝ λ^β`` (β from −2.2 to −0.8) with a 4000 Å
  step, and nebular lines ([O II], Hγ, Hβ, [O III], Hα, [N II], [S II]) with Hβ's rest equivalent width
  5–60 Å, BPT-like ratios drawn per galaxy and a 40–120 km/s dispersion, at DESI's resolution.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np
from scipy.ndimage import gaussian_filter1d

from qad_assets.science.spectra.rest_frame import C_KMS

#: The observed band (Å) a foreground's brightness is set in.
R_BAND = (5600.0, 7500.0)
#: DESI's line-spread, as a Gaussian σ in observed Å (FWHM ≈ 1.8 Å over the whole range).
RESOLUTION_SIGMA = 0.75
STAR_TYPES = ("WD", "A", "F", "G", "K", "M")

#: Nebular lines (vacuum Å): name → wavelength.
NEBULAR_LINES = {
    "OII_3727": 3727.09,
    "OII_3730": 3729.88,
    "Hgamma": 4341.68,
    "Hbeta": 4862.68,
    "OIII_4960": 4960.30,
    "OIII_5008": 5008.24,
    "NII_6550": 6549.86,
    "Halpha": 6564.61,
    "NII_6585": 6585.27,
    "SII_6718": 6718.29,
    "SII_6733": 6732.67,
}


@cache
def stars() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(wave, flux, type)``: the packaged stellar spectra, 1 Å bins over 3500–10000 Å (vacuum, rest)."""
    with resources.files("qad_assets.science.validation").joinpath("data/stars.npz").open("rb") as handle:
        data = np.load(handle)
        wave, flux, kind = data["wave"], data["flux"].astype(np.float64), data["star_type"]
    for array in (wave, flux, kind):
        array.flags.writeable = False
    return wave, flux, kind


def r_band_mean(flux: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """Mean flux over the observed :data:`R_BAND` (N,)."""
    band = (wave >= R_BAND[0]) & (wave <= R_BAND[1])
    return np.asarray(flux)[:, band].mean(axis=1)


def _unit_r_band(flux: np.ndarray, wave: np.ndarray) -> np.ndarray:
    mean = r_band_mean(flux, wave)
    return flux / np.where(mean > 0, mean, 1.0)[:, None]


def star_spectra(which: np.ndarray, rv_kms: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """Packaged stars ``which`` at radial velocities ``rv_kms`` observed on ``wave`` (N, P), r-band mean 1."""
    star_wave, star_flux, _ = stars()
    shift = 1.0 + np.asarray(rv_kms, np.float64) / C_KMS
    out = np.stack(
        [np.interp(wave / s, star_wave, star_flux[k]) for k, s in zip(np.asarray(which), shift, strict=True)]
    )
    return _unit_r_band(out, wave)


def stars_of_type(kinds: tuple[str, ...]) -> np.ndarray:
    """Indices of the packaged stars of the given types."""
    return np.flatnonzero(np.isin(stars()[2], kinds))


def passive_galaxy(which: np.ndarray, z: np.ndarray, sigma_kms: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """Old stellar populations (packaged G/K stars ``which``) broadened by ``sigma_kms`` at redshift ``z``
    (N, P), r-band mean 1. Below the templates' 3500 Å the flux continues at its edge value."""
    star_wave, star_flux, _ = stars()
    out = []
    for k, zg, sigma in zip(np.asarray(which), np.asarray(z), np.asarray(sigma_kms), strict=True):
        width = sigma / C_KMS * 5000.0  # Å at the old population's 4000–6000 Å, 1 Å bins
        broadened = gaussian_filter1d(star_flux[k], width, mode="nearest")
        out.append(np.interp(wave / (1.0 + zg), star_wave, broadened))
    return _unit_r_band(np.stack(out), wave)


def emission_line_galaxy(z: np.ndarray, wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Star-forming galaxies at redshifts ``z`` observed on ``wave`` (N, P), r-band mean 1, and a
    description of each (β, EW(Hβ), [O III]/Hβ)."""
    n = len(z)
    z = np.asarray(z, np.float64)[:, None]
    rest = wave[None, :] / (1.0 + z)
    beta = rng.uniform(-2.2, -0.8, n)[:, None]
    d4000 = rng.uniform(1.0, 1.3, n)[:, None]  # flux ratio across the 4000 Å break
    step = 1.0 + (d4000 - 1.0) / (1.0 + np.exp(-(rest - 4000.0) / 30.0))
    cont = (rest / 5000.0) ** beta * step / d4000  # per rest Å, ≈ (λ/5000)^β above the break
    ew_hbeta = 10 ** rng.uniform(np.log10(5.0), np.log10(60.0), n)
    o3 = 10 ** rng.uniform(np.log10(0.3), np.log10(6.0), n)  # [O III] 5008 / Hβ
    balmer = rng.uniform(2.86, 5.0, n)  # Hα/Hβ, 2.86 unreddened
    n2 = 10 ** rng.uniform(-1.0, -0.3, n)  # [N II] 6585 / Hα
    o2 = rng.uniform(1.0, 4.0, n)  # [O II] total / Hβ
    s2 = rng.uniform(0.1, 0.35, n)  # each [S II] / Hα
    ratios = {
        "OII_3727": 0.45 * o2,
        "OII_3730": 0.55 * o2,
        "Hgamma": np.full(n, 0.47),
        "Hbeta": np.ones(n),
        "OIII_4960": o3 / 2.98,
        "OIII_5008": o3,
        "NII_6550": balmer * n2 / 3.05,
        "Halpha": balmer,
        "NII_6585": balmer * n2,
        "SII_6718": balmer * s2,
        "SII_6733": balmer * s2 * 0.75,
    }
    dispersion = rng.uniform(40.0, 120.0, n)[:, None]
    hbeta_cont = (NEBULAR_LINES["Hbeta"] / 5000.0) ** beta[:, 0]  # the continuum is 1 above the break
    hbeta_flux = ew_hbeta * hbeta_cont  # rest-frame EW × continuum per rest Å
    flux = cont.copy()
    for name, centre in NEBULAR_LINES.items():
        observed = centre * (1.0 + z)
        sigma = np.sqrt((observed * dispersion / C_KMS) ** 2 + RESOLUTION_SIGMA**2) / (1.0 + z)  # rest Å
        area = (ratios[name] * hbeta_flux)[:, None]
        flux += area * np.exp(-0.5 * ((rest - centre) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)
    details = [
        f"beta={b:.2f} ew_hbeta={e:.0f} oiii_hbeta={o:.2f}" for b, e, o in zip(beta[:, 0], ew_hbeta, o3, strict=True)
    ]
    return _unit_r_band(flux, wave), details
