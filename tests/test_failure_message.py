"""What ``qad`` prints when a run fails: the innermost cause of each failed step, with its partition."""

from __future__ import annotations

import dagster as dg

from qad_assets.cli.render import failure_message
from qad_assets.errors import TooFewSpectraError

RELEASES = dg.StaticPartitionsDefinition(["demo"])
SPECTRA = dg.StaticPartitionsDefinition(["demo_main_dark_1", "demo_main_dark_2"])


def fit() -> None:
    raise TooFewSpectraError("11 held-out and 190 training rows: calibration needs at least 20")


@dg.asset(partitions_def=RELEASES)
def model() -> None:
    try:
        fit()
    except TooFewSpectraError as err:  # a library that wraps what it calls
        raise RuntimeError("fitting the scorer failed") from err


@dg.asset(partitions_def=SPECTRA, retry_policy=dg.RetryPolicy(max_retries=1))
def scores() -> None:
    raise ValueError("no spectra to score")


def run(asset: dg.AssetsDefinition, **selection) -> dg.ExecuteInProcessResult:
    defs = dg.Definitions(assets=[asset], jobs=[dg.define_asset_job("job", selection=[asset])])
    with dg.instance_for_test() as instance:
        return defs.resolve_job_def("job").execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            **selection,
        )


def test_the_innermost_cause_and_the_partition_are_printed() -> None:
    message = failure_message(run(model, partition_key="demo"))
    assert message.splitlines() == [
        "pipeline run failed",
        "model (partition demo): TooFewSpectraError: 11 held-out and 190 training rows: calibration needs at least 20",
    ]
    assert "DagsterExecutionStepExecutionError" not in message


def test_a_step_that_exhausted_its_retries_shows_its_last_error_and_partition_range() -> None:
    tags = {
        "dagster/asset_partition_range_start": "demo_main_dark_1",
        "dagster/asset_partition_range_end": "demo_main_dark_2",
    }
    message = failure_message(run(scores, tags=tags))
    assert message.splitlines()[1:] == [
        "scores (partition demo_main_dark_1..demo_main_dark_2): ValueError: no spectra to score"
    ]
    assert "Exceeded max_retries" not in message


class Cluster(dg.ConfigurableResource):
    """A resource that cannot start, as a Ray cluster that refuses the connection."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        raise ValueError("When connecting to an existing cluster, num_cpus and num_gpus must not be provided.")


@dg.asset(partitions_def=RELEASES)
def scored(cluster: Cluster) -> None:
    """Never runs: its resource fails first."""


def test_a_resource_that_cannot_start_is_named_with_its_cause() -> None:
    defs = dg.Definitions(
        assets=[scored], jobs=[dg.define_asset_job("job", selection=[scored])], resources={"cluster": Cluster()}
    )
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("job").execute_in_process(
            instance=instance,
            raise_on_error=False,
            partition_key="demo",
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        )
    assert failure_message(result).splitlines()[1:] == [
        "scored (partition demo): ValueError: When connecting to an existing cluster, num_cpus and num_gpus "
        "must not be provided."
    ]
