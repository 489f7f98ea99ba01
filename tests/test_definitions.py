"""The code location, tested as data: a refactor that drops an asset, a check or a job fails here."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from qad_assets.definitions import defs

REPO = Path(__file__).resolve().parents[1]
SPECTRA = dg.DynamicPartitionsDefinition(name="spectra_partitions")
RELEASES = dg.DynamicPartitionsDefinition(name="releases")


def checks_of(asset: str) -> dict[str, bool]:
    return {spec.name: spec.blocking for spec in defs.resolve_assets_def(asset).check_specs}


def test_assets_their_partitions_and_lineage() -> None:
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} >= {
        "raw_spectra",
        "normalized_spectra",
        "spectral_features",
        "vae_model",
        "anomaly_scores",
        "validation_report",
        "candidate_ranking",
    }
    for asset in ("raw_spectra", "normalized_spectra", "spectral_features", "anomaly_scores"):
        assert defs.resolve_assets_def(asset).partitions_def == SPECTRA
        assert defs.resolve_assets_def(asset).backfill_policy.max_partitions_per_run > 1
    assert defs.resolve_assets_def("vae_model").partitions_def == RELEASES
    assert defs.resolve_assets_def("validation_report").partitions_def == RELEASES
    assert defs.resolve_assets_def("candidate_ranking").partitions_def == RELEASES
    parents = {
        k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()
    }
    assert parents["normalized_spectra"] == {"raw_spectra"}
    assert parents["spectral_features"] == {"normalized_spectra"}
    assert parents["vae_model"] == {"normalized_spectra"}
    assert parents["anomaly_scores"] == {"normalized_spectra", "vae_model"}
    assert parents["validation_report"] == {"anomaly_scores", "vae_model"}
    assert parents["candidate_ranking"] == {"anomaly_scores", "spectral_features"}


def test_blocking_and_warning_checks() -> None:
    assert checks_of("raw_spectra") == {"ledger_balances": True, "quarantine_empty": False}
    assert checks_of("normalized_spectra") == {
        "matches_raw_spectra": True,
        "finite_values": True,
        "median_flux_in_band": False,
        "coverage": False,
    }
    # the model's quality gate and the promotion checks decide, they never stop a release from being scored
    assert checks_of("vae_model") == {"beats_pca": False, "noise_calibrated": False, "loss_decreased": False}
    assert checks_of("anomaly_scores") == {"one_row_per_spectrum": True, "finite_scores": True}
    assert checks_of("validation_report") == {"injection_auroc_floor": False, "not_worse_than_pca": False}


def test_jobs_schedules_sensors_and_resources() -> None:
    assert defs.resolve_job_def("qad_spectra").partitions_def == SPECTRA
    assert defs.resolve_job_def("qad_train").partitions_def == RELEASES
    assert defs.resolve_job_def("qad_score").partitions_def == SPECTRA
    assert defs.resolve_job_def("qad_report").partitions_def == RELEASES
    assert defs.resolve_job_def("qad_rank").partitions_def == RELEASES
    champion = defs.resolve_job_def("qad_score_champion")
    assert champion.partitions_def == SPECTRA
    assert champion.run_config_schema  # the job carries model=champion for anomaly_scores
    assert defs.resolve_schedule_def("nightly_pipeline").cron_schedule == "0 3 * * *"
    assert defs.resolve_sensor_def("new_release_partitions").job_name == "qad_spectra"
    assert {"storage", "archive", "ray", "gpu", "mlflow", "labels"} <= set(defs.resources)
    assert defs.resolve_assets_def("vae_model").op.pool == "gpu"


@pytest.mark.slow
def test_dagster_validates_the_workspace() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_downstream_assets_follow_their_inputs() -> None:
    """Declarative automation: per-partition products follow eagerly, retraining waits for a weekly tick."""
    for asset in (
        "normalized_spectra",
        "spectral_features",
        "anomaly_scores",
        "validation_report",
        "candidate_ranking",
    ):
        condition = defs.resolve_assets_def(asset).automation_conditions_by_key[dg.AssetKey(asset)]
        assert condition.get_label() == "eager", asset
    retrain = defs.resolve_assets_def("vae_model").automation_conditions_by_key[dg.AssetKey("vae_model")]
    assert retrain.get_label() == "on_cron(0 5 * * 0, UTC)"
    assert defs.resolve_assets_def("raw_spectra").automation_conditions_by_key.get(dg.AssetKey("raw_spectra")) is None
