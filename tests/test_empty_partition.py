"""An empty partition is a normal partition with zero rows in every product: the release around it is
trained, scored, ranked and reported (issue 13, defect 3: ``score_partition`` raised "no spectra to
score", the other partitions kept empty ranks, and no report or promotion followed).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from in_process_pipeline import in_process_pipeline

from qad_assets.demo.release import DemoRelease
from qad_assets.science.io.parquet_store import read_table

pytestmark = pytest.mark.slow

#: The report's slow parts left out: the question is whether it is written, not how good the model is.
QUICK_REPORT = {
    "ops": {
        "validation_report": {"config": {"injections_per_class": 20, "real_injection_draws": 0, "stability_seed": -1}}
    }
}


def test_a_release_with_an_empty_partition_is_scored_ranked_and_reported(
    tmp_path: Path, medium_demo: DemoRelease
) -> None:
    archive, storage = tmp_path / "archive", tmp_path / "storage"
    shutil.copytree(medium_demo.root, archive)
    emptied = archive / medium_demo.coadd_paths[0].relative_to(medium_demo.root)
    emptied.unlink()
    emptied.mkdir()  # quarantined as a whole: every row of the partition set aside
    with in_process_pipeline(archive, storage) as steps:
        keys, instance = steps.keys, steps.instance
        empty = next(key for key in keys if key.endswith(f"_{emptied.parent.name}"))
        assert steps.run("qad_spectra", tags=steps.all_spectra).success
        steps.run("qad_train", partition_key="demo")  # its quality checks may fail on a small release; it registers
        assert instance.get_materialized_partitions(dg.AssetKey("vae_model")) == {"demo"}
        assert steps.run("qad_score", tags=steps.all_spectra).success
        assert steps.run("qad_report", partition_key="demo", run_config=QUICK_REPORT).success
        assert instance.get_materialized_partitions(dg.AssetKey("validation_report")) == {"demo"}

    scores = {key: read_table(storage / "anomaly_scores" / "demo" / f"{key}.parquet") for key in keys}
    assert scores[empty].num_rows == 0 and scores[empty].schema == scores[keys[-1]].schema
    ranks = np.concatenate([t["rank"].to_numpy(zero_copy_only=False) for k, t in scores.items() if k != empty])
    assert sorted(ranks) == list(range(1, len(ranks) + 1)) and len(ranks) > 0
    assert (storage / "validation_report" / "demo" / "metrics.json").exists()
