"""One DESI coadd (+ its redrock file, or a QSO catalogue) → ``raw_spectra`` rows and a ledger row per input row.

Bad input never raises from :func:`read_spectra_file`: it is quarantined in the ledger
(:mod:`qad_assets.science.spectra.ledger`); the lower-level readers raise
:class:`~qad_assets.errors.DesiFormatError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa

from qad_assets.errors import DesiFormatError, UserError
from qad_assets.science.io.coadd import CoaddArms, open_coadd
from qad_assets.science.io.fits_file import open_fits, required_column
from qad_assets.science.io.fits_headers import fibermap_rows
from qad_assets.science.io.redshifts import QsoCatalog, cached_qso_catalog, match_redshifts, read_redshifts
from qad_assets.science.spectra import ledger as lg
from qad_assets.science.spectra.arms import NPIX, merge_arms
from qad_assets.science.spectra.selection import (
    flag_bad_redshifts,
    flag_no_rest_pixels,
    pixel_reasons,
    selection_reasons,
)
from qad_assets.science.spectra.snr import arm_snr


def _list_of(kind: pa.DataType) -> pa.DataType:
    return pa.list_(kind, NPIX)


RAW_SPECTRA_SCHEMA = pa.schema(
    [
        pa.field("TARGETID", pa.int64()),
        pa.field("release", pa.string()),
        pa.field("survey", pa.string()),
        pa.field("program", pa.string()),
        pa.field("healpix", pa.int32()),
        pa.field("Z", pa.float64()),
        pa.field("ZERR", pa.float64()),
        pa.field("ZWARN", pa.int64()),
        pa.field("Z_SOURCE", pa.string()),
        pa.field("TARGET_RA", pa.float64()),
        pa.field("TARGET_DEC", pa.float64()),
        pa.field("flux", _list_of(pa.float32())),
        pa.field("ivar", _list_of(pa.float32())),
        pa.field("good", _list_of(pa.bool_())),
        pa.field("snr_b", pa.float32()),
        pa.field("snr_r", pa.float32()),
        pa.field("snr_z", pa.float32()),
    ]
)


@dataclass(frozen=True)
class ReadResult:
    """Kept quasars (``RAW_SPECTRA_SCHEMA``) and the ledger of every input row (``LEDGER_SCHEMA``)."""

    spectra: pa.Table
    ledger: pa.Table


def read_spectra_file(
    coadd: str | os.PathLike[str],
    redrock: str | os.PathLike[str] | None,
    *,
    release: str,
    qso_catalog: QsoCatalog | str | os.PathLike[str] | None = None,
    catalog_z: bool = True,
    fs: fsspec.AbstractFileSystem | None = None,
    archive_root: str | None = None,
    expected_header: Mapping[str, str | int] | None = None,
) -> ReadResult:
    """Read one coadd into ``raw_spectra`` rows (quasars only) and a ledger row for every FIBERMAP row.

    Each row gets the first reason that applies, in this order (filtered = not a usable quasar,
    quarantined = bad input; filters act before pixel checks, so a SKY fiber with no data is filtered):

    * file-level, quarantined (every FIBERMAP row: with its TARGETID if the FIBERMAP still reads, else
      with the row count its header announces and no TARGETID when that table fits in the file, else one
      row -1, which the ledger balances against: :func:`~qad_assets.science.io.fits_headers.fibermap_rows`):
      ``corrupt_fits`` (unreadable or truncated, naming the HDU where it breaks), ``checksum_mismatch``
      (an HDU read fails its recorded DATASUM/CHECKSUM), ``not_a_file`` (a directory or a symbolic link
      loop), ``missing_hdu``, ``missing_column``, ``shape_mismatch``, ``bad_wavelength`` (coadd);
      ``header_mismatch`` (a PRIMARY keyword differs from ``expected_header``, e.g. HPXPIXEL from the
      pixel its path names); ``bad_redrock`` (redrock file unreadable); ``missing_redrock`` (no redrock
      file and no QSO catalogue redshifts to fall back on).
    * filtered: ``unassigned_fiber`` (TARGETID <= 0), ``not_target`` (OBJTYPE != TGT, when the column
      exists), ``bad_fiberstatus`` (``COADD_FIBERSTATUS & ~8``, when it exists);
    * row-level, quarantined: ``duplicate_targetid`` (every copy not filtered above),
      ``redrock_mismatch`` (no single REDSHIFTS row with that row's TARGETID: redrock rows are matched
      by TARGETID, whatever their order);
    * filtered: with a QSO catalogue, ``not_in_qso_catalog`` (membership replaces the redrock test, since
      the catalogue adds afterburner quasars redrock calls GALAXY); without one, ``not_qso`` (SPECTYPE !=
      QSO) then ``zwarn`` (ZWARN != 0);
    * row-level, quarantined: ``bad_redshift`` (the row's Z, whichever source gives it, NaN/inf or outside
      ``selection.Z_RANGE``: redrock writes Z=-3 or NaN for failed fits, and such a row has no rest frame),
      ``nonfinite`` (NaN/inf ivar at a mask == 0 pixel, or NaN/inf flux where
      ivar > 0 and mask == 0), ``negative_ivar`` (any pixel), ``no_good_pixels``, ``no_rest_pixels`` (no
      good pixel lands on the rest-frame grid at the row's Z: nothing would be left to score).

    Z and ZERR come from the catalogue when one is given and ``catalog_z`` (ZERR null if it has none),
    else from redrock; ``Z_SOURCE`` says which. ZWARN is redrock's (the catalogue's when there is no
    redrock file, null if neither). TARGET_RA/DEC come from the FIBERMAP, else the catalogue, else null.
    ``qso_catalog`` may be a path (read once and cached) or a ``QsoCatalog``; a bad catalogue raises
    ``DesiFormatError`` (it is configuration, not per-file input). ``file`` in the ledger is the coadd path
    relative to ``archive_root`` when it lies under it.

    Cost: the FIBERMAP and the redshifts decide the candidate rows before any spectrum is touched; only
    those rows of flux, ivar and mask are converted and merged (a DR1 coadd's rows are mostly galaxies and
    stars). The arrays are still read whole when they record checksums, to verify them; RESOLUTION never.
    """
    if redrock is None and (qso_catalog is None or not catalog_z):
        raise UserError("no redshift source: give a redrock file, or a QSO catalogue with catalog_z=True")
    catalog = (
        cached_qso_catalog(os.fspath(qso_catalog), fs) if isinstance(qso_catalog, str | os.PathLike) else qso_catalog
    )
    coadd, label = os.fspath(coadd), _file_label(os.fspath(coadd), archive_root)
    try:
        with open_coadd(coadd, fs) as opened:
            tid = opened.targetid
            if (mismatch := _header_mismatch(opened.header, expected_header)) is not None:
                return _failed_file(label, lg.reason("header_mismatch", mismatch), tid)
            rr = None
            if redrock is not None:
                try:
                    rr = match_redshifts(read_redshifts(redrock, fs), tid)
                except DesiFormatError as err:
                    return _failed_file(label, lg.reason("bad_redrock", err.reason), tid)
                except FileNotFoundError:
                    if catalog is None or not catalog_z:
                        return _failed_file(label, lg.reason("missing_redrock", os.fspath(redrock)), tid)
            cat_row = catalog.lookup(tid, opened.header.get("SURVEY")) if catalog is not None else None
            reasons = selection_reasons(opened, rr, cat_row)
            row_z = _row_redshifts(len(tid), rr, catalog, cat_row, catalog_z)
            flag_bad_redshifts(reasons, row_z)
            candidates = np.flatnonzero(reasons == "")
            # only the candidate quasars' rows of the arrays are converted (most rows of a coadd are not)
            arms = opened.arms(None if len(candidates) == len(tid) else candidates)
    except DesiFormatError as err:
        return _failed_file(label, err.reason, *_readable_rows(coadd, fs))
    flux, ivar, good = merge_arms(arms)
    found = pixel_reasons(arms, None, good)
    flag_no_rest_pixels(found, good, row_z[candidates])
    reasons[candidates] = found
    keep = reasons[candidates] == ""
    if not keep.all():  # rare: copy only when a candidate was quarantined
        flux, ivar, good = flux[keep], ivar[keep], good[keep]
    kept = candidates[keep]
    redshift = _redshifts(kept, row_z, rr, catalog, cat_row, catalog_z)
    spectra = _spectra_table(arms, release, kept, redshift, flux, ivar, good, catalog, cat_row)
    return ReadResult(spectra, lg.ledger_table(label, np.arange(len(tid)), tid, reasons))


def _file_label(path: str, archive_root: str | None) -> str:
    if archive_root:
        root = str(archive_root).rstrip("/") + "/"
        if path.startswith(root):
            return path[len(root) :]
    return path


def _readable_rows(path: str, fs: fsspec.AbstractFileSystem | None) -> tuple[np.ndarray | None, int | None]:
    """(TARGETIDs, row count) of a broken file, to quarantine it row by row: the TARGETIDs when its
    FIBERMAP still reads, else the row count its FIBERMAP header announces, else (None, None).

    The FIBERMAP is read only when its header's table fits in the file (:func:`fibermap_rows`): a corrupt
    ``NAXIS2`` must not make the reader allocate rows the file cannot hold.
    """
    count = fibermap_rows(path, fs)
    if count is None:
        return None, None
    try:
        with open_fits(path, fs, check_size=False, verify=False) as f:
            tid = required_column(f.table("FIBERMAP", ("TARGETID",)), "TARGETID", np.int64, path, "FIBERMAP")
        if count == len(tid):
            return tid, count
    except DesiFormatError:
        pass
    return None, count


def _header_mismatch(header: Mapping[str, Any], expected: Mapping[str, str | int] | None) -> str | None:
    """What differs between the PRIMARY header and the keywords the file's path implies (None: agrees).

    A keyword the header lacks is not checked (tile coadds have no HPXPIXEL, older files no SURVEY).
    """
    for key, want in (expected or {}).items():
        if key not in header:
            continue
        have = header[key]
        same = str(have).strip().lower() == str(want).strip().lower()
        if isinstance(want, int) and not isinstance(want, bool):
            try:
                same = int(have) == want
            except (TypeError, ValueError):
                same = False
        if not same:
            return f"{key}={have!r} in the header but {want!r} from the file's path"
    return None


def _failed_file(label: str, why: str, targetids: np.ndarray | None, n_rows: int | None = None) -> ReadResult:
    empty = RAW_SPECTRA_SCHEMA.empty_table()
    return ReadResult(empty, lg.file_failure(label, why, targetids, n_rows))


def _row_redshifts(
    n: int,
    rr: dict[str, np.ndarray] | None,
    catalog: QsoCatalog | None,
    cat_row: np.ndarray | None,
    catalog_z: bool,
) -> np.ndarray:
    """The Z each of the file's ``n`` rows would be kept with (NaN where its source has none), so that the
    redshift checked at ingestion is the one stored."""
    if catalog is None or not catalog_z:
        return rr["Z"]
    z = np.full(n, np.nan)
    found = cat_row >= 0
    z[found] = catalog.z[cat_row[found]]
    return z


def _redshifts(
    kept: np.ndarray,
    row_z: np.ndarray,
    rr: dict[str, np.ndarray] | None,
    catalog: QsoCatalog | None,
    cat_row: np.ndarray | None,
    catalog_z: bool,
) -> dict[str, pa.Array]:
    def null(kind: pa.DataType) -> pa.Array:
        return pa.nulls(kept.size, kind)

    def from_cat(values: np.ndarray | None, kind: pa.DataType) -> pa.Array:
        return null(kind) if values is None else pa.array(values[cat_row[kept]], kind)

    z = pa.array(row_z[kept], pa.float64())
    if catalog is not None and catalog_z:
        zerr, source = from_cat(catalog.zerr, pa.float64()), "qso_catalog"
    else:
        zerr, source = pa.array(rr["ZERR"][kept]), "redrock"
    zwarn = pa.array(rr["ZWARN"][kept], pa.int64()) if rr is not None else from_cat(catalog.zwarn, pa.int64())
    return {"Z": z, "ZERR": zerr, "ZWARN": zwarn, "Z_SOURCE": pa.array([source] * kept.size, pa.string())}


def _position(
    arms: CoaddArms,
    name: str,
    kept: np.ndarray,
    catalog_values: np.ndarray | None,
    cat_row: np.ndarray | None,
) -> pa.Array:
    if name in arms.fibermap:
        return pa.array(arms.fibermap[name][kept], pa.float64())
    if catalog_values is not None and cat_row is not None:
        return pa.array(catalog_values[cat_row[kept]], pa.float64())
    return pa.nulls(kept.size, pa.float64())


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    """(n, 7781) numpy -> fixed_size_list without Python loops (zero-copy for float32)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), NPIX)


