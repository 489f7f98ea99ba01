"""Redshifts: redrock ``REDSHIFTS`` tables and DESI QSO catalogues, read by column."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from qad_assets.science.io.fits_file import open_fits, required_column

REDSHIFT_COLUMNS = ("TARGETID", "Z", "ZERR", "ZWARN", "SPECTYPE", "SUBTYPE", "DELTACHI2")
QSO_CATALOG_COLUMNS = ("TARGETID", "Z", "ZERR", "ZWARN", "TARGET_RA", "TARGET_DEC", "SURVEY")


def read_redshifts(path: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> dict[str, np.ndarray]:
    """The redrock ``REDSHIFTS`` HDU (TARGETID, Z, ZERR, ZWARN, SPECTYPE, SUBTYPE, DELTACHI2), in file order.

    SUBTYPE and DELTACHI2 are filled ('' / NaN) when absent; the others are required (``missing_column``).
    :func:`match_redshifts` lines its rows up with a coadd's by TARGETID.
    """
    path = os.fspath(path)
    with open_fits(path, fs) as f:
        table = f.table("REDSHIFTS", REDSHIFT_COLUMNS)
    out = {
        "TARGETID": required_column(table, "TARGETID", np.int64, path, "REDSHIFTS"),
        "Z": required_column(table, "Z", np.float64, path, "REDSHIFTS"),
        "ZERR": required_column(table, "ZERR", np.float64, path, "REDSHIFTS"),
        "ZWARN": required_column(table, "ZWARN", np.int64, path, "REDSHIFTS"),
        "SPECTYPE": required_column(table, "SPECTYPE", str, path, "REDSHIFTS"),
    }
    n = len(out["TARGETID"])
    out["SUBTYPE"] = table.get("SUBTYPE", np.full(n, "")).astype(str)
    out["DELTACHI2"] = table.get("DELTACHI2", np.full(n, np.nan)).astype(np.float64)
    return out


def match_redshifts(rr: dict[str, np.ndarray], targetids: np.ndarray) -> dict[str, np.ndarray]:
    """The REDSHIFTS row of each coadd TARGETID, as columns in the coadd's row order, plus ``MATCHES``: how
    many REDSHIFTS rows carry that TARGETID. Only rows with exactly one match have redshifts (the others
    get Z NaN, SPECTYPE '' and ZWARN -1): a redrock file in another order lines up, one from another pixel
    or with rows missing or repeated leaves just those rows without a redshift.
    """
    targetids = np.asarray(targetids, np.int64)
    order = np.argsort(rr["TARGETID"], kind="stable")
    keys = rr["TARGETID"][order]
    lo, hi = np.searchsorted(keys, targetids, "left"), np.searchsorted(keys, targetids, "right")
    matches = hi - lo
    row = np.where(matches == 1, order[np.minimum(lo, max(keys.size - 1, 0))] if keys.size else 0, -1)
    ok = matches == 1
    fill = {
        "TARGETID": -1,
        "Z": np.nan,
        "ZERR": np.nan,
        "ZWARN": -1,
        "SPECTYPE": "",
        "SUBTYPE": "",
        "DELTACHI2": np.nan,
    }
    out = {}
    for name, values in rr.items():
        taken = values[np.where(ok, row, 0)] if values.size else np.empty(len(targetids), values.dtype)
        out[name] = np.where(ok, taken, np.asarray(fill[name], dtype=values.dtype) if name in fill else taken)
    out["MATCHES"] = matches
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
    with open_fits(path, fs) as f:
        table = f.table("QSO_CAT", QSO_CATALOG_COLUMNS)

    def optional(name: str, dtype: Any) -> np.ndarray | None:
        return required_column(table, name, dtype, path, "QSO_CAT") if name in table else None

    return QsoCatalog(
        targetid=required_column(table, "TARGETID", np.int64, path, "QSO_CAT"),
        z=required_column(table, "Z", np.float64, path, "QSO_CAT"),
        zerr=optional("ZERR", np.float64),
        zwarn=optional("ZWARN", np.int64),
        target_ra=optional("TARGET_RA", np.float64),
        target_dec=optional("TARGET_DEC", np.float64),
        survey=optional("SURVEY", str),
    )


@functools.lru_cache(maxsize=4)
def cached_qso_catalog(path: str, fs: fsspec.AbstractFileSystem | None) -> QsoCatalog:
    return read_qso_catalog(path, fs)
