"""One failing partition in a multi-partition run: the others are kept, retries and reruns redo only it."""

from pathlib import Path

import dagster as dg
import pytest

from qad_assets.definitions import defs
from qad_assets.demo.release import write_demo_release
from qad_assets.partitions import range_tags

pytestmark = pytest.mark.slow


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    archive = tmp_path / "archive"
    release = write_demo_release(archive, n_pixels=3, targets_per_pixel=50, seed=11)
    monkeypatch.setenv("QAD_STORAGE", str(tmp_path / "storage"))
    monkeypatch.setenv("QAD_ARCHIVE", str(archive))
    keys = [f"demo_main_{p.parent.parent.parent.name}_{p.parent.name}" for p in release.coadd_paths]
    return tmp_path, release, sorted(keys)


def materialized(instance: dg.DagsterInstance) -> set[str]:
    return instance.get_materialized_partitions(dg.AssetKey("raw_spectra"))


def test_a_failed_partition_is_the_only_one_redone(demo) -> None:
    tmp_path, release, keys = demo
    broken = release.coadd_paths[1]
    hidden = broken.with_suffix(".hidden")
    broken.rename(hidden)  # an unreachable file is an I/O failure (retried), not bad data (quarantined)
    job = defs.resolve_job_def("qad_spectra")
    selection = [dg.AssetKey("raw_spectra")]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("spectra_partitions", keys)
        first = job.execute_in_process(
            instance=instance, tags=range_tags(keys[0], keys[-1]), asset_selection=selection, raise_on_error=False
        )
        assert not first.success
        failed_key = next(k for k in keys if k.endswith(f"_{broken.parent.name}"))
        assert materialized(instance) == set(keys) - {failed_key}
        retries = [e for e in first.all_events if e.event_type == dg.DagsterEventType.STEP_RESTARTED]
        assert len(retries) == 2  # RetryPolicy: the step was retried, with backoff
        records = instance.fetch_materializations(dg.AssetKey("raw_spectra"), limit=100).records
        per_partition = [r.asset_materialization.partition for r in records]
        assert sorted(per_partition) == sorted(set(keys) - {failed_key})  # once each: retries skipped them
        outputs = tmp_path / "storage" / "raw_spectra" / "demo"
        stamps = {p.name: p.stat().st_mtime_ns for p in outputs.glob("*.parquet")}
        assert len(stamps) == 2

        hidden.rename(broken)
        todo = sorted(set(keys) - materialized(instance))
        assert todo == [failed_key]
        again = job.execute_in_process(
            instance=instance, partition_key=failed_key, asset_selection=selection, raise_on_error=False
        )
        assert again.success
        assert materialized(instance) == set(keys)
        after = {p.name: p.stat().st_mtime_ns for p in outputs.glob("*.parquet")}
        assert {name: after[name] for name in stamps} == stamps  # the good partitions were not rewritten
        assert f"{failed_key}.parquet" in after
