"""FITS access by EXTNAME: fitsio for local paths, astropy for fsspec file objects.

HDUs are found by EXTNAME (never by index; compressed mask HDUs only decompress that way). Local paths
are read with fitsio (C, native byte order, fast) and plain images from a memory map, each image's bytes
fetched whole and exactly (no read-around: it would pull in the RESOLUTION HDUs next to them); any fsspec
URL (``file://``, ``s3://``, ``https://``…) or an explicit ``fs`` is opened with fsspec and the file
object handed to astropy, which seeks past the RESOLUTION HDUs instead of reading them. Failing to decode
the bytes raises :class:`~qad_assets.errors.DesiFormatError`; failing to reach them raises the I/O error.

Untrusted bytes are checked before they are used: every HDU read is verified against the ``DATASUM`` and
``CHECKSUM`` its header records, when it records them (``checksum_mismatch``); a directory or a symbolic
link loop where a file should be is bad input (``not_a_file``), not an I/O error to retry; and when a
library fails on a damaged file, :mod:`~qad_assets.science.io.fits_headers` says where it breaks (which
HDU's header, or which HDU the file ends inside).
"""

from __future__ import annotations

import errno
import gzip
import mmap
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import fitsio
import fsspec
import numpy as np
from astropy.io import fits

from qad_assets.errors import DesiFormatError
from qad_assets.science.io import fits_headers
from qad_assets.science.spectra import ledger as lg


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
_TRANSPORT_ERRORS = (FileNotFoundError, PermissionError, ConnectionError, TimeoutError)
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


