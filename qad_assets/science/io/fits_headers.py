"""A FITS file's layout read from its raw header blocks, independently of fitsio and astropy.

Three uses, all on untrusted bytes: counting a coadd's FIBERMAP rows from its header (``NAXIS2``), an
independent count the ingestion ledger is checked against; saying *where* a damaged file breaks (which
HDU's header is not FITS, which HDU the file ends inside) when a library only says that it does; and the
FITS checksum (``DATASUM``/``CHECKSUM``, a 32-bit ones' complement sum) of an HDU's bytes.

Only the structural cards are interpreted (``SIMPLE``/``XTENSION``, ``BITPIX``, ``NAXISn``, ``PCOUNT``,
``GCOUNT``, ``EXTNAME``); headers are read block by block, data is never read. Plain Python and numpy,
and one numba kernel for the checksum of large HDUs (it reads every byte of the flux, ivar and mask).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numba
import numpy as np

BLOCK = 2880
CARD = 80
#: The bytes a header card may hold (printable ASCII, 32..126).
_FITS_TEXT = bytes(range(32, 127))
#: Headers longer than this are not a DESI file (DESI's largest, FIBERMAP's, is a few blocks).
MAX_HEADER_BLOCKS = 200


class FitsLayoutError(Exception):
    """The bytes are not a FITS file from some point on; ``detail`` says where and why, naming the HDU."""

    def __init__(self, detail: str, *, truncated: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.truncated = truncated


@dataclass(frozen=True)
class Hdu:
    """One HDU's place in the file: its header and data byte ranges (data end padded to 2880)."""

    index: int
    extname: str
    header_start: int
    data_start: int
    data_end: int
    cards: dict[str, object] = field(repr=False)

    @property
    def label(self) -> str:
        return f"HDU {self.index} ({self.extname})" if self.extname else f"HDU {self.index}"


def _value(text: str) -> object:
    """A card's value: a quoted string, T/F, an int, a float, else the raw text."""
    raw = text.split("/", 1)[0].strip() if not text.lstrip().startswith("'") else text.strip()
    if raw.startswith("'"):
        end = raw.find("'", 1)
        while end != -1 and raw[end + 1 : end + 2] == "'":  # '' is an escaped quote
            end = raw.find("'", end + 2)
        return raw[1:end].replace("''", "'").rstrip() if end != -1 else raw[1:].rstrip()
    if raw in ("T", "F"):
        return raw == "T"
    try:
        return int(raw)
    except ValueError:
        try:
            return float(raw)
        except ValueError:
            return raw


def _data_bytes(cards: dict[str, object], where: str) -> int:
    """Bytes of data the header announces (before padding)."""
    try:
        bitpix, naxis = int(cards["BITPIX"]), int(cards["NAXIS"])
        dims = [int(cards[f"NAXIS{i}"]) for i in range(1, naxis + 1)]
        pcount, gcount = int(cards.get("PCOUNT", 0)), int(cards.get("GCOUNT", 1))
    except (KeyError, TypeError, ValueError) as exc:
        raise FitsLayoutError(f"{where}: structural keyword {exc} missing or not an integer") from None
    if bitpix not in (8, 16, 32, 64, -32, -64) or naxis < 0 or any(d < 0 for d in dims):
        raise FitsLayoutError(f"{where}: BITPIX={bitpix}, NAXIS={naxis} {dims} is not a FITS data shape")
    if naxis == 0:
        return 0
    return abs(bitpix) // 8 * gcount * (pcount + math.prod(dims))  # Python ints: NAXIS2=10**18 cannot wrap


