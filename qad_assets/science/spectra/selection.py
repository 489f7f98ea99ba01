"""Which rows of a coadd are usable quasars, and which pixels are bad: the ingestion ledger's reasons.

Every FIBERMAP row gets the first reason that applies (``''`` = candidate quasar); the codes are those
of :mod:`qad_assets.science.spectra.ledger`. Vectorized over rows; plain numpy, no Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from qad_assets.science.spectra import ledger as lg
from qad_assets.science.spectra.arms import ARMS, BRZ_WAVE, rows_block
from qad_assets.science.spectra.rest_frame import REST_GRID, RestFrameGrid

if TYPE_CHECKING:
    from qad_assets.science.io.coadd import CoaddArms, CoaddFile

INFO_FIBERSTATUS = 8  # RESTRICTED: informational, a good fiber (DESI treats 0 and 8 as good)
#: Redshifts the pipeline handles, at ingestion and in the service. Above z ≈ 6 DESI's band (3600–9824 Å)
#: leaves fewer than 1000 rest pixels on the grid, all blueward of 1400 Å, and no training quasar looks
#: like that; below 0 (redrock's failed fits, Z=-3) or NaN there is no rest frame at all.
Z_RANGE = (0.0, 6.0)


def flag_rows(
    reasons: np.ndarray, hit: np.ndarray, code: str, detail: Callable[[np.ndarray], list[str]] | None = None
) -> None:
    """Give the rows in ``hit`` that have no reason yet the reason ``code`` (+ a per-row detail)."""
    rows = np.flatnonzero(hit & (reasons == ""))
    if rows.size:
        details = detail(rows) if detail is not None else [""] * rows.size
        reasons[rows] = [lg.reason(code, d) for d in details]


def selection_reasons(
    arms: CoaddArms | CoaddFile, rr: dict[str, np.ndarray] | None, cat_row: np.ndarray | None
) -> np.ndarray:
    """Per-row reason ('' = candidate quasar) from the FIBERMAP, redrock and the QSO catalogue. ``rr`` is
    the redrock table matched to the coadd's rows by TARGETID (with its ``MATCHES`` count per row).
    """
    fm, tid = arms.fibermap, arms.targetid
    reasons = np.full(len(tid), "", dtype=object)
    flag_rows(
        reasons,
        tid <= 0,
        "unassigned_fiber",
        lambda r: ["TARGETID<0" if tid[i] < 0 else "TARGETID=0" for i in r],
    )
    if "OBJTYPE" in fm:
        flag_rows(
            reasons,
            fm["OBJTYPE"] != "TGT",
            "not_target",
            lambda r: [f"OBJTYPE={v}" for v in fm["OBJTYPE"][r]],
        )
    if "COADD_FIBERSTATUS" in fm:
        status = fm["COADD_FIBERSTATUS"]
        bad = (status & ~INFO_FIBERSTATUS) != 0
        flag_rows(reasons, bad, "bad_fiberstatus", lambda r: [f"COADD_FIBERSTATUS={v}" for v in status[r]])
    _, inverse, count = np.unique(tid, return_inverse=True, return_counts=True)
    repeats = count[inverse]
    flag_rows(reasons, repeats > 1, "duplicate_targetid", lambda r: [f"TARGETID={tid[i]} x{repeats[i]}" for i in r])
    if rr is not None:  # rows of a redrock file lined up by TARGETID (redshifts.match_redshifts)
        matches = rr["MATCHES"]
        flag_rows(
            reasons,
            matches != 1,
            "redrock_mismatch",
            lambda r: [f"{matches[i]} REDSHIFTS rows with TARGETID={tid[i]}" for i in r],
        )
    if cat_row is not None:
        flag_rows(reasons, cat_row < 0, "not_in_qso_catalog")
    else:
        spectype, zwarn = rr["SPECTYPE"], rr["ZWARN"]
        flag_rows(reasons, spectype != "QSO", "not_qso", lambda r: [f"SPECTYPE={v}" for v in spectype[r]])
        flag_rows(reasons, zwarn != 0, "zwarn", lambda r: [f"ZWARN={v}" for v in zwarn[r]])
    return reasons


def flag_bad_redshifts(reasons: np.ndarray, z: np.ndarray) -> None:
    """Quarantine the candidates whose redshift is NaN/inf or outside :data:`Z_RANGE` (``bad_redshift``):
    such a row has no observed pixel in the rest frame, so it would be normalized to ivar = 0 everywhere
    and scored on nothing."""
    lo, hi = Z_RANGE
    with np.errstate(invalid="ignore"):
        bad = ~((z >= lo) & (z <= hi))
    flag_rows(reasons, bad, "bad_redshift", lambda r: [f"Z={z[i]:g} outside [{lo:g}, {hi:g}]" for i in r])


def flag_no_rest_pixels(reasons: np.ndarray, good: np.ndarray, z: np.ndarray, grid: RestFrameGrid = REST_GRID) -> None:
    """Quarantine the rows (``good``: their merged ``brz`` good pixels) none of whose good pixels land on the
    rest-frame grid at their redshift (``no_rest_pixels``): normalized, such a row has ivar = 0 everywhere,
    nothing to score, and must not be ranked."""
    lo, hi = grid.edges[0], grid.edges[-1]
    first, stop = np.searchsorted(BRZ_WAVE, lo * (1 + z)), np.searchsorted(BRZ_WAVE, hi * (1 + z))
    pixel = np.arange(good.shape[1])
    on_grid = (good & (pixel >= first[:, None]) & (pixel < stop[:, None])).any(axis=1)
    flag_rows(
        reasons, ~on_grid, "no_rest_pixels", lambda r: [f"none in {lo:.0f}-{hi:.0f} A rest at Z={z[i]:g}" for i in r]
    )


def _all_finite(values: np.ndarray) -> bool:
    """No NaN or inf (min and max propagate NaN), without a boolean temporary."""
    return values.size == 0 or bool(np.isfinite(values.min()) and np.isfinite(values.max()))


def bad_pixels(flux: np.ndarray, ivar: np.ndarray, unmasked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ingestion's pixel rules, per pixel: (``nonfinite``: NaN/inf ivar where the mask is 0, or NaN/inf
    flux where also ivar > 0; ``negative_ivar``: ivar < 0 anywhere). A row with either is quarantined.
    """
    nonfinite = unmasked & (~np.isfinite(ivar) | ((ivar > 0) & ~np.isfinite(flux)))
    return nonfinite, ivar < 0


