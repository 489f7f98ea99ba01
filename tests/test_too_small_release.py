"""A release too small to train on is recorded, not failed: ``vae_model`` materializes with
``trained = False`` and the reason, and its gate checks fail (non-blocking) saying why, so the champion
can score the release downstream.
"""

from pathlib import Path

import dagster as dg
import pytest

from qad_assets.definitions import defs


def test_a_release_too_small_to_train_on_is_recorded_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QAD_STORAGE", str(tmp_path / "storage"))
    monkeypatch.setenv("QAD_RAY_NUM_CPUS", "1")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("releases", ["tiny"])
        result = defs.resolve_job_def("qad_train").execute_in_process(
            instance=instance, partition_key="tiny", raise_on_error=False
        )
        assert result.success, result.all_events
        (materialization,) = result.get_asset_materialization_events()
        metadata = materialization.materialization.metadata
        assert metadata["trained"].value is False
        assert "too few to train and calibrate" in metadata["reason"].value
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert set(checks) == {"beats_pca", "noise_calibrated", "loss_decreased"}
        assert not any(e.passed for e in checks.values())
        assert all("too few" in e.metadata["not_trained"].value for e in checks.values())
