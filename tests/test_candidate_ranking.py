"""The ``candidate_ranking`` asset: labels from the label database re-rank a release's candidates."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
from explorer_release import write_release

from qad_assets.assets.candidate_ranking import candidate_ranking
from qad_assets.labels.store import LabelStore
from resources.labels import LabelStoreResource
from resources.storage import StorageResource


def materialize_ranking(storage: Path, release: str, config: dict | None = None) -> dg.ExecuteInProcessResult:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("releases", [release])
        return dg.materialize(
            [candidate_ranking],
            partition_key=release,
            instance=instance,
            resources={
                "storage": StorageResource(root=str(storage)),
                "labels": LabelStoreResource(storage_root=str(storage)),
            },
            run_config={"ops": {"candidate_ranking": {"config": config or {}}}},
        )


def test_the_asset_reads_the_labels_and_writes_the_ranking(tmp_path: Path) -> None:
    synthetic = write_release(tmp_path, partitions=2, rows=60)
    store = LabelStore.for_storage(tmp_path)
    troughs = synthetic.groups["troughs"]
    for targetid in troughs[:6]:
        store.add(synthetic.release, int(targetid), "bal", author="ann")
    store.close()
    result = materialize_ranking(tmp_path, synthetic.release, {"exploration": 0.0})
    assert result.success
    metadata = result.asset_materializations_for_node("candidate_ranking")[0].metadata
    assert metadata["labelled"].value == 6 and metadata["labels"].data == {"bal": 6}
    ranking = pl.read_parquet(tmp_path / "candidate_ranking" / synthetic.release / "ranking.parquet")
    assert len(ranking) == 120
    assert set(ranking.filter(pl.col("priority_rank") == 0)["TARGETID"]) == set(troughs[:6].tolist())
    rest = ranking.filter(pl.col("priority_rank") > 0)
    mean_interest = rest.group_by(pl.col("TARGETID").is_in(troughs.tolist())).agg(pl.col("interest").mean())
    interest = dict(mean_interest.iter_rows())
    assert interest[True] > interest[False]  # unlabelled troughs look like the labelled ones
