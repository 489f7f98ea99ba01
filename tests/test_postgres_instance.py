"""The production storage config, proven on a real PostgreSQL server.

Production keeps runs, events and schedules in Postgres (the ``storage:`` section of
``docker/dagster.yaml``); everything else in the tests uses SQLite. Here a temp ``DAGSTER_HOME`` gets that
same ``storage:`` section (its ``DAGSTER_PG_*`` env vars pointed at the test server) with the default run
launcher and coordinator, the ``qad_spectra`` job runs in process on one demo partition, and the run, its
materializations and its check evaluations are read back through the instance and, with psycopg2, straight
from the server's tables.

Server settings: ``QAD_TEST_PG_HOST`` (127.0.0.1), ``QAD_TEST_PG_PORT`` (5432), ``QAD_TEST_PG_USER``,
``QAD_TEST_PG_PASSWORD`` (dagster), ``QAD_TEST_PG_DB`` (dagster_test); ``.ci/run`` starts one. Without a
server the test skips, except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml
from conftest import skip_or_fail

from qad_assets.definitions import defs
from qad_assets.demo.release import write_demo_release
from qad_assets.partitions import archive_partition_keys, spectra_partitions
from resources import resources_from_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION_INSTANCE = ROOT / "docker" / "dagster.yaml"
SPECTRA_JOB = "qad_spectra"

#: The storage section of docker/dagster.yaml, used only if that file is missing or has none.
FALLBACK_STORAGE = {
    "postgres": {
        "postgres_db": {
            field: {"env": f"DAGSTER_PG_{name}"}
            for field, name in (
                ("hostname", "HOST"),
                ("username", "USER"),
                ("password", "PASSWORD"),
                ("db_name", "DB"),
                ("port", "PORT"),
            )
        }
    }
}


def server_settings() -> dict[str, str]:
    """Connection settings of the test server, from QAD_TEST_PG_* with the defaults .ci/run uses."""
    env = os.environ.get
    return {
        "host": env("QAD_TEST_PG_HOST", "127.0.0.1"),
        "port": env("QAD_TEST_PG_PORT", "5432"),
        "user": env("QAD_TEST_PG_USER", "dagster"),
        "password": env("QAD_TEST_PG_PASSWORD", "dagster"),
        "dbname": env("QAD_TEST_PG_DB", "dagster_test"),
    }


def connect(server: dict[str, str]):
    return psycopg2.connect(**server, connect_timeout=5)


def require_server(server: dict[str, str]) -> None:
    try:
        connect(server).close()
    except psycopg2.OperationalError as err:
        where = f"{server['user']}@{server['host']}:{server['port']}/{server['dbname']}"
        skip_or_fail(f"no PostgreSQL test server at {where} ({str(err).strip()}); .ci/run starts one")


def production_storage() -> dict:
    """The ``storage:`` section of the production instance, so this test proves that very config."""
    if PRODUCTION_INSTANCE.exists():
        storage = yaml.safe_load(PRODUCTION_INSTANCE.read_text()).get("storage")
        if storage:
            return storage
    return FALLBACK_STORAGE


@pytest.fixture
def postgres_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance in a temp DAGSTER_HOME: production storage on the test server, default launcher."""
    server = server_settings()
    require_server(server)
    for name, key in (("HOST", "host"), ("PORT", "port"), ("USER", "user"), ("PASSWORD", "password"), ("DB", "dbname")):
        monkeypatch.setenv(f"DAGSTER_PG_{name}", server[key])
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = {"storage": production_storage(), "telemetry": {"enabled": False}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with open_instance() as instance:
        yield instance


def open_instance() -> dg.DagsterInstance:
    """``DagsterInstance.get()``, naming the usual cause when the storage cannot load its database driver.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, while dagster-postgres installs psycopg2 only; a
    ``storage:`` section without ``scheme: postgresql+psycopg2`` then fails in every Dagster process.
    """
    try:
        return dg.DagsterInstance.get()
    except ModuleNotFoundError as err:
        pytest.fail(
            f"the production storage section ({PRODUCTION_INSTANCE.relative_to(ROOT)}) cannot open Postgres: {err}. "
            "SQLAlchemy >= 2.1 reads postgresql:// as psycopg 3; add `scheme: postgresql+psycopg2` under "
            "postgres_db, or install psycopg, or pin sqlalchemy<2.1"
        )


@pytest.fixture
def demo_partition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """One demo partition (1 pixel, 60 targets) under a release name of its own.

    The database outlives the test, so a fresh release name keeps this run's partition and events apart
    from earlier runs' and from another test run on the same server.
    """
    release = f"pg{uuid.uuid4().hex[:10]}"
    archive = tmp_path / "archive"
    write_demo_release(archive, release=release, n_pixels=1, targets_per_pixel=60, seed=5)
    monkeypatch.setenv("QAD_STORAGE", str(tmp_path / "storage"))
    monkeypatch.setenv("QAD_ARCHIVE", str(archive))
    monkeypatch.setenv("QAD_SPECPROD", "")
    monkeypatch.setenv("QAD_QSO_CATALOG", "")
    monkeypatch.setenv("QAD_RAY_NUM_CPUS", "1")
    (key,) = archive_partition_keys(str(archive), release)
    return key


def spectra_job() -> dg.JobDefinition:
    """``qad_spectra`` with its resources read from the environment now.

    ``qad_assets.definitions`` read the environment when first imported, maybe by another test module,
    before this test set QAD_RAY_NUM_CPUS.
    """
    fresh = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=resources_from_env()
    )
    return fresh.resolve_job_def(SPECTRA_JOB)


