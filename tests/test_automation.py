"""The release sensor and the nightly schedule, evaluated with Dagster's own test utilities."""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from jobs.schedules import nightly_pipeline
from jobs.sensors import new_release_partitions
from qad_assets.partitions import contiguous_ranges, release_partitions, spectra_partitions
from qad_assets.science.io.archive import healpix_coadd
from resources.archive import ArchiveResource


def add_coadd(root: Path, specprod: str, program: str, healpix: int) -> None:
    coadd = healpix_coadd(str(root), specprod, "main", program, healpix)
    for path in (coadd.coadd, coadd.redrock):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"")


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def evaluate_sensor(instance: dg.DagsterInstance, root: Path) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, resources={"archive": ArchiveResource(root=str(root))})
    return new_release_partitions(context)


def apply(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def test_sensor_adds_exactly_the_new_partitions_once(tmp_path: Path, instance) -> None:
    for pix in (26064, 26065):
        add_coadd(tmp_path, "iron", "dark", pix)
    first = evaluate_sensor(instance, tmp_path)
    adds = {r.partitions_def_name: list(r.partition_keys) for r in first.dynamic_partitions_requests}
    assert adds == {"spectra_partitions": ["iron_main_dark_26064", "iron_main_dark_26065"], "releases": ["iron"]}
    [run] = first.run_requests
    assert run.tags["dagster/asset_partition_range_start"] == "iron_main_dark_26064"
    assert run.tags["dagster/asset_partition_range_end"] == "iron_main_dark_26065"
    apply(instance, first)

    assert evaluate_sensor(instance, tmp_path).skip_reason is not None  # nothing new: nothing twice

    add_coadd(tmp_path, "iron", "bright", 9144)
    add_coadd(tmp_path, "loa", "dark", 27247)
    second = evaluate_sensor(instance, tmp_path)
    adds = {r.partitions_def_name: list(r.partition_keys) for r in second.dynamic_partitions_requests}
    assert adds == {"spectra_partitions": ["iron_main_bright_9144", "loa_main_dark_27247"], "releases": ["loa"]}


def test_sensor_skips_productions_whose_names_cannot_be_release_names(tmp_path: Path, instance) -> None:
    """A production folder named ``Iron`` or ``ünï`` would become a partition key and storage paths
    (issue 13, defect 6): the sensor leaves it out and goes on with the others."""
    add_coadd(tmp_path, "iron", "dark", 26064)
    for bad in ("Iron", "ünï"):  # written by hand: healpix_coadd itself refuses such names
        folder = tmp_path / "spectro/redux" / bad / "healpix/main/dark/260/26064"
        folder.mkdir(parents=True)
        (folder / "coadd-main-dark-26064.fits").write_bytes(b"")
    result = evaluate_sensor(instance, tmp_path)
    adds = {r.partitions_def_name: list(r.partition_keys) for r in result.dynamic_partitions_requests}
    assert adds == {"spectra_partitions": ["iron_main_dark_26064"], "releases": ["iron"]}


def test_nightly_schedule_requests_the_missing_partitions_in_ranges(instance) -> None:
    keys = [f"demo_main_dark_{pix}" for pix in range(26064, 26070)]
    instance.add_dynamic_partitions(spectra_partitions.name, keys)
    instance.add_dynamic_partitions(release_partitions.name, ["demo"])
    for asset in ("raw_spectra", "normalized_spectra", "spectral_features"):
        for key in keys[:2] + keys[4:5]:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=key))
    when = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    requests = nightly_pipeline(dg.build_schedule_context(instance=instance, scheduled_execution_time=when))
    ranges = [
        (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]) for r in requests
    ]
    assert ranges == [(keys[2], keys[3]), (keys[5], keys[5])]
    assert requests[0].run_key == f"nightly-2026-11-28-{keys[2]}..{keys[3]}"
    assert nightly_pipeline.cron_schedule == "0 3 * * *"


def test_contiguous_ranges() -> None:
    order = list("abcdefg")
    assert contiguous_ranges(order, list("gabde")) == [("a", "b"), ("d", "e"), ("g", "g")]
    assert contiguous_ranges(order, []) == []
