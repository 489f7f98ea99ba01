"""DESI coadd files (healpix, tile, or ``spectra-*``): the FIBERMAP, the header and the B/R/Z arms.

Follows the DESI data model: HDUs by EXTNAME, masks as uint32, RESOLUTION never read. Problems with
the file raise :class:`~qad_assets.errors.DesiFormatError` with a ledger reason.

Two steps, so that a file of hundreds of targets of which a few are quasars costs what its quasars do:
:func:`open_coadd` reads the header, the FIBERMAP and the wavelengths, checks every shape from the
headers and verifies the arrays' checksums; :meth:`CoaddFile.arms` then converts only the rows asked for
(from a memory map for local files). :func:`read_coadd` does both for every row.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from qad_assets.errors import DesiFormatError
from qad_assets.science.io.fits_file import FitsFile, open_fits, required_column
from qad_assets.science.spectra import ledger as lg
from qad_assets.science.spectra.arms import ARMS, arm_offset

FIBERMAP_COLUMNS = ("TARGETID", "OBJTYPE", "COADD_FIBERSTATUS", "TARGET_RA", "TARGET_DEC")
_IMAGE_KINDS = ("WAVELENGTH", "FLUX", "IVAR", "MASK")
_COADD_HDUS = ("FIBERMAP", *(f"{arm}_{kind}" for arm in ARMS for kind in _IMAGE_KINDS))


@dataclass
class CoaddArms:
    """The parts of a coadd we use, per arm (``B``/``R``/``Z``); RESOLUTION is never read.

    ``fibermap`` holds the FIBERMAP columns of ``FIBERMAP_COLUMNS`` that the file has (only TARGETID is
    required; productions differ) for every row of the file, ``header`` the PRIMARY header (SURVEY,
    PROGRAM, HPXPIXEL, SPGRP, TILEID… as present). Arrays are native-endian: flux/ivar float32 and mask
    uint32 of shape (nrows, npix_arm), wave float64 (npix_arm,). ``rows`` says which file rows the arrays
    hold, in that order (None: every row, in file order).
    """

    path: str
    header: dict[str, Any]
    fibermap: dict[str, np.ndarray]
    wave: dict[str, np.ndarray]
    flux: dict[str, np.ndarray]
    ivar: dict[str, np.ndarray]
    mask: dict[str, np.ndarray]
    rows: np.ndarray | None = None

    @property
    def nspec(self) -> int:
        """Rows of the file (of its FIBERMAP)."""
        return len(self.fibermap["TARGETID"])

    @property
    def targetid(self) -> np.ndarray:
        return self.fibermap["TARGETID"]


def _as_uint32(mask: np.ndarray) -> np.ndarray:
    """Masks read as uint32 with BZERO=2**31 and as int32 without it (the writer's choice); same bits."""
    if mask.dtype.itemsize == 4 and mask.dtype.kind in "iu":
        return mask.view(np.uint32)
    return mask.astype(np.uint32)


class CoaddFile:
    """An open coadd whose header, FIBERMAP and wavelengths are read and whose arrays are checked."""

    def __init__(self, fits_file: FitsFile, path: str) -> None:
        self._f, self.path = fits_file, path
        for name in _COADD_HDUS:  # all missing HDUs are found before any big read
            fits_file.need(name)
        fibermap = fits_file.table("FIBERMAP", FIBERMAP_COLUMNS)
        fibermap["TARGETID"] = required_column(fibermap, "TARGETID", np.int64, path, "FIBERMAP")
        for name, dtype in (
            ("COADD_FIBERSTATUS", np.int64),
            ("TARGET_RA", np.float64),
            ("TARGET_DEC", np.float64),
        ):
            if name in fibermap:
                fibermap[name] = required_column(fibermap, name, dtype, path, "FIBERMAP")
        self.fibermap = fibermap
        self.header = fits_file.primary_header()
        self.wave = {arm: fits_file.image(f"{arm}_WAVELENGTH").astype(np.float64, copy=False) for arm in ARMS}
        self._check_shapes()
        for arm in ARMS:  # a damaged array quarantines the file whichever rows are read from it
            for kind in _IMAGE_KINDS[1:]:
                fits_file.verify_hdu(f"{arm}_{kind}")

    @property
    def targetid(self) -> np.ndarray:
        return self.fibermap["TARGETID"]

    def arms(self, rows: np.ndarray | None = None) -> CoaddArms:
        """The B/R/Z arrays of ``rows`` (indices into the file, None: every row); only those are converted."""
        f = self._f
        flux = {arm: f.image_rows(f"{arm}_FLUX", rows).astype(np.float32, copy=False) for arm in ARMS}
        ivar = {arm: f.image_rows(f"{arm}_IVAR", rows).astype(np.float32, copy=False) for arm in ARMS}
        mask = {arm: _as_uint32(f.image_rows(f"{arm}_MASK", rows)) for arm in ARMS}
        return CoaddArms(self.path, self.header, self.fibermap, self.wave, flux, ivar, mask, rows)

    def _check_shapes(self) -> None:
        n = len(self.targetid)
        for arm in ARMS:
            wave = self.wave[arm]
            if wave.ndim != 1:
                raise DesiFormatError(self.path, -1, lg.reason("shape_mismatch", f"{arm}_WAVELENGTH {wave.shape}"))
            for kind in _IMAGE_KINDS[1:]:
                shape = self._f.image_shape(f"{arm}_{kind}")
                if shape != (n, wave.size):
                    detail = f"{arm}_{kind} {shape} != ({n} FIBERMAP rows, {wave.size} {arm}_WAVELENGTH)"
                    raise DesiFormatError(self.path, -1, lg.reason("shape_mismatch", detail))
            arm_offset(wave, self.path, arm)


@contextmanager
def open_coadd(path_or_url: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> Iterator[CoaddFile]:
    """Open a healpix or tile coadd (or a ``spectra-*`` file) by EXTNAME: header, FIBERMAP and wavelengths
    read, every array's shape and checksum checked; :meth:`CoaddFile.arms` reads rows while it is open.

    File-level problems raise ``DesiFormatError(path, -1, reason)``: ``corrupt_fits`` (unreadable,
    truncated), ``checksum_mismatch``, ``missing_hdu``, ``missing_column`` (FIBERMAP.TARGETID),
    ``shape_mismatch`` (flux, ivar, mask, wavelength and FIBERMAP disagree) and ``bad_wavelength`` (an arm
    off the 0.8 Å ``brz`` grid).
    """
    path = os.fspath(path_or_url)
    with open_fits(path, fs) as f:
        yield CoaddFile(f, path)


def read_coadd(
    path_or_url: str | os.PathLike[str],
    fs: fsspec.AbstractFileSystem | None = None,
    rows: np.ndarray | None = None,
) -> CoaddArms:
    """Read a coadd's header, FIBERMAP and the arrays of ``rows`` (None: all), skipping RESOLUTION; the
    errors of :func:`open_coadd`."""
    with open_coadd(path_or_url, fs) as coadd:
        return coadd.arms(rows)
