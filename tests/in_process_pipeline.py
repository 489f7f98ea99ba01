"""The pipeline run in this process over a demo archive, for the slow tests that need its products."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import ray

from qad_assets.definitions import defs
from qad_assets.partitions import archive_partition_keys, range_tags


@dataclass(frozen=True)
class InProcessPipeline:
    instance: dg.DagsterInstance
    keys: list[str]  # the archive's spectra partitions, sorted

    @property
    def all_spectra(self) -> dict[str, str]:
        """The tags that select every spectra partition."""
        return range_tags(self.keys[0], self.keys[-1])

    def run(self, job: str, **selection: object) -> dg.ExecuteInProcessResult:
        """Execute ``job`` without raising; something must have been materialized (checks may still fail)."""
        result = defs.resolve_job_def(job).execute_in_process(instance=self.instance, raise_on_error=False, **selection)
        assert result.get_asset_materialization_events(), job
        return result


@contextmanager
def local_ray() -> Iterator[None]:
    """A local Ray of two CPUs for the block, unless one is running (then that one is used and kept)."""
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


@contextmanager
def in_process_pipeline(archive: Path, storage: Path) -> Iterator[InProcessPipeline]:
    """``QAD_STORAGE`` and ``QAD_ARCHIVE`` set for the block and a test instance holding the archive's
    partitions and its release ``demo``."""
    with pytest.MonkeyPatch.context() as env, dg.instance_for_test() as instance:
        env.setenv("QAD_STORAGE", str(storage))
        env.setenv("QAD_ARCHIVE", str(archive))
        keys = archive_partition_keys(str(archive), "demo", "demo")
        instance.add_dynamic_partitions("spectra_partitions", keys)
        instance.add_dynamic_partitions("releases", ["demo"])
        yield InProcessPipeline(instance, keys)
