"""Partitions: release × HEALPix coadd file, and releases for the per-release products."""

from __future__ import annotations

import re
from dataclasses import dataclass

import dagster as dg

from qad_assets.config import check_name
from qad_assets.errors import UserError
from qad_assets.science.io.archive import find_healpix_coadds

spectra_partitions = dg.DynamicPartitionsDefinition(name="spectra_partitions")
release_partitions = dg.DynamicPartitionsDefinition(name="releases")

_KEY = re.compile(r"^(?P<release>[a-z0-9]+)_(?P<survey>[a-z0-9]+)_(?P<program>[a-z0-9]+)_(?P<healpix>[0-9]+)$")


@dataclass(frozen=True)
class SpectraPartition:
    """One partition: the healpix coadd of (release, survey, program, nside-64 nested pixel)."""

    release: str
    survey: str
    program: str
    healpix: int

    @property
    def key(self) -> str:
        return f"{self.release}_{self.survey}_{self.program}_{self.healpix}"

    @classmethod
    def from_key(cls, key: str) -> SpectraPartition:
        match = _KEY.match(key)
        if match is None:
            raise UserError(f"not a spectra partition key: {key!r} (want <release>_<survey>_<program>_<healpix>)")
        return cls(match["release"], match["survey"], match["program"], int(match["healpix"]))


def archive_partition_keys(root: str, specprod: str, release: str | None = None) -> list[str]:
    """Partition keys of every healpix coadd of ``specprod`` in the archive, release defaulting to it; both
    names are checked (``config.check_name``)."""
    release = check_name("release", release or specprod)
    return [SpectraPartition(release, c.survey, c.program, c.healpix).key for c in find_healpix_coadds(root, specprod)]


def release_of(key: str) -> str:
    return SpectraPartition.from_key(key).release


def contiguous_ranges(order: list[str], wanted: list[str]) -> list[tuple[str, str]]:
    """Split ``wanted`` into (first, last) key ranges contiguous in ``order`` (the partitions' order),
    so a set of partitions runs in as few Dagster runs as a partition range allows.
    """
    position = {key: i for i, key in enumerate(order)}
    indices = sorted(position[key] for key in wanted)
    if not indices:
        return []
    ranges: list[tuple[str, str]] = []
    start = prev = indices[0]
    for i in indices[1:]:
        if i != prev + 1:
            ranges.append((order[start], order[prev]))
            start = i
        prev = i
    ranges.append((order[start], order[prev]))
    return ranges


def range_tags(first: str, last: str) -> dict[str, str]:
    """Run tags that make one run materialize the partition range ``first..last``."""
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
