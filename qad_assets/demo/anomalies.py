"""Anomalies: one function per class, applied at the stage where the effect happens."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qad_assets.demo.plan import Arms, Columns
from qad_assets.demo.sources import band_nmgy, galaxy_spectra, quasar_params, quasar_spectra


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


def wrong_redshift(z: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Catalogue redshift off by a factor (1 + z) * (1 +- (0.005-0.35)); the spectrum keeps z."""
    delta = (0.005 + 0.345 * s) * rng.choice([-1.0, 1.0], len(z))
    z_cat = (1 + z) * (1 + delta) - 1
    flip = (z_cat < 0.05) | (z_cat > 5.0)
    z_cat = np.where(flip, (1 + z) * (1 - delta) - 1, z_cat)
    return z_cat, [f"dz={b - a:+.4f}" for a, b in zip(z, z_cat, strict=True)]


def superposed(
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
        quasar_spectra(rng, z2, quasar_params(rng, z2)),
        galaxy_spectra(rng, z2, np.ones(n, dtype=bool)),
    )
    ratio = 0.15 + 0.85 * s
    second *= (ratio * band_nmgy(primary, "r") / np.maximum(band_nmgy(second, "r"), 1e-30))[:, None]
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


def calibration_artefact(arms: Arms, rows: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Instrumental defects after extraction, cycling over arm scale, spikes and ripple."""
    kinds = (_arm_scale, _spikes, _wiggle)
    return [kinds[k % 3](arms, row, strength, rng) for k, (row, strength) in enumerate(zip(rows, s, strict=True))]