def _spectra_table(
    arms: CoaddArms,
    release: str,
    kept: np.ndarray,
    redshift: dict[str, pa.Array],
    flux: np.ndarray,
    ivar: np.ndarray,
    good: np.ndarray,
    catalog: QsoCatalog | None = None,
    cat_row: np.ndarray | None = None,
) -> pa.Table:
    n = kept.size
    hdr = arms.header
    healpix = int(hdr["HPXPIXEL"]) if "HPXPIXEL" in hdr else -1

    def const(value: Any, kind: pa.DataType) -> pa.Array:
        return pa.array([value] * n, kind)

    columns = {
        "TARGETID": pa.array(arms.targetid[kept], pa.int64()),
        "release": const(release, pa.string()),
        "survey": const(hdr.get("SURVEY"), pa.string()),
        "program": const(hdr.get("PROGRAM"), pa.string()),
        "healpix": const(healpix, pa.int32()),
        **redshift,
        "TARGET_RA": _position(arms, "TARGET_RA", kept, catalog.target_ra if catalog else None, cat_row),
        "TARGET_DEC": _position(arms, "TARGET_DEC", kept, catalog.target_dec if catalog else None, cat_row),
        "flux": _fixed_list(flux),
        "ivar": _fixed_list(ivar),
        "good": _fixed_list(good),
        **arm_snr(flux, ivar, good),
    }
    return pa.Table.from_arrays([columns[f.name] for f in RAW_SPECTRA_SCHEMA], schema=RAW_SPECTRA_SCHEMA)