def _overrun(label: str, cards: dict[str, object], announced: int, left: int) -> str:
    """Why an HDU's data does not fit, with the figures: a file cut short and a corrupt ``NAXISn`` (999999999
    rows) look alike from the bytes, so both are named by what the header announces and what is left."""
    dims = " x ".join(f"NAXIS{i}={cards[f'NAXIS{i}']}" for i in range(1, int(cards["NAXIS"]) + 1))
    extra = f" + PCOUNT={cards['PCOUNT']}" if cards.get("PCOUNT") else ""
    return f"file ends inside the data of {label}: {dims}{extra} announce {announced} bytes, {left} are left"


def walk(read: Callable[[int, int], bytes], size: int) -> Iterator[Hdu]:
    """Every HDU of a file of ``size`` bytes, given ``read(offset, n)``; raises :class:`FitsLayoutError`
    at the first header that is not FITS, or after yielding the HDU whose data the file ends inside.
    """
    offset, index, previous = 0, 0, ""
    while offset < size:
        start = offset
        where = "HDU 0 (PRIMARY)" if index == 0 else f"HDU {index} (after {previous})"
        cards: dict[str, object] = {}
        for block_no in range(MAX_HEADER_BLOCKS):
            block = read(offset, BLOCK)
            if len(block) < BLOCK:
                raise FitsLayoutError(
                    f"file ends inside the header of {where} ({size} bytes, header starts at byte {start})",
                    truncated=True,
                )
            offset += BLOCK
            if _parse_block(block, cards, where, first=block_no == 0, primary=index == 0):
                break
        else:
            raise FitsLayoutError(f"{where}: no END card in {MAX_HEADER_BLOCKS} header blocks")
        name = str(cards.get("EXTNAME", "PRIMARY" if index == 0 else "")).strip().upper()
        label = f"HDU {index} ({name})" if name else where
        announced = _data_bytes(cards, label)
        data_end = offset + -(-announced // BLOCK) * BLOCK
        yield Hdu(index, name, start, offset, data_end, cards)  # its header is whole, even if its data is not
        if data_end > size:
            raise FitsLayoutError(_overrun(label, cards, announced, size - offset), truncated=True)
        offset, index, previous = data_end, index + 1, name or f"HDU {index}"


def _parse_block(block: bytes, cards: dict[str, object], where: str, *, first: bool, primary: bool) -> bool:
    """Read one header block's cards into ``cards``; True at the END card."""
    for i in range(0, BLOCK, CARD):
        raw = block[i : i + CARD]
        if raw.translate(None, _FITS_TEXT):  # anything left is not printable ASCII
            raise FitsLayoutError(f"{where}: header card {len(cards) + 1} holds bytes that are not FITS text")
        text = raw.decode("ascii")
        key = text[:8].rstrip()
        if first and i == 0:
            expected = "SIMPLE" if primary else "XTENSION"
            if key != expected:
                raise FitsLayoutError(f"{where}: header does not start with {expected} (found {key!r})")
        if key == "END":
            return True
        if text[8:10] == "= " and key not in cards:
            cards[key] = _value(text[10:])
    return False


def hdus(path: str, fs: object | None = None) -> list[Hdu]:
    """Every HDU of a local path or fsspec URL (``fs``: an fsspec filesystem); gzip-compressed files too."""
    with _open(path, fs) as (read, size):
        return list(walk(read, size))


def fibermap_rows(path: str, fs: object | None = None) -> int | None:
    """Rows the FIBERMAP header announces (``NAXIS2``) when the table it announces fits in the file; None
    when the file has no readable FIBERMAP header, cannot be opened, or its FIBERMAP announces more bytes
    than the file holds after that header.

    The last case is a file cut short inside its FIBERMAP or a corrupt ``NAXIS2`` (999999999): the bytes
    cannot tell which, so no row count is trusted and nothing is allocated per announced row; the ledger
    then holds one row -1 (an unknown count), and the file is balanced against that one row.
    """
    try:
        with _open(path, fs) as (read, size):
            hdu = next((h for h in walk(read, size) if h.extname == "FIBERMAP"), None)
    except (FitsLayoutError, OSError):
        return None
    value = hdu.cards.get("NAXIS2") if hdu is not None and hdu.data_end <= size else None
    return int(value) if isinstance(value, int) and value >= 0 else None


class _open:  # noqa: N801 - a context manager used like a function
    """``(read(offset, n), size)`` over a local path or an fsspec file, gzip-transparent."""

    def __init__(self, path: str, fs: object | None) -> None:
        self.path, self.fs = path, fs

    def __enter__(self) -> tuple[Callable[[int, int], bytes], int]:
        import gzip
        import os

        import fsspec

        if self.fs is None and "://" not in self.path:
            self._raw = open(self.path, "rb")  # noqa: SIM115 - closed in __exit__
        else:
            fs, where = (self.fs, self.path) if self.fs is not None else fsspec.core.url_to_fs(self.path)
            self._raw = fs.open(where, "rb", block_size=1 << 16)
        if self._raw.read(2) == b"\x1f\x8b":
            self._raw.seek(0)
            self._file = gzip.GzipFile(fileobj=self._raw)
            size = self._file.seek(0, os.SEEK_END)
        else:
            self._file = self._raw
            size = self._raw.seek(0, os.SEEK_END)

        def read(offset: int, n: int) -> bytes:
            self._file.seek(offset)
            return self._file.read(n)

        return read, size

    def __exit__(self, *exc: object) -> None:
        if self._file is not self._raw:
            self._file.close()
        self._raw.close()


def _word_sum(words: np.ndarray) -> int:  # pragma: no cover - compiled by numba; checked against numpy
    """Sum of big-endian 32-bit words given as their native (little-endian) view: one pass, swapped in
    registers (numpy's ``sum`` of a ``>u4`` array swaps into a buffer first, 2-3x slower)."""
    total = np.uint64(0)
    for i in range(words.size):
        x = words[i]
        total += (
            ((x & np.uint32(0xFF)) << np.uint32(24))
            | ((x & np.uint32(0xFF00)) << np.uint32(8))
            | ((x >> np.uint32(8)) & np.uint32(0xFF00))
            | (x >> np.uint32(24))
        )
    return total


_word_sum_kernel = numba.njit(nogil=True)(_word_sum)
#: Below this many words numpy is as fast (and needs no compiled kernel): headers, small tables.
_KERNEL_WORDS = 1 << 16


def ones_complement_sum(data: bytes | np.ndarray) -> int:
    """The FITS checksum arithmetic: 32-bit big-endian words summed with end-around carry."""
    words = np.frombuffer(data, dtype=">u4") if not isinstance(data, np.ndarray) else data
    if words.size >= _KERNEL_WORDS and words.dtype == np.dtype(">u4") and sys.byteorder == "little":
        total = int(_word_sum_kernel(words.view("<u4")))  # < 2**64 up to 2**32 words (16 GB)
    else:
        total = int(np.sum(words, dtype=np.uint64)) if words.size else 0
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def checksum_problem(header: dict[str, object], header_bytes: bytes | np.ndarray, data: bytes | np.ndarray) -> str:
    """Why an HDU's bytes fail the checksums its header records (``''`` when they pass or it records none).

    ``DATASUM`` is the data's sum; ``CHECKSUM`` makes header + data sum to -0 (all ones).
    """
    problems = []
    data_sum = ones_complement_sum(data)
    recorded = header.get("DATASUM")
    if recorded not in (None, ""):
        try:
            expected = int(str(recorded).strip())
        except ValueError:
            expected = None
        if expected is None or expected != data_sum:
            problems.append(f"DATASUM {recorded} != {data_sum} computed")
    if header.get("CHECKSUM") not in (None, ""):
        total = ones_complement_sum(header_bytes) + data_sum
        while total >> 32:
            total = (total & 0xFFFFFFFF) + (total >> 32)
        if total != 0xFFFFFFFF:
            problems.append("CHECKSUM of header + data does not verify")
    return "; ".join(problems)
