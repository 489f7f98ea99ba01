"""Partitions: release × HEALPix coadd file, and releases for the per-release products."""

from __future__ import annotations

import re
from dataclasses import dataclass

import dagster as dg

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
            raise ValueError(f"not a spectra partition key: {key!r} (want <release>_<survey>_<program>_<healpix>)")
        return cls(match["release"], match["survey"], match["program"], int(match["healpix"]))
