"""Where the pipeline's products live: one storage root, one folder per asset and release."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from qad_assets.config import check_name
from qad_assets.partitions import SpectraPartition


class StorageResource(dg.ConfigurableResource):
    """The storage root (``QAD_STORAGE``); every asset writes below it and nowhere else."""

    root: str

    def asset_dir(self, asset: str, release: str) -> Path:
        """``<root>/<asset>/<release>``; the release name is checked first (a release partition added in
        the UI as ``../..`` must not become a path outside the storage root)."""
        return Path(self.root) / asset / check_name("release", release)

    def partition_file(self, asset: str, key: str) -> Path:
        """The Parquet file of one spectra partition of one asset."""
        part = SpectraPartition.from_key(key)
        return self.asset_dir(asset, part.release) / f"{key}.parquet"

    def ledger_file(self, asset: str, key: str) -> Path:
        """The per-target accounting (kept / filtered / quarantined) of one partition."""
        part = SpectraPartition.from_key(key)
        return self.asset_dir(asset, part.release) / "ledger" / f"{key}.parquet"