def expected_checks(job: dg.JobDefinition) -> set[dg.AssetCheckKey]:
    """Every asset check the job's assets define: each must have been evaluated and stored."""
    graph = job.asset_layer.asset_graph
    return {key for key in defs.resolve_asset_graph().asset_check_keys if key.asset_key in graph.executable_asset_keys}


def run_events(instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType) -> list:
    return [record.event_log_entry for record in instance.get_records_for_run(run_id, of_type=event_type).records]


def count_rows(sql: str, *params: str) -> int:
    connection = connect(server_settings())
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()[0]
    finally:
        connection.close()


def test_a_pipeline_run_is_stored_in_postgres(postgres_instance: dg.DagsterInstance, demo_partition: str) -> None:
    instance = postgres_instance
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"

    instance.add_dynamic_partitions(spectra_partitions.name, [demo_partition])
    assert demo_partition in instance.get_dynamic_partitions(spectra_partitions.name)
    job = spectra_job()
    result = job.execute_in_process(instance=instance, partition_key=demo_partition, raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.is_failure]

    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags.get("dagster/partition") == demo_partition

    assets = set(job.asset_layer.asset_graph.executable_asset_keys)
    assert {dg.AssetKey(name) for name in ("raw_spectra", "normalized_spectra", "spectral_features")} <= assets
    materialized = run_events(instance, result.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
    assert {e.asset_materialization.asset_key for e in materialized} == assets
    assert {e.asset_materialization.partition for e in materialized} == {demo_partition}
    for asset in assets:
        assert demo_partition in instance.get_materialized_partitions(asset)

    evaluated = run_events(instance, result.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = {e.dagster_event.asset_check_evaluation_data.asset_check_key for e in evaluated}
    assert evaluations == expected_checks(job)
    for check in evaluations:
        (latest,) = instance.event_log_storage.get_asset_check_execution_history(check, limit=1)
        assert latest.run_id == result.run_id

    # The same facts straight from the server's tables: it really is this Postgres server.
    assert count_rows("SELECT count(*) FROM runs WHERE run_id = %s", result.run_id) == 1
    materializations = "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = %s"
    assert count_rows(materializations, result.run_id, "ASSET_MATERIALIZATION") == len(assets)
    checks = "SELECT count(*) FROM asset_check_executions WHERE run_id = %s"
    assert count_rows(checks, result.run_id) == len(evaluations)
