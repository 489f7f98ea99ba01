"""Orchestration at DR1's partition count: the release sensor over 10,000 new coadds in one tick, and the
runs those partitions become (one from the sensor; a UI backfill split by the spectra assets' policy).
"""

import math
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.job_backfill import _subdivide_partition_key_range

from jobs.sensors import new_release_partitions
from qad_assets.assets.raw_spectra import SPECTRA_BACKFILL
from qad_assets.definitions import defs
from qad_assets.partitions import spectra_partitions
from qad_assets.science.io.archive import healpix_coadd
from resources.archive import ArchiveResource

#: DR1's order of magnitude of coadd files per survey/program (docs/scale.md).
N_PARTITIONS = 10_000
#: Dagster's default sensor evaluation timeout is 60 s; the tick must leave most of it unused.
TICK_BUDGET_S = 30.0


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An archive of 10,000 empty coadd/redrock pairs: the sensor lists names, it never opens files."""
    root = tmp_path_factory.mktemp("dr1_names")
    for healpix in range(N_PARTITIONS):
        coadd = healpix_coadd(str(root), "iron", "main", "dark", healpix)
        Path(coadd.coadd).parent.mkdir(parents=True, exist_ok=True)
        Path(coadd.coadd).touch()
        Path(coadd.redrock).touch()
    return root


def test_sensor_adds_ten_thousand_partitions_in_one_tick(archive: Path) -> None:
    with dg.instance_for_test() as instance:
        start = time.perf_counter()
        context = dg.build_sensor_context(instance=instance, resources={"archive": ArchiveResource(root=str(archive))})
        result = new_release_partitions(context)
        for request in result.dynamic_partitions_requests:  # what the daemon does with the tick's result
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        elapsed = time.perf_counter() - start
        keys = instance.get_dynamic_partitions(spectra_partitions.name)
    assert len(keys) == N_PARTITIONS
    assert elapsed < TICK_BUDGET_S, f"sensor tick + adding partitions took {elapsed:.1f} s"
    [run] = result.run_requests  # one run over the new keys, appended together as one range
    assert (run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"]) == (
        keys[0],
        keys[-1],
    )


def test_backfill_of_ten_thousand_partitions_is_a_bounded_number_of_runs() -> None:
    """A UI backfill of the range: the daemon splits it by the backfill policy (Dagster's own splitter)."""
    keys = [f"iron_main_dark_{healpix}" for healpix in range(N_PARTITIONS)]
    ranges = _subdivide_partition_key_range(
        dg.StaticPartitionsDefinition(keys),
        dg.PartitionKeyRange(keys[0], keys[-1]),
        SPECTRA_BACKFILL.max_partitions_per_run,
    )
    assert len(ranges) == math.ceil(N_PARTITIONS / SPECTRA_BACKFILL.max_partitions_per_run) == 40
    for asset in ("raw_spectra", "normalized_spectra", "spectral_features", "anomaly_scores"):
        assert defs.resolve_assets_def(asset).backfill_policy == SPECTRA_BACKFILL
