"""``candidate_ranking``: the anomaly ranking re-ranked by what astronomers' labels teach (per release)."""

import dagster as dg
import numpy as np
from pydantic import Field

from qad_assets.assets.anomaly_scores import anomaly_scores
from qad_assets.assets.spectral_features import spectral_features
from qad_assets.labels.vocabulary import default_interest
from qad_assets.partitions import release_partitions
from qad_assets.science.io.parquet_store import write_table_atomic
from qad_assets.science.ranking.candidates import read_candidates
from qad_assets.science.ranking.interest import InterestOptions, rank_candidates
from resources.labels import LabelStoreResource
from resources.storage import StorageResource


class RankingConfig(dg.Config):
    exploitation: float = Field(
        default=InterestOptions.exploitation,
        description="how far the labels move a spectrum, in units of the score's percentile range (0: plain score)",
    )
    exploration: float = Field(
        default=InterestOptions.exploration,
        description="bonus for spectra whose interest the labels leave uncertain (spread across the forest's trees)",
    )
    interest: dict[str, float] = Field(
        default_factory=default_interest,
        description="interest of each label (1 wanted, 0 not); labels left out are not learned from",
    )
    seed: int = 0


@dg.asset(
    partitions_def=release_partitions,
    deps=[
        dg.AssetDep(anomaly_scores, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(spectral_features, partition_mapping=dg.AllPartitionMapping()),
    ],
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"parquet", "sklearn"},
    group_name="scores",
    code_version="1",
)
def candidate_ranking(
    context: dg.AssetExecutionContext, config: RankingConfig, storage: StorageResource, labels: LabelStoreResource
) -> dg.MaterializeResult:
    """Every scored spectrum with its ``priority``: the anomaly score's percentile moved by a random forest
    of user interest trained on the labels in the label database (Astronomaly's human-in-the-loop), and
    ``priority_rank`` over the spectra nobody has labelled yet: what to inspect next. Rematerialize after
    a labelling session (the labels live outside Dagster).
    """
    release = context.partition_key
    candidates = read_candidates(storage.root, release)
    current = labels.current(release)
    options = InterestOptions(exploitation=config.exploitation, exploration=config.exploration, seed=config.seed)
    ranking = rank_candidates(candidates, current, config.interest, options)
    path = write_table_atomic(ranking.to_arrow(), storage.asset_dir("candidate_ranking", release) / "ranking.parquet")
    labelled = ranking.filter(ranking["label"] != "")
    moved = ranking.filter(ranking["priority_rank"] > 0).sort("priority_rank").head(100)
    plain_top = set(ranking.filter(ranking["label"] == "").sort("anomaly_score", descending=True).head(100)["TARGETID"])
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "spectra": len(ranking),
            "labelled": len(labelled),
            "labels": dg.MetadataValue.json(dict(labelled.group_by("label").len().sort("label").iter_rows())),
            "top100_new_vs_score": int(len(set(moved["TARGETID"]) - plain_top)),
            "mean_interest": float(np.mean(ranking["interest"].to_numpy())),
        }
    )
