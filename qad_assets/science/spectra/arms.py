"""DESI's three spectrograph arms: their wavelength grids, where they overlap, and merging them.

DESI's B, R and Z arms sample vacuum wavelength on one linear 0.8 Å grid and overlap at the dichroic
edges (B 3600–5800 Å, R 5760–7620 Å, Z 7520–9824 Å). Everything the pipeline knows about the arms is
defined here once: the per-arm and merged ``brz`` grids, how a coadd's arms are merged onto the ``brz``
grid (exactly as ``desispec.coaddition.coadd_cameras``, vectorized over spectra), and which arm a
rest-frame pixel was observed in. Plain numpy, no Dagster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qad_assets.errors import DesiFormatError
from qad_assets.science.spectra import ledger as lg

if TYPE_CHECKING:
    from qad_assets.science.io.coadd import CoaddArms
    from qad_assets.science.spectra.rest_frame import RestFrameGrid


def _grid(first: float, last: float) -> np.ndarray:
    """A read-only linear 0.8 Å grid (DESI's vacuum wavelength grids are exactly this)."""
    wave = np.linspace(first, last, round((last - first) / WAVE_STEP) + 1)
    wave.flags.writeable = False
    return wave


WAVE_STEP = 0.8
ARMS = ("B", "R", "Z")
ARM_WAVE = {"B": _grid(3600.0, 5800.0), "R": _grid(5760.0, 7620.0), "Z": _grid(7520.0, 9824.0)}
BRZ_WAVE = _grid(3600.0, 9824.0)
NPIX = BRZ_WAVE.size  # 7781
WAVE_TOLERANCE = 1e-4  # Å; the alignment tolerance of desispec's coadd_cameras


def arm_offset(wave: np.ndarray, path: str, arm: str) -> int:
    """Index of an arm's first pixel on ``BRZ_WAVE``; the arm must lie on the grid within 1e-4 Å."""
    if wave.size == 0:
        raise DesiFormatError(path, -1, lg.reason("bad_wavelength", f"{arm}_WAVELENGTH is empty"))
    off = round((float(wave[0]) - BRZ_WAVE[0]) / WAVE_STEP)
    ok = off >= 0 and off + wave.size <= NPIX
    if not ok or np.abs(wave - BRZ_WAVE[off : off + wave.size]).max() > WAVE_TOLERANCE:
        detail = f"{arm}_WAVELENGTH {wave[0]:.3f}-{wave[-1]:.3f} is not on the 0.8 A brz grid"
        raise DesiFormatError(path, -1, lg.reason("bad_wavelength", detail))
    return off


# --------------------------------------------------------------------------------------------------------
# Arm merging (vectorized over spectra; a loop over at most five wavelength segments)


def _segments(arms: CoaddArms) -> list[tuple[int, int, list[tuple[str, int]]]]:
    """``(start, stop, [(arm, first pixel of the segment in that arm)])`` runs of the brz grid covered by
    the same set of arms: one arm = copy, two arms = overlap (desispec's ``overlap_flag``)."""
    offsets = {arm: arm_offset(arms.wave[arm], arms.path, arm) for arm in ARMS}
    cover = np.zeros(NPIX, np.int64)
    for bit, arm in enumerate(ARMS):
        cover[offsets[arm] : offsets[arm] + arms.wave[arm].size] |= 1 << bit
    edges = [0, *(np.flatnonzero(np.diff(cover)) + 1).tolist(), NPIX]
    return [
        (
            start,
            stop,
            [(arm, start - offsets[arm]) for bit, arm in enumerate(ARMS) if cover[start] >> bit & 1],
        )
        for start, stop in zip(edges[:-1], edges[1:], strict=True)
    ]


def rows_block(arr: np.ndarray, rows: np.ndarray | None, lo: int, hi: int) -> np.ndarray:
    return arr[:, lo:hi] if rows is None else arr[rows, lo:hi]


def merge_arms(arms: CoaddArms, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge B/R/Z onto ``BRZ_WAVE``: ``(flux, ivar, good)``, float32/float32/bool, shape (nrows, 7781).

    As ``desispec.coaddition.coadd_cameras``: a plain copy where one arm covers the grid, the ivar-weighted
    mean ``sum(ivar*flux)/sum(ivar)`` (in float64) with ``ivar = sum(ivar)`` in the overlaps. One deliberate
    difference: an arm pixel with ``mask != 0`` gets zero weight (desispec 0.70 ignores the mask when it
    weights, then clears it wherever ivar > 0). DESI coadds never have mask != 0 with ivar > 0, so the two
    agree on real coadds; this way ``good = (ivar > 0) & (mask == 0)`` holds on the merged grid. Where not
    good, ivar and flux are 0 (desispec keeps a meaningless flux there). ``rows`` selects spectra among
    the rows the arrays hold.
    """
    n = arms.flux[ARMS[0]].shape[0] if rows is None else len(rows)  # the rows the arrays hold
    flux = np.zeros((n, NPIX), np.float32)
    ivar = np.zeros((n, NPIX), np.float32)
    good = np.zeros((n, NPIX), bool)
    for start, stop, parts in _segments(arms):
        pieces = [
            tuple(rows_block(src[arm], rows, lo, lo + stop - start) for src in (arms.flux, arms.ivar, arms.mask))
            for arm, lo in parts
        ]
        out = (flux[:, start:stop], ivar[:, start:stop], good[:, start:stop])
        if len(pieces) == 1:
            _copy_segment(*pieces[0], *out)
        elif pieces:
            _mean_segment(pieces, *out)
    return flux, ivar, good


def _copy_segment(f: np.ndarray, iv: np.ndarray, m: np.ndarray, out_f, out_iv, out_g) -> None:
    np.greater(iv, 0, out=out_g)
    out_g &= m == 0
    np.copyto(out_iv, iv, where=out_g)
    np.copyto(out_f, f, where=out_g)


def _mean_segment(pieces: list[tuple[np.ndarray, ...]], out_f, out_iv, out_g) -> None:
    num = np.zeros(out_f.shape, np.float64)
    den = np.zeros(out_f.shape, np.float64)
    for f, iv, m in pieces:
        use = (iv > 0) & (m == 0)
        weight = np.where(use, iv, 0).astype(np.float64)
        den += weight
        num += np.where(use, weight * f, 0.0)  # NaN-safe: masked pixels never reach the sum
    np.greater(den, 0, out=out_g)
    out_iv[...] = den
    out_f[...] = num / np.where(out_g, den, 1.0)


#: Observed-frame arms (Å). DESI's arms overlap (B 3600–5800, R 5760–7620, Z 7520–9824); a pixel in
#: an overlap goes to the arm whose half of the overlap it is in, so the arms partition the spectrum.
ARM_EDGES: dict[str, tuple[float, float]] = {"b": (3600.0, 5780.0), "r": (5780.0, 7570.0), "z": (7570.0, 9824.0)}


def arm_index(grid: RestFrameGrid, z: np.ndarray) -> np.ndarray:
    """Index into :data:`ARM_EDGES` (0 b, 1 r, 2 z) of each rest pixel observed at λ·(1 + z); −1 outside."""
    observed = grid.wave[None, :] * (1.0 + np.asarray(z, np.float64)[:, None])
    bounds = [lo for lo, _ in ARM_EDGES.values()] + [ARM_EDGES["z"][1]]
    index = np.searchsorted(bounds, observed, side="right") - 1
    return np.where((index >= 0) & (index < len(ARM_EDGES)), index, -1).astype(np.int8)