class FitsFile:
    """One open FITS file, HDUs by EXTNAME. Failing to decode its bytes raises ``DesiFormatError``;
    failing to reach them (missing file, permissions, network) raises the I/O error itself: that is
    not bad data, and the caller should retry rather than quarantine."""

    def __init__(self, path: str, fs: fsspec.AbstractFileSystem | None, check_size: bool, verify: bool = True) -> None:
        self.path = path
        self.fs = fs
        self.verify = verify
        self._raw: Any = None
        self._map: mmap.mmap | None = None
        self._fetched: set[str | int] = set()
        self._fx: fitsio.FITS | None = None
        self._hdul: fits.HDUList | None = None
        self._verified: set[str | int] = set()
        self._headers: dict[str | int, Any] = {}
        try:
            local = fs is None and "://" not in path
            self._raw = self._open(local)
            try:
                size, end, gzipped = self._guard("", self._parse_local if local else self._parse_fsspec)
            except DesiFormatError as err:
                raise self._located(err) from err
            if check_size and not gzipped and size < end:
                truncated = DesiFormatError(path, -1, lg.reason("corrupt_fits", f"truncated: {size} of {end} bytes"))
                raise self._located(truncated)
        except BaseException:
            self.close()
            raise

    def _open(self, local: bool) -> Any:
        """The file object; a directory or a symbolic link loop is bad input (``not_a_file``)."""
        try:
            if local:
                if os.path.isdir(self.path):
                    raise IsADirectoryError(errno.EISDIR, "is a directory", self.path)
                return open(self.path, "rb")  # noqa: SIM115 - held open for the memory map
            fs, where = (self.fs, self.path) if self.fs is not None else fsspec.core.url_to_fs(self.path)
            if fs.isdir(where):
                raise IsADirectoryError(errno.EISDIR, "is a directory", self.path)
            # small read-ahead blocks: a header read after a seek must not pull megabytes of RESOLUTION
            return fs.open(where, "rb", block_size=_REMOTE_BLOCK)
        except IsADirectoryError:
            raise DesiFormatError(self.path, -1, lg.reason("not_a_file", "a directory")) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DesiFormatError(self.path, -1, lg.reason("not_a_file", "a symbolic link loop")) from None
            raise

    def _located(self, err: DesiFormatError) -> DesiFormatError:
        """``err``, or where the file's own layout says it breaks when that says more (the HDU named)."""
        try:
            fits_headers.hdus(self.path, self.fs)
        except fits_headers.FitsLayoutError as layout:
            detail = f"truncated: {layout.detail}" if layout.truncated else layout.detail
            return DesiFormatError(self.path, -1, lg.reason("corrupt_fits", detail))
        except Exception:  # the diagnosis is best effort; the original error stands
            return err
        return err

    def _parse_local(self) -> tuple[int, int, bool]:
        """fitsio for headers and tables, a read-only memory map for plain images."""
        gzipped = self._raw.read(2) == b"\x1f\x8b"
        size = os.fstat(self._raw.fileno()).st_size
        self._fx = fitsio.FITS(self.path)
        n = len(self._fx)
        self.names = frozenset(self._fx[i].get_extname().upper() for i in range(n))
        if not gzipped and size:
            if hasattr(os, "posix_fadvise"):  # no read-around on faults: :meth:`_fetch` says what to read
                os.posix_fadvise(self._raw.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
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
        if name not in self.names:  # a file cut short or damaged loses its HDUs: say so rather than "missing"
            raise self._located(DesiFormatError(self.path, -1, lg.reason("missing_hdu", name)))

    def _verify(self, name: str | int) -> None:
        """Check HDU ``name`` (0: PRIMARY) against the DATASUM / CHECKSUM its header records (nothing when
        it records none)."""
        if not self.verify or name in self._verified:
            return
        if self._fx is not None:
            problem = self._fitsio_checksum(name)
        else:
            hdu = self._hdul[name]
            results = (("DATASUM", hdu.verify_datasum()), ("CHECKSUM", hdu.verify_checksum()))
            problem = ", ".join(f"{key} does not verify" for key, ok in results if ok == 0)
        if problem:
            label = "PRIMARY" if name == 0 else name
            raise DesiFormatError(self.path, -1, lg.reason("checksum_mismatch", f"{label}: {problem}"))
        self._verified.add(name)

    def _header(self, name: str | int) -> Any:
        """fitsio's header of an HDU, parsed once (each parse costs about 0.3 ms)."""
        if name not in self._headers:
            self._headers[name] = self._fx[name].read_header()
        return self._headers[name]

    def _fitsio_checksum(self, name: str | int) -> str:
        hdu = self._fx[name]
        header = self._header(name)
        if header.get("DATASUM") is None and header.get("CHECKSUM") is None:
            return ""
        if self._map is None:  # gzip-compressed: fitsio decompresses; leave it to fitsio
            return ""
        offsets = hdu.get_offsets()
        start, data, end = offsets["header_start"], offsets["data_start"], offsets["data_end"]
        if end > len(self._map):
            return f"data past the end of file ({len(self._map)} of {end} bytes)"
        self._fetch(name, start, end)
        words = np.frombuffer(self._map, dtype=">u4", count=(end - data) // 4, offset=data)
        head = np.frombuffer(self._map, dtype=">u4", count=(data - start) // 4, offset=start)
        try:
            return fits_headers.checksum_problem({k: header.get(k) for k in ("DATASUM", "CHECKSUM")}, head, words)
        finally:
            del words, head  # no view may outlive the map

    def _fetch(self, name: str | int, start: int, end: int) -> None:
        """Ask the kernel for bytes ``start:end`` of the map in one go (the faults then find them in memory)."""
        if name not in self._fetched and end > start:
            page = start - start % mmap.PAGESIZE
            self._map.madvise(mmap.MADV_WILLNEED, page, min(end, len(self._map)) - page)
            self._fetched.add(name)

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
            hdr = self._header(0) if self._fx is not None else self._hdul[0].header
            keys = list(hdr.keys())  # fitsio's FITSHDR is not iterable like a dict
            return {k: hdr[k] for k in keys if k and k not in ("COMMENT", "HISTORY")}

        self._guard("PRIMARY", lambda: self._verify(0))
        return self._guard("PRIMARY", read)

    def verify_hdu(self, name: str) -> None:
        """Check HDU ``name`` against its recorded checksums now, before any of it is used."""
        self.need(name)
        self._guard(name, lambda: self._verify(name))

    def image_shape(self, name: str) -> tuple[int, ...]:
        """An image HDU's shape (numpy order) from its header, without reading its data."""
        self.need(name)
        if self._fx is not None:
            return self._guard(name, lambda: tuple(int(d) for d in self._fx[name].get_dims()))
        return self._guard(name, lambda: tuple(int(d) for d in self._hdul[name].shape))

    def image(self, name: str) -> np.ndarray:
        return self.image_rows(name, None)

    def image_rows(self, name: str, rows: np.ndarray | None) -> np.ndarray:
        """Rows ``rows`` (indices along the first axis; None: all) of an image HDU, native byte order.

        Local plain images convert only those rows out of the memory map, so the rest of the HDU is never
        copied (nor read from disk, unless its checksum is verified); other files read the HDU and take
        the rows.
        """
        self.need(name)
        self._verify(name)
        if self._fx is not None:
            return self._guard(name, lambda: self._fitsio_image(name, rows))
        return self._guard(name, lambda: _take(_native(self._hdul[name].data), rows))

    def _fitsio_image(self, name: str, rows: np.ndarray | None) -> np.ndarray:
        mapped = self._mapped_image(name, rows)
        return mapped if mapped is not None else _take(_native(self._fx[name].read()), rows)

    def _mapped_image(self, name: str, rows: np.ndarray | None = None) -> np.ndarray | None:
        """A plain (uncompressed, unscaled) image straight from the memory map, only ``rows`` of it
        converted: one byte-swapping copy, about 3x faster than fitsio's read. The whole image is fetched
        (its checksum reads it all anyway; one request beats a fault per row). None when the HDU needs
        fitsio (compressed, scaled, gzip)."""
        hdu = self._fx[name]
        if self._map is None or hdu.is_compressed():
            return None
        hdr = self._header(name)
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
        self._fetch(name, start, start + count * dtype.itemsize)
        raw = np.frombuffer(self._map, dtype=">u4" if unsigned else dtype, count=count, offset=start).reshape(shape)
        if rows is None:
            out = raw.astype(raw.dtype.newbyteorder("="))
        else:  # copy the rows (still big-endian), then swap them in place; the rest is never converted
            out = np.take(raw, np.asarray(rows, np.intp), axis=0)
            out = out.byteswap(inplace=True).view(out.dtype.newbyteorder("="))
        del raw  # no view may outlive the map
        if unsigned:
            out ^= np.uint32(2**31)  # int32 on disk + BZERO 2**31 = uint32
        return out

    def table(self, name: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """The requested columns that exist (FIBERMAP columns vary between productions)."""
        self.need(name)
        self._verify(name)

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


def _take(values: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return values if rows is None else values[np.asarray(rows, np.intp)]


@contextmanager
def open_fits(
    path: str, fs: fsspec.AbstractFileSystem | None, check_size: bool = True, verify: bool = True
) -> Iterator[FitsFile]:
    """An open FITS file; ``check_size`` refuses a truncated one, ``verify`` checks each HDU read against
    its recorded checksums."""
    f = FitsFile(path, fs, check_size, verify)
    try:
        yield f
    finally:
        f.close()


def required_column(table: dict[str, np.ndarray], name: str, dtype: Any, path: str, hdu: str) -> np.ndarray:
    """A required column converted to ``dtype``, or a ``missing_column`` DesiFormatError."""
    if name not in table:
        raise DesiFormatError(path, -1, lg.reason("missing_column", f"{hdu}.{name}"))
    try:
        return table[name].astype(dtype, copy=False)
    except (TypeError, ValueError) as exc:
        raise DesiFormatError(path, -1, lg.reason("corrupt_fits", f"{hdu}.{name}: {_short(exc)}")) from exc
