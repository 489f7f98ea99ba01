"""DESI coadd files (healpix, tile, or ``spectra-*``): the FIBERMAP, the header and the B/R/Z arms.

Follows the DESI data model: HDUs by EXTNAME, masks as uint32, RESOLUTION never read. Problems with
the file raise :class:`~qad_assets.errors.DesiFormatError` with a ledger reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from qad_assets.errors import DesiFormatError
from qad_assets.science.io.fits_file import open_fits, required_column
from qad_assets.science.spectra import ledger as lg
from qad_assets.science.spectra.arms import ARMS, arm_offset

FIBERMAP_COLUMNS = ("TARGETID", "OBJTYPE", "COADD_FIBERSTATUS", "TARGET_RA", "TARGET_DEC")
_IMAGE_KINDS = ("WAVELENGTH", "FLUX", "IVAR", "MASK")
_COADD_HDUS = ("FIBERMAP", *(f"{arm}_{kind}" for arm in ARMS for kind in _IMAGE_KINDS))


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
    with open_fits(path, fs) as f:
        for name in _COADD_HDUS:  # all missing HDUs are found before any big read
            f.need(name)
        fibermap = f.table("FIBERMAP", FIBERMAP_COLUMNS)
        fibermap["TARGETID"] = required_column(fibermap, "TARGETID", np.int64, path, "FIBERMAP")
        for name, dtype in (
            ("COADD_FIBERSTATUS", np.int64),
            ("TARGET_RA", np.float64),
            ("TARGET_DEC", np.float64),
        ):
            if name in fibermap:
                fibermap[name] = required_column(fibermap, name, dtype, path, "FIBERMAP")
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
        arm_offset(wave, arms.path, arm)