def pixel_reasons(arms: CoaddArms, rows: np.ndarray | None, good: np.ndarray) -> np.ndarray:
    """Per candidate row: ``nonfinite``, ``negative_ivar``, ``no_good_pixels`` or ''."""
    n = good.shape[0]
    nonfinite = np.zeros(n, bool)
    negative = np.zeros(n, bool)
    for arm in ARMS:
        f, iv = arms.flux[arm], arms.ivar[arm]
        if _all_finite(f) and _all_finite(iv) and (iv.size == 0 or iv.min() >= 0):
            continue  # the usual case, decided by four SIMD reductions over the whole arm
        f, iv = rows_block(f, rows, 0, f.shape[1]), rows_block(iv, rows, 0, iv.shape[1])
        bad, below_zero = bad_pixels(f, iv, rows_block(arms.mask[arm], rows, 0, f.shape[1]) == 0)
        nonfinite |= bad.any(axis=1)
        negative |= below_zero.any(axis=1)
    reasons = np.full(n, "", dtype=object)
    flag_rows(reasons, nonfinite, "nonfinite", lambda r: ["NaN/inf flux or ivar at a good pixel"] * r.size)
    flag_rows(reasons, negative, "negative_ivar")
    flag_rows(reasons, ~good.any(axis=1), "no_good_pixels", lambda r: ["ivar=0 or mask!=0 everywhere"] * r.size)
    return reasons
