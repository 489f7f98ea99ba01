"""DESI file I/O: healpix and tile coadds, redrock redshifts, the QSO catalogue -> our ``raw_spectra`` rows.

All DESI file reading of the pipeline lives here, as plain science code (no Dagster import), following the
DESI data model: HDUs are found by EXTNAME (never by index; compressed mask HDUs only decompress that way),
``good = (ivar > 0) & (mask == 0)`` (the mask alone is not trusted), and the three arms are merged onto the
7781-pixel ``brz`` grid exactly as ``desispec.coaddition.coadd_cameras`` does.

Local paths are read with fitsio (C, native byte order, fast); any fsspec URL (``file://``, ``s3://``,
``https://``…) or an explicit ``fs`` is opened with fsspec and the file object handed to astropy, which seeks
past the RESOLUTION HDUs instead of reading them. Bad input never raises from ``read_spectra_file``: it is
quarantined in the ledger (:mod:`qad_assets.science.ledger`); the lower-level readers raise
:class:`DesiFormatError`.
"""

from __future__ import annotations

import functools
import gzip
import mmap
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import fitsio
import fsspec
import numpy as np
import pyarrow as pa
from astropy.io import fits

from qad_assets.science import ledger as lg

__all__ = [
    "ARMS",
    "ARM_WAVE",
    "BRZ_WAVE",
    "NPIX",
    "RAW_SPECTRA_SCHEMA",
    "CoaddArms",
    "DesiFormatError",
    "QsoCatalog",
    "ReadResult",
    "merge_arms",
    "read_coadd",
    "read_qso_catalog",
    "read_redshifts",
    "read_spectra_file",
]


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

FIBERMAP_COLUMNS = ("TARGETID", "OBJTYPE", "COADD_FIBERSTATUS", "TARGET_RA", "TARGET_DEC")
REDSHIFT_COLUMNS = ("TARGETID", "Z", "ZERR", "ZWARN", "SPECTYPE", "SUBTYPE", "DELTACHI2")
QSO_CATALOG_COLUMNS = ("TARGETID", "Z", "ZERR", "ZWARN", "TARGET_RA", "TARGET_DEC", "SURVEY")
INFO_FIBERSTATUS = 8  # RESTRICTED: informational, a good fiber (DESI treats 0 and 8 as good)
_IMAGE_KINDS = ("WAVELENGTH", "FLUX", "IVAR", "MASK")
_COADD_HDUS = ("FIBERMAP", *(f"{arm}_{kind}" for arm in ARMS for kind in _IMAGE_KINDS))


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


class DesiFormatError(Exception):
    """Bad DESI input. ``row`` is -1 for the whole file; ``reason`` is a ledger reason (``code: detail``)."""

    def __init__(self, path: str, row: int, reason: str) -> None:
        super().__init__(f"{path}, row {row}: {reason}")
        self.path = str(path)
        self.row = int(row)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, int, str]]:  # picklable across Ray / Dagster workers
        return (type(self), (self.path, self.row, self.reason))


# --------------------------------------------------------------------------------------------------------
# FITS access by EXTNAME: fitsio for local paths, astropy for fsspec file objects.


def _native(values: Any) -> np.ndarray:
    """A native-byte-order numpy array; FITS strings become stripped ``str``."""
    arr = np.asarray(values)
    if arr.dtype.kind in "SU":
        return np.char.strip(arr.astype(str))
    if arr.dtype.byteorder not in "=|":
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


_REMOTE_BLOCK = 1 << 18  # bytes; fsspec read-ahead for remote files
# Not bad data: the bytes could not be reached. These propagate (retry), everything else is quarantined.
_TRANSPORT_ERRORS = (FileNotFoundError, IsADirectoryError, PermissionError, ConnectionError, TimeoutError)
_BITPIX = {
    8: np.dtype("u1"),
    16: np.dtype(">i2"),
    32: np.dtype(">i4"),
    64: np.dtype(">i8"),
    -32: np.dtype(">f4"),
    -64: np.dtype(">f8"),
}


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]


