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

from qad_assets.config import check_name

SURVEYS = ("cmx", "main", "special", "sv1", "sv2", "sv3")
PROGRAMS = ("backup", "bright", "dark", "other")
_NAME = re.compile(r"coadd-(?P<survey>[a-z0-9]+)-(?P<program>[a-z0-9]+)-(?P<healpix>[0-9]+)\.fits")
NAME_PATTERN = "coadd-<survey>-<program>-<healpix>.fits"


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
    check_name("specprod", specprod)  # a path part: never ``..`` or a path of its own
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


@dataclass(frozen=True)
class ArchiveScan:
    """What a scan of one production found: its healpix coadds, and the coadd-like entries it skipped,
    each with why (relative to the production's ``healpix`` folder)."""

    coadds: list[HealpixCoadd]
    skipped: list[tuple[str, str]]


def scan_healpix_coadds(root: str, specprod: str) -> ArchiveScan:
    """Every healpix coadd of one production, sorted by (survey, program, healpix), and every entry named
    like a coadd that is not one of them, with the reason: a name off the ``coadd-<survey>-<program>-
    <healpix>.fits`` pattern, an unknown survey or program, or a folder that is not
    ``<survey>/<program>/<healpix//100>/<healpix>/``.

    One recursive listing. An entry with a coadd's name and place is a coadd whatever it is (a directory,
    a broken link): ingestion quarantines it with the reason, rather than the scan dropping it unseen.
    """
    check_name("specprod", specprod)
    fs, base = fsspec.core.url_to_fs(f"{root.rstrip('/')}/spectro/redux/{specprod}/healpix")
    if not fs.exists(base):
        return ArchiveScan([], [])
    found, skipped = [], []
    for path, info in sorted(fs.find(base, withdirs=True, detail=True).items()):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        named = _NAME.fullmatch(name)
        if not name.lower().startswith("coadd") or (info.get("type") == "directory" and named is None):
            continue
        relative = path[len(base.rstrip("/")) + 1 :]
        why = _skip_reason(relative, named)
        if why:
            skipped.append((relative, why))
        else:
            found.append(healpix_coadd(root, specprod, named["survey"], named["program"], int(named["healpix"])))
    found.sort(key=lambda c: (c.survey, c.program, c.healpix))
    return ArchiveScan(found, skipped)


def _skip_reason(relative: str, named: re.Match[str] | None) -> str:
    """Why an entry named like a coadd is not a healpix coadd of this production ('' when it is one)."""
    if named is None:
        return f"name does not follow {NAME_PATTERN}"
    survey, program, healpix = named["survey"], named["program"], int(named["healpix"])
    if survey not in SURVEYS:
        return f"unknown survey {survey!r} (one of {', '.join(SURVEYS)})"
    if program not in PROGRAMS:
        return f"unknown program {program!r} (one of {', '.join(PROGRAMS)})"
    expected = f"{survey}/{program}/{healpix // 100}/{healpix}"
    folder = relative.rsplit("/", 1)[0] if "/" in relative else ""
    if folder != expected:
        return f"in {folder or 'healpix/'}/, expected {expected}/ for this name"
    return ""


def find_healpix_coadds(root: str, specprod: str) -> list[HealpixCoadd]:
    """Every healpix coadd of one production, sorted by (survey, program, healpix) (see
    :func:`scan_healpix_coadds`, which also says what it skipped)."""
    return scan_healpix_coadds(root, specprod).coadds
