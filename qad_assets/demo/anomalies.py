"""Anomalies: one function per class, applied at the stage where the effect happens.

Every class runs from subtle (strength 0.1) to obvious (1) through its physical parameter, never through
brightness: anomalous targets are drawn from the same magnitude distribution as normal quasars, so a
detector cannot find them by their S/N.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qad_assets.demo.plan import Arms, Columns
from qad_assets.demo.sources import band_nmgy, galaxy_spectra, star_spectra, templates

#: star_as_qso: stellar types from quasar-like (subtle: a featureless white dwarf, a blue A star) to
#: nothing like one (obvious: molecular bands of an M star)
STAR_TYPES_BY_STRENGTH = ("WD", "A", "F", "G", "K", "M")


def _bal(p: Columns, sel: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Broad absorption troughs 2000-20000 km/s wide, depth 0.15-0.9 (with strength), from 0-5000 km/s."""
    p["bal_depth"][sel] = 0.15 + 0.75 * s
    p["bal_width"][sel] = 2000.0 + 18000.0 * s
    p["bal_vmin"][sel] = rng.uniform(0.0, 5000.0, sel.sum())
    return [
        f"depth={d:.2f} vmin_kms={v:.0f} width_kms={w:.0f}"
        for d, v, w in zip(p["bal_depth"][sel], p["bal_vmin"][sel], p["bal_width"][sel], strict=True)
    ]


def _hibal(p: Columns, sel: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> list[str]:
    """High-ionisation BAL quasar: troughs of C IV, Si IV, N V and Lyα."""
    return _bal(p, sel, s, rng)


def _lobal(p: Columns, sel: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Low-ionisation BAL quasar: the high-ionisation troughs plus Mg II, Al III and Al II."""
    p["lobal"][sel] = True
    return _bal(p, sel, s, rng)


def _reddened(p: Columns, sel: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Dust-reddened quasar: SMC extinction E(B-V) = 0.03-0.4 at the quasar redshift."""
    p["ebv"][sel] = 0.03 + 0.37 * s
    return [f"ebv_smc={e:.3f}" for e in p["ebv"][sel]]


def _weak_line(p: Columns, sel: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> list[str]:
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
    "hibal": _hibal,
    "lobal": _lobal,
    "reddened": _reddened,
    "weak_line": _weak_line,
    "extreme_lines": _extreme_lines,
}
#: lowest quasar redshift per class: a HiBAL needs its C IV trough observed, a LoBAL its Al III and Mg II
MIN_Z = {"hibal": 1.6, "lobal": 1.0}


def wrong_z(z: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Catalogue redshift off by a factor (1 + z) * (1 +- (0.005-0.35)); the spectrum keeps z."""
    delta = (0.005 + 0.345 * s) * rng.choice([-1.0, 1.0], len(z))
    z_cat = (1 + z) * (1 + delta) - 1
    flip = (z_cat < 0.05) | (z_cat > 5.0)
    z_cat = np.where(flip, (1 + z) * (1 - delta) - 1, z_cat)
    return z_cat, [f"dz={b - a:+.4f}" for a, b in zip(z, z_cat, strict=True)]


def star_as_qso_types(rng: np.random.Generator, s: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Stellar archetype of each star labelled QSO: its type from STAR_TYPES_BY_STRENGTH by strength,
    one of that type's three archetypes at random."""
    kinds = np.array(STAR_TYPES_BY_STRENGTH)[np.minimum((s * len(STAR_TYPES_BY_STRENGTH)).astype(int), 5)]
    star_type = templates()["star_type"]
    first = np.array([np.flatnonzero(star_type == k)[0] for k in kinds], dtype=np.int64)
    return first + rng.integers(0, 3, len(s)), [f"star={k}" for k in kinds]


def superposition(
    rng: np.random.Generator, primary: np.ndarray, z: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """A foreground object on the quasar's fibre: an emission-line galaxy at z_gal < z_qso or a star.

    The foreground's r-band flux is 0.15 (subtle) to 1 (obvious) times the quasar's; the sum keeps the
    quasar's r-band flux, so superpositions have the magnitudes of normal quasars.
    """
    n = len(z)
    is_star = rng.random(n) < 0.5
    z_gal = rng.uniform(0.02, np.clip(z - 0.05, 0.05, 1.5))
    which = rng.choice(len(templates()["star_type"]), n)
    second = np.where(
        is_star[:, None],
        star_spectra(which, rng.normal(0.0, 80.0, n)),
        galaxy_spectra(rng, z_gal, np.ones(n, dtype=bool)),
    )
    ratio = 0.15 + 0.85 * s
    r_primary = band_nmgy(primary, "r")
    second *= (ratio * r_primary / np.maximum(band_nmgy(second, "r"), 1e-30))[:, None]
    total = (primary + second) / (1 + ratio)[:, None]
    kinds = [
        f"star={t}" if star else f"galaxy z={zg:.3f}"
        for star, t, zg in zip(is_star, templates()["star_type"][which], z_gal, strict=True)
    ]
    return total, [f"foreground {k} flux_ratio={r:.2f}" for k, r in zip(kinds, ratio, strict=True)]


def _arm_jump(arms: Arms, row: int, s: float, rng: np.random.Generator) -> str:
    """One arm's flux calibration off by 5-50 %: a jump at the arm boundary."""
    arm = str(rng.choice(["B", "R", "Z"]))
    factor = 1 + (0.05 + 0.45 * s) * rng.choice([-1.0, 1.0])
    arms[arm]["flux"][row] *= factor
    arms[arm]["ivar"][row] /= factor**2
    return f"arm_jump arm={arm} factor={factor:.3f}"


def _spikes(arms: Arms, row: int, s: float, rng: np.random.Generator) -> str:
    """A few (2-5) spurious 1-2-pixel spikes of 5-50 σ at random places, not flagged in the mask."""
    count = 2 + int(round(3 * s))
    amp = 5.0 + 45.0 * s
    where = []
    for _ in range(count):
        arm = str(rng.choice(["B", "R", "Z"]))
        d = arms[arm]
        good = np.flatnonzero((d["ivar"][row] > 0) & (d["mask"][row] == 0))
        col = int(rng.choice(good[:-1]))
        width = int(rng.integers(1, 3))
        d["flux"][row, col : col + width] += amp / np.sqrt(d["ivar"][row, col : col + width].clip(1e-30))
        where.append(f"{arm}{col}x{width}")
    return f"spikes n={count} amp_sigma={amp:.1f} at={','.join(where)}"


def artifact(arms: Arms, rows: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Instrumental defects after extraction, alternating an arm's calibration jump and spurious spikes."""
    kinds = (_arm_jump, _spikes)
    return [kinds[k % 2](arms, row, strength, rng) for k, (row, strength) in enumerate(zip(rows, s, strict=True))]
