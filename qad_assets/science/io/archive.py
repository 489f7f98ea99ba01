"""The DESI archive tree: where healpix coadd and redrock files live, and finding them.

Layout (DESI data model §1)::

    <root>/spectro/redux/<specprod>/healpix/<survey>/<program>/<healpix//100>/<healpix>/
        coadd-<survey>-<program>-<healpix>.fits
        redrock-<survey>-<program>-<healpix>.fits

``root`` is a local path or any fsspec URL (``https://…``, ``s3://…``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import fsspec

_COADD = re.compile(
    r"healpix/(?P<survey>cmx|main|special|sv1|sv2|sv3)/(?P<program>backup|bright|dark|other)/"
    r"(?P<group>[0-9]+)/(?P<healpix>[0-9]+)/coadd-(?P=survey)-(?P=program)-(?P=healpix)\.fits$"
)


@dataclass(frozen=True)
class HealpixCoadd:
    """One healpix coadd of a spectroscopic production, with its redrock file."""

    specprod: str
    survey: str
    program: str
    healpix: int
    coadd: str
    redrock: str


def healpix_dir(root: str, specprod: str, survey: str, program: str, healpix: int) -> str:
    return f"{root.rstrip('/')}/spectro/redux/{specprod}/healpix/{survey}/{program}/{healpix // 100}/{healpix}"


def healpix_coadd(root: str, specprod: str, survey: str, program: str, healpix: int) -> HealpixCoadd:
    """The coadd and redrock paths of one pixel, whether or not they exist."""
    folder = healpix_dir(root, specprod, survey, program, healpix)
    stem = f"{survey}-{program}-{healpix}.fits"
    return HealpixCoadd(specprod, survey, program, healpix, f"{folder}/coadd-{stem}", f"{folder}/redrock-{stem}")


def list_specprods(root: str) -> list[str]:
    """The spectroscopic productions (e.g. ``iron``) under ``root/spectro/redux``."""
    fs, base = fsspec.core.url_to_fs(f"{root.rstrip('/')}/spectro/redux")
    if not fs.exists(base):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False) if fs.isdir(p))


def find_healpix_coadds(root: str, specprod: str) -> list[HealpixCoadd]:
    """Every healpix coadd of one production, sorted by (survey, program, healpix).

    One recursive glob, so it is one listing call per directory level on object stores too.
    """
    fs, base = fsspec.core.url_to_fs(f"{root.rstrip('/')}/spectro/redux/{specprod}/healpix")
    found = []
    for path in fs.glob(f"{base}/*/*/*/*/coadd-*.fits"):
        match = _COADD.search(path)
        if match is not None and int(match["group"]) == int(match["healpix"]) // 100:
            found.append(healpix_coadd(root, specprod, match["survey"], match["program"], int(match["healpix"])))
    return sorted(found, key=lambda c: (c.survey, c.program, c.healpix))
