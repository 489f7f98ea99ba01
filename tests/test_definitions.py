"""The code location, tested as data: a refactor that drops an asset, a check or a job fails here."""

import subprocess
import sys
from pathlib import Path

import dagster as dg

from qad_assets.definitions import defs

REPO = Path(__file__).resolve().parents[1]


def test_assets_partitions_and_checks() -> None:
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"raw_spectra"} <= keys
    raw = defs.resolve_assets_def("raw_spectra")
    assert raw.partitions_def == dg.DynamicPartitionsDefinition(name="spectra_partitions")
    checks = {spec.name: spec.blocking for spec in raw.check_specs}
    assert checks == {"ledger_balances": True, "quarantine_empty": False}
    assert raw.backfill_policy is not None and raw.backfill_policy.max_partitions_per_run > 1


def test_pipeline_job_and_resources() -> None:
    job = defs.resolve_job_def("qad_pipeline")
    assert job.partitions_def == dg.DynamicPartitionsDefinition(name="spectra_partitions")
    assert {"storage", "archive", "ray"} <= set(defs.resources)


def test_dagster_validates_the_workspace() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