class _FitsFile:
    """One open FITS file, HDUs by EXTNAME. Failing to decode its bytes raises ``DesiFormatError``;
    failing to reach them (missing file, permissions, network) raises the I/O error itself: that is
    not bad data, and the caller should retry rather than quarantine."""

    def __init__(self, path: str, fs: fsspec.AbstractFileSystem | None, check_size: bool) -> None:
        self.path = path
        self._raw: Any = None
        self._map: mmap.mmap | None = None
        self._fx: fitsio.FITS | None = None
        self._hdul: fits.HDUList | None = None
        try:
            local = fs is None and "://" not in path
            if local:
                self._raw = open(path, "rb")  # noqa: SIM115 - held open for the memory map
            else:
                fs, where = (fs, path) if fs is not None else fsspec.core.url_to_fs(path)
                # small read-ahead blocks: a header read after a seek must not pull megabytes of RESOLUTION
                self._raw = fs.open(where, "rb", block_size=_REMOTE_BLOCK)
            size, end, gzipped = self._guard("", self._parse_local if local else self._parse_fsspec)
            if check_size and not gzipped and size < end:
                raise DesiFormatError(path, -1, lg.reason("corrupt_fits", f"truncated: {size} of {end} bytes"))
        except BaseException:
            self.close()
            raise

    def _parse_local(self) -> tuple[int, int, bool]:
        """fitsio for headers and tables, a read-only memory map for plain images."""
        gzipped = self._raw.read(2) == b"\x1f\x8b"
        size = os.fstat(self._raw.fileno()).st_size
        self._fx = fitsio.FITS(self.path)
        n = len(self._fx)
        self.names = frozenset(self._fx[i].get_extname().upper() for i in range(n))
        if not gzipped and size:
            self._map = mmap.mmap(self._raw.fileno(), 0, access=mmap.ACCESS_READ)
        return size, self._fx[n - 1].get_offsets()["data_end"], gzipped

    def _parse_fsspec(self) -> tuple[int, int, bool]:
        """astropy on an fsspec file object: headers are parsed, data is read only when asked for."""
        gzipped = self._raw.read(2) == b"\x1f\x8b"
        size = self._raw.seek(0, os.SEEK_END)
        self._raw.seek(0)
        source = gzip.GzipFile(fileobj=self._raw) if gzipped else self._raw
        with warnings.catch_warnings():  # truncation is checked by the caller, with a clear reason
            warnings.filterwarnings("ignore", message="File may have been truncated")
            self._hdul = fits.open(source, memmap=False, lazy_load_hdus=True, cache=False)
            n = len(self._hdul)  # reads every header, no data
        self.names = frozenset(hdu.name.upper() for hdu in self._hdul)
        info = self._hdul[n - 1].fileinfo()
        return size, info["datLoc"] + info["datSpan"], gzipped

    def close(self) -> None:
        for thing in (self._hdul, self._fx, self._map, self._raw):
            if thing is not None:
                thing.close()

    def need(self, name: str) -> None:
        if name not in self.names:
            raise DesiFormatError(self.path, -1, lg.reason("missing_hdu", name))

    def _guard(self, what: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except (DesiFormatError, *_TRANSPORT_ERRORS):
            raise
        except Exception as exc:  # any other failure to decode untrusted bytes is bad input
            detail = f"{what}: {_short(exc)}" if what else _short(exc)
            raise DesiFormatError(self.path, -1, lg.reason("corrupt_fits", detail)) from exc

    def primary_header(self) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            hdr = self._fx[0].read_header() if self._fx is not None else self._hdul[0].header
            keys = list(hdr.keys())  # fitsio's FITSHDR is not iterable like a dict
            return {k: hdr[k] for k in keys if k and k not in ("COMMENT", "HISTORY")}

        return self._guard("PRIMARY", read)

    def image(self, name: str) -> np.ndarray:
        self.need(name)
        if self._fx is not None:
            return self._guard(name, lambda: self._fitsio_image(name))
        return self._guard(name, lambda: _native(self._hdul[name].data))

    def _fitsio_image(self, name: str) -> np.ndarray:
        mapped = self._mapped_image(name)
        return mapped if mapped is not None else _native(self._fx[name].read())

    def _mapped_image(self, name: str) -> np.ndarray | None:
        """A plain (uncompressed, unscaled) image straight from the memory map: one byte-swapping copy,
        about 3x faster than fitsio's read. None when the HDU needs fitsio (compressed, scaled, gzip)."""
        hdu = self._fx[name]
        if self._map is None or hdu.is_compressed():
            return None
        hdr = hdu.read_header()
        dtype = _BITPIX.get(hdr.get("BITPIX"))
        bzero, bscale = hdr.get("BZERO", 0), hdr.get("BSCALE", 1)
        unsigned = hdr.get("BITPIX") == 32 and bzero == 2**31
        if dtype is None or bscale != 1 or (bzero != 0 and not unsigned):
            return None
        shape = tuple(hdu.get_dims())
        start = hdu.get_offsets()["data_start"]
        count = int(np.prod(shape))
        if start + count * dtype.itemsize > len(self._map):
            raise DesiFormatError(self.path, -1, lg.reason("corrupt_fits", f"{name}: data past the end of file"))
        raw = np.frombuffer(self._map, dtype=">u4" if unsigned else dtype, count=count, offset=start)
        out = raw.astype(raw.dtype.newbyteorder("=")).reshape(shape)
        del raw  # no view may outlive the map
        if unsigned:
            out ^= np.uint32(2**31)  # int32 on disk + BZERO 2**31 = uint32
        return out

    def table(self, name: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """The requested columns that exist (FIBERMAP columns vary between productions)."""
        self.need(name)

        def read() -> dict[str, np.ndarray]:
            if self._fx is not None:
                hdu = self._fx[name]
                present = [c for c in columns if c in {n.upper() for n in hdu.get_colnames()}]
                data = hdu.read(columns=present) if present else None
            else:
                hdu = self._hdul[name]
                present = [c for c in columns if c in {n.upper() for n in hdu.columns.names}]
                data = hdu.data if present else None
            return {c: _native(data[c]) for c in present}

        return self._guard(name, read)


@contextmanager
def _open_fits(path: str, fs: fsspec.AbstractFileSystem | None, check_size: bool = True) -> Iterator[_FitsFile]:
    f = _FitsFile(path, fs, check_size)
    try:
        yield f
    finally:
        f.close()


def _column(table: dict[str, np.ndarray], name: str, dtype: Any, path: str, hdu: str) -> np.ndarray:
    """A required column converted to ``dtype``, or a ``missing_column`` DesiFormatError."""
    if name not in table:
        raise DesiFormatError(path, -1, lg.reason("missing_column", f"{hdu}.{name}"))
    try:
        return table[name].astype(dtype, copy=False)
    except (TypeError, ValueError) as exc:
        raise DesiFormatError(path, -1, lg.reason("corrupt_fits", f"{hdu}.{name}: {_short(exc)}")) from exc


# --------------------------------------------------------------------------------------------------------
# Coadds


@dataclass
class CoaddArms:
    """The parts of a coadd we use, per arm (``B``/``R``/``Z``); RESOLUTION is never read.

    ``fibermap`` holds the FIBERMAP columns of ``FIBERMAP_COLUMNS`` that the file has (only TARGETID is
    required; productions differ), ``header`` the PRIMARY header (SURVEY, PROGRAM, HPXPIXEL, SPGRP,
    TILEID… as present). Arrays are native-endian: flux/ivar float32 and mask uint32 of shape
    (nspec, npix_arm), wave float64 (npix_arm,).
    """

    path: str
    header: dict[str, Any]
    fibermap: dict[str, np.ndarray]
    wave: dict[str, np.ndarray]
    flux: dict[str, np.ndarray]
    ivar: dict[str, np.ndarray]
    mask: dict[str, np.ndarray]

    @property
    def nspec(self) -> int:
        return len(self.fibermap["TARGETID"])

    @property
    def targetid(self) -> np.ndarray:
        return self.fibermap["TARGETID"]


def _as_uint32(mask: np.ndarray) -> np.ndarray:
    """Masks read as uint32 with BZERO=2**31 and as int32 without it (the writer's choice); same bits."""
    if mask.dtype.itemsize == 4 and mask.dtype.kind in "iu":
        return mask.view(np.uint32)
    return mask.astype(np.uint32)


def read_coadd(path_or_url: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> CoaddArms:
    """Read a healpix or tile coadd (or a ``spectra-*`` file) by EXTNAME, skipping RESOLUTION.

    File-level problems raise ``DesiFormatError(path, -1, reason)``: ``corrupt_fits`` (unreadable,
    truncated), ``missing_hdu``, ``missing_column`` (FIBERMAP.TARGETID), ``shape_mismatch`` (flux, ivar,
    mask, wavelength and FIBERMAP disagree) and ``bad_wavelength`` (an arm off the 0.8 Å ``brz`` grid).
    """
    path = os.fspath(path_or_url)
    with _open_fits(path, fs) as f:
        for name in _COADD_HDUS:  # all missing HDUs are found before any big read
            f.need(name)
        fibermap = f.table("FIBERMAP", FIBERMAP_COLUMNS)
        fibermap["TARGETID"] = _column(fibermap, "TARGETID", np.int64, path, "FIBERMAP")
        for name, dtype in (
            ("COADD_FIBERSTATUS", np.int64),
            ("TARGET_RA", np.float64),
            ("TARGET_DEC", np.float64),
        ):
            if name in fibermap:
                fibermap[name] = _column(fibermap, name, dtype, path, "FIBERMAP")
        header = f.primary_header()
        wave, flux, ivar, mask = {}, {}, {}, {}
        for arm in ARMS:
            wave[arm] = f.image(f"{arm}_WAVELENGTH").astype(np.float64, copy=False)
            flux[arm] = f.image(f"{arm}_FLUX").astype(np.float32, copy=False)
            ivar[arm] = f.image(f"{arm}_IVAR").astype(np.float32, copy=False)
            mask[arm] = _as_uint32(f.image(f"{arm}_MASK"))
    arms = CoaddArms(path, header, fibermap, wave, flux, ivar, mask)
    _check_shapes(arms)
    return arms


def _check_shapes(arms: CoaddArms) -> None:
    n = arms.nspec
    for arm in ARMS:
        wave = arms.wave[arm]
        if wave.ndim != 1:
            raise DesiFormatError(arms.path, -1, lg.reason("shape_mismatch", f"{arm}_WAVELENGTH {wave.shape}"))
        for kind, arr in (("FLUX", arms.flux[arm]), ("IVAR", arms.ivar[arm]), ("MASK", arms.mask[arm])):
            if arr.shape != (n, wave.size):
                detail = f"{arm}_{kind} {arr.shape} != ({n} FIBERMAP rows, {wave.size} {arm}_WAVELENGTH)"
                raise DesiFormatError(arms.path, -1, lg.reason("shape_mismatch", detail))
        _arm_offset(wave, arms.path, arm)


def _arm_offset(wave: np.ndarray, path: str, arm: str) -> int:
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
    offsets = {arm: _arm_offset(arms.wave[arm], arms.path, arm) for arm in ARMS}
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


def _block(arr: np.ndarray, rows: np.ndarray | None, lo: int, hi: int) -> np.ndarray:
    return arr[:, lo:hi] if rows is None else arr[rows, lo:hi]


def merge_arms(arms: CoaddArms, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge B/R/Z onto ``BRZ_WAVE``: ``(flux, ivar, good)``, float32/float32/bool, shape (nrows, 7781).

    As ``desispec.coaddition.coadd_cameras``: a plain copy where one arm covers the grid, the ivar-weighted
    mean ``sum(ivar*flux)/sum(ivar)`` (in float64) with ``ivar = sum(ivar)`` in the overlaps. One deliberate
    difference: an arm pixel with ``mask != 0`` gets zero weight (desispec 0.70 ignores the mask when it
    weights, then clears it wherever ivar > 0). DESI coadds never have mask != 0 with ivar > 0, so the two
    agree on real coadds; this way ``good = (ivar > 0) & (mask == 0)`` holds on the merged grid. Where not
    good, ivar and flux are 0 (desispec keeps a meaningless flux there). ``rows`` selects spectra.
    """
    n = arms.nspec if rows is None else len(rows)
    flux = np.zeros((n, NPIX), np.float32)
    ivar = np.zeros((n, NPIX), np.float32)
    good = np.zeros((n, NPIX), bool)
    for start, stop, parts in _segments(arms):
        pieces = [
            tuple(_block(src[arm], rows, lo, lo + stop - start) for src in (arms.flux, arms.ivar, arms.mask))
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


# --------------------------------------------------------------------------------------------------------
# Redshifts


def read_redshifts(path: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> dict[str, np.ndarray]:
    """The redrock ``REDSHIFTS`` HDU (TARGETID, Z, ZERR, ZWARN, SPECTYPE, SUBTYPE, DELTACHI2).

    Row-matched to the coadd by DESI's data model (the caller checks it). SUBTYPE and DELTACHI2 are
    filled ('' / NaN) when absent; the others are required (``missing_column``).
    """
    path = os.fspath(path)
    with _open_fits(path, fs) as f:
        table = f.table("REDSHIFTS", REDSHIFT_COLUMNS)
    out = {
        "TARGETID": _column(table, "TARGETID", np.int64, path, "REDSHIFTS"),
        "Z": _column(table, "Z", np.float64, path, "REDSHIFTS"),
        "ZERR": _column(table, "ZERR", np.float64, path, "REDSHIFTS"),
        "ZWARN": _column(table, "ZWARN", np.int64, path, "REDSHIFTS"),
        "SPECTYPE": _column(table, "SPECTYPE", str, path, "REDSHIFTS"),
    }
    n = len(out["TARGETID"])
    out["SUBTYPE"] = table.get("SUBTYPE", np.full(n, "")).astype(str)
    out["DELTACHI2"] = table.get("DELTACHI2", np.full(n, np.nan)).astype(np.float64)
    return out


@dataclass(frozen=True)
class QsoCatalog:
    """A DESI QSO catalogue (``QSO_CAT``), indexed by TARGETID; optional columns are None when absent."""

    targetid: np.ndarray
    z: np.ndarray
    zerr: np.ndarray | None = None
    zwarn: np.ndarray | None = None
    target_ra: np.ndarray | None = None
    target_dec: np.ndarray | None = None
    survey: np.ndarray | None = None
    _index: dict[str | None, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False, compare=False)

    def lookup(self, targetids: np.ndarray, survey: str | None = None) -> np.ndarray:
        """Catalogue row of each TARGETID, -1 where absent.

        When both the catalogue and the coadd name a survey, only that survey's rows match (a target
        observed in sv1 and sv3 has two rows). Duplicate rows left after that: the first one wins.
        """
        order, keys = self._sorted(survey if self.survey is not None else None)
        if keys.size == 0:
            return np.full(len(targetids), -1, np.int64)
        pos = np.minimum(np.searchsorted(keys, targetids), keys.size - 1)
        return np.where(keys[pos] == targetids, order[pos], -1)

    def _sorted(self, survey: str | None) -> tuple[np.ndarray, np.ndarray]:
        if survey not in self._index:
            rows = np.arange(self.targetid.size) if survey is None else np.flatnonzero(self.survey == survey)
            order = rows[np.argsort(self.targetid[rows], kind="stable")]
            self._index[survey] = (order, self.targetid[order])
        return self._index[survey]


def read_qso_catalog(path: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> QsoCatalog:
    """Read a DESI QSO catalogue (``QSO_cat_*.fits[.gz]``, HDU ``QSO_CAT``): TARGETID, Z and, when present,
    ZERR, ZWARN, TARGET_RA/DEC, SURVEY. Only those columns are read (the DR1 catalogue is ~800 MB)."""
    path = os.fspath(path)
    with _open_fits(path, fs) as f:
        table = f.table("QSO_CAT", QSO_CATALOG_COLUMNS)

    def optional(name: str, dtype: Any) -> np.ndarray | None:
        return _column(table, name, dtype, path, "QSO_CAT") if name in table else None

    return QsoCatalog(
        targetid=_column(table, "TARGETID", np.int64, path, "QSO_CAT"),
        z=_column(table, "Z", np.float64, path, "QSO_CAT"),
        zerr=optional("ZERR", np.float64),
        zwarn=optional("ZWARN", np.int64),
        target_ra=optional("TARGET_RA", np.float64),
        target_dec=optional("TARGET_DEC", np.float64),
        survey=optional("SURVEY", str),
    )


@functools.lru_cache(maxsize=4)
def _cached_catalog(path: str, fs: fsspec.AbstractFileSystem | None) -> QsoCatalog:
    return read_qso_catalog(path, fs)


# --------------------------------------------------------------------------------------------------------
# One coadd file -> raw_spectra rows + ledger


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
) -> ReadResult:
    """Read one coadd into ``raw_spectra`` rows (quasars only) and a ledger row for every FIBERMAP row.

    Each row gets the first reason that applies, in this order (filtered = not a usable quasar,
    quarantined = bad input; filters act before pixel checks, so a SKY fiber with no data is filtered):

    * file-level, quarantined (every FIBERMAP row if its TARGETIDs can be read, else one row -1):
      ``corrupt_fits`` (unreadable or truncated), ``missing_hdu``, ``missing_column``, ``shape_mismatch``,
      ``bad_wavelength`` (coadd); ``bad_redrock`` (redrock file unreadable); ``missing_redrock`` (no redrock
      file and no QSO catalogue redshifts to fall back on); ``redrock_mismatch`` when its
      row count differs from the coadd's.
    * filtered: ``unassigned_fiber`` (TARGETID <= 0), ``not_target`` (OBJTYPE != TGT, when the column
      exists), ``bad_fiberstatus`` (``COADD_FIBERSTATUS & ~8``, when it exists);
    * row-level, quarantined: ``duplicate_targetid`` (every copy not filtered above),
      ``redrock_mismatch`` (the REDSHIFTS TARGETID of that row differs from the coadd's);
    * filtered: with a QSO catalogue, ``not_in_qso_catalog`` (membership replaces the redrock test, since
      the catalogue adds afterburner quasars redrock calls GALAXY); without one, ``not_qso`` (SPECTYPE !=
      QSO) then ``zwarn`` (ZWARN != 0);
    * row-level, quarantined: ``nonfinite`` (NaN/inf ivar at a mask == 0 pixel, or NaN/inf flux where
      ivar > 0 and mask == 0), ``negative_ivar`` (any pixel), ``no_good_pixels``.

    Z and ZERR come from the catalogue when one is given and ``catalog_z`` (ZERR null if it has none),
    else from redrock; ``Z_SOURCE`` says which. ZWARN is redrock's (the catalogue's when there is no
    redrock file, null if neither). TARGET_RA/DEC come from the FIBERMAP, else the catalogue, else null.
    ``qso_catalog`` may be a path (read once and cached) or a ``QsoCatalog``; a bad catalogue raises
    ``DesiFormatError`` (it is configuration, not per-file input). ``file`` in the ledger is the coadd path
    relative to ``archive_root`` when it lies under it.
    """
    if redrock is None and (qso_catalog is None or not catalog_z):
        raise ValueError("no redshift source: give a redrock file, or a QSO catalogue with catalog_z=True")
    catalog = _cached_catalog(os.fspath(qso_catalog), fs) if isinstance(qso_catalog, str | os.PathLike) else qso_catalog
    coadd, label = os.fspath(coadd), _file_label(os.fspath(coadd), archive_root)
    try:
        arms = read_coadd(coadd, fs)
    except DesiFormatError as err:
        return _failed_file(label, err.reason, _readable_targetids(coadd, fs))
    tid = arms.targetid
    rr = None
    if redrock is not None:
        try:
            rr = read_redshifts(redrock, fs)
        except DesiFormatError as err:
            return _failed_file(label, lg.reason("bad_redrock", err.reason), tid)
        except FileNotFoundError:
            if catalog is None or not catalog_z:
                return _failed_file(label, lg.reason("missing_redrock", os.fspath(redrock)), tid)
        if rr is not None and len(rr["TARGETID"]) != len(tid):
            detail = f"{len(rr['TARGETID'])} REDSHIFTS rows for {len(tid)} FIBERMAP rows"
            return _failed_file(label, lg.reason("redrock_mismatch", detail), tid)
    cat_row = catalog.lookup(tid, arms.header.get("SURVEY")) if catalog is not None else None
    reasons = _selection_reasons(arms, rr, cat_row)
    candidates = np.flatnonzero(reasons == "")
    rows = None if len(candidates) == len(tid) else candidates
    flux, ivar, good = merge_arms(arms, rows)
    reasons[candidates] = _pixel_reasons(arms, rows, good)
    keep = reasons[candidates] == ""
    if not keep.all():  # rare: copy only when a candidate was quarantined
        flux, ivar, good = flux[keep], ivar[keep], good[keep]
    kept = candidates[keep]
    redshift = _redshifts(kept, rr, catalog, cat_row, catalog_z)
    spectra = _spectra_table(arms, release, kept, redshift, flux, ivar, good, catalog, cat_row)
    return ReadResult(spectra, lg.ledger_table(label, np.arange(len(tid)), tid, reasons))


def _file_label(path: str, archive_root: str | None) -> str:
    if archive_root:
        root = str(archive_root).rstrip("/") + "/"
        if path.startswith(root):
            return path[len(root) :]
    return path


def _readable_targetids(path: str, fs: fsspec.AbstractFileSystem | None) -> np.ndarray | None:
    """TARGETIDs of a broken file when its FIBERMAP still reads (to quarantine row by row), else None."""
    try:
        with _open_fits(path, fs, check_size=False) as f:
            return _column(f.table("FIBERMAP", ("TARGETID",)), "TARGETID", np.int64, path, "FIBERMAP")
    except DesiFormatError:
        return None


def _failed_file(label: str, why: str, targetids: np.ndarray | None) -> ReadResult:
    empty = RAW_SPECTRA_SCHEMA.empty_table()
    return ReadResult(empty, lg.file_failure(label, why, targetids))


def _flag(
    reasons: np.ndarray, hit: np.ndarray, code: str, detail: Callable[[np.ndarray], list[str]] | None = None
) -> None:
    """Give the rows in ``hit`` that have no reason yet the reason ``code`` (+ a per-row detail)."""
    rows = np.flatnonzero(hit & (reasons == ""))
    if rows.size:
        details = detail(rows) if detail is not None else [""] * rows.size
        reasons[rows] = [lg.reason(code, d) for d in details]


def _selection_reasons(arms: CoaddArms, rr: dict[str, np.ndarray] | None, cat_row: np.ndarray | None) -> np.ndarray:
    """Per-row reason ('' = candidate quasar) from the FIBERMAP, redrock and the QSO catalogue."""
    fm, tid = arms.fibermap, arms.targetid
    reasons = np.full(len(tid), "", dtype=object)
    _flag(
        reasons,
        tid <= 0,
        "unassigned_fiber",
        lambda r: ["TARGETID<0" if tid[i] < 0 else "TARGETID=0" for i in r],
    )
    if "OBJTYPE" in fm:
        _flag(
            reasons,
            fm["OBJTYPE"] != "TGT",
            "not_target",
            lambda r: [f"OBJTYPE={v}" for v in fm["OBJTYPE"][r]],
        )
    if "COADD_FIBERSTATUS" in fm:
        status = fm["COADD_FIBERSTATUS"]
        bad = (status & ~INFO_FIBERSTATUS) != 0
        _flag(reasons, bad, "bad_fiberstatus", lambda r: [f"COADD_FIBERSTATUS={v}" for v in status[r]])
    _, inverse, count = np.unique(tid, return_inverse=True, return_counts=True)
    repeats = count[inverse]
    _flag(reasons, repeats > 1, "duplicate_targetid", lambda r: [f"TARGETID={tid[i]} x{repeats[i]}" for i in r])
    if rr is not None:
        other = rr["TARGETID"]
        _flag(reasons, other != tid, "redrock_mismatch", lambda r: [f"REDSHIFTS TARGETID={v}" for v in other[r]])
    if cat_row is not None:
        _flag(reasons, cat_row < 0, "not_in_qso_catalog")
    else:
        spectype, zwarn = rr["SPECTYPE"], rr["ZWARN"]
        _flag(reasons, spectype != "QSO", "not_qso", lambda r: [f"SPECTYPE={v}" for v in spectype[r]])
        _flag(reasons, zwarn != 0, "zwarn", lambda r: [f"ZWARN={v}" for v in zwarn[r]])
    return reasons


def _all_finite(values: np.ndarray) -> bool:
    """No NaN or inf (min and max propagate NaN), without a boolean temporary."""
    return values.size == 0 or bool(np.isfinite(values.min()) and np.isfinite(values.max()))


def bad_pixels(flux: np.ndarray, ivar: np.ndarray, unmasked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ingestion's pixel rules, per pixel: (``nonfinite``: NaN/inf ivar where the mask is 0, or NaN/inf
    flux where also ivar > 0; ``negative_ivar``: ivar < 0 anywhere). A row with either is quarantined.
    """
    nonfinite = unmasked & (~np.isfinite(ivar) | ((ivar > 0) & ~np.isfinite(flux)))
    return nonfinite, ivar < 0


def _pixel_reasons(arms: CoaddArms, rows: np.ndarray | None, good: np.ndarray) -> np.ndarray:
    """Per candidate row: ``nonfinite``, ``negative_ivar``, ``no_good_pixels`` or ''."""
    n = good.shape[0]
    nonfinite = np.zeros(n, bool)
    negative = np.zeros(n, bool)
    for arm in ARMS:
        f, iv = arms.flux[arm], arms.ivar[arm]
        if _all_finite(f) and _all_finite(iv) and (iv.size == 0 or iv.min() >= 0):
            continue  # the usual case, decided by four SIMD reductions over the whole arm
        f, iv = _block(f, rows, 0, f.shape[1]), _block(iv, rows, 0, iv.shape[1])
        bad, below_zero = bad_pixels(f, iv, _block(arms.mask[arm], rows, 0, f.shape[1]) == 0)
        nonfinite |= bad.any(axis=1)
        negative |= below_zero.any(axis=1)
    reasons = np.full(n, "", dtype=object)
    _flag(reasons, nonfinite, "nonfinite", lambda r: ["NaN/inf flux or ivar at a good pixel"] * r.size)
    _flag(reasons, negative, "negative_ivar")
    _flag(reasons, ~good.any(axis=1), "no_good_pixels", lambda r: ["ivar=0 or mask!=0 everywhere"] * r.size)
    return reasons


def _redshifts(
    kept: np.ndarray,
    rr: dict[str, np.ndarray] | None,
    catalog: QsoCatalog | None,
    cat_row: np.ndarray | None,
    catalog_z: bool,
) -> dict[str, pa.Array]:
    def null(kind: pa.DataType) -> pa.Array:
        return pa.nulls(kept.size, kind)

    def from_cat(values: np.ndarray | None, kind: pa.DataType) -> pa.Array:
        return null(kind) if values is None else pa.array(values[cat_row[kept]], kind)

    if catalog is not None and catalog_z:
        z, zerr, source = (
            from_cat(catalog.z, pa.float64()),
            from_cat(catalog.zerr, pa.float64()),
            "qso_catalog",
        )
    else:
        z, zerr, source = pa.array(rr["Z"][kept]), pa.array(rr["ZERR"][kept]), "redrock"
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


def _arm_snr(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray) -> dict[str, pa.Array]:
    """``snr_b/r/z``: row median of flux*sqrt(ivar) over the good pixels of each arm's own window."""
    snr = np.sqrt(ivar)
    snr *= flux
    np.copyto(snr, np.float32(np.nan), where=~good)
    return {name: _row_median(snr[:, w], good[:, w]) for name, w in SNR_WINDOWS.items()}


def _row_median(values: np.ndarray, good: np.ndarray) -> pa.Array:
    """Median of each row's good values (the others are NaN), null when none: one vectorized sort (NaN
    last) and the middle index per row, instead of nanmedian's per-row Python loop."""
    ordered = np.sort(values, axis=1)
    ngood = np.count_nonzero(good, axis=1)
    lo = np.maximum((ngood - 1) // 2, 0)[:, None]
    hi = np.maximum(ngood // 2, 0)[:, None]
    med = 0.5 * (np.take_along_axis(ordered, lo, 1) + np.take_along_axis(ordered, hi, 1))
    return pa.array(med[:, 0].astype(np.float32), pa.float32(), mask=ngood == 0)


def _snr_windows() -> dict[str, slice]:
    """Each arm's own wavelength range on the brz grid."""
    out = {}
    for arm in ARMS:
        lo = round((ARM_WAVE[arm][0] - BRZ_WAVE[0]) / WAVE_STEP)
        out[f"snr_{arm.lower()}"] = slice(lo, lo + ARM_WAVE[arm].size)
    return out


SNR_WINDOWS = _snr_windows()


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
        **_arm_snr(flux, ivar, good),
    }
    return pa.Table.from_arrays([columns[f.name] for f in RAW_SPECTRA_SCHEMA], schema=RAW_SPECTRA_SCHEMA)
