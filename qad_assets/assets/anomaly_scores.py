"""``anomaly_scores``: every quasar of a partition scored by the release's VAE, explained and ranked."""

from functools import partial

import dagster as dg
import numpy as np
from pydantic import Field

from qad_assets.assets.fan_out import CheckTable, check_result, check_specs, run_partition_steps, stage_metadata
from qad_assets.assets.normalized_spectra import normalized_spectra
from qad_assets.assets.raw_spectra import PARTITION_RETRY, SPECTRA_BACKFILL
from qad_assets.assets.vae_model import vae_model
from qad_assets.partitions import release_of, spectra_partitions
from qad_assets.science.io.parquet_store import read_table, row_count
from qad_assets.science.model.choice import choose_model
from qad_assets.science.partition_steps import rank_release, score_partition
from resources.gpu import GpuResource
from resources.k8s import K8S_GPU_TAGS
from resources.mlflow import MlflowResource
from resources.ray import RayResource
from resources.storage import StorageResource

CHECKS: CheckTable = {
    "one_row_per_spectrum": (True, "as many score rows as normalized spectra in every partition"),
    "finite_scores": (True, "anomaly_score and p_value finite for every spectrum with observed pixels"),
}


class ScoringConfig(dg.Config):
    model: str = Field(
        default="",
        description="empty: the release's own model if it passed its gate, else the champion, else the release's "
        "own model unpromoted; or an alias (champion) or a version",
    )


@dg.asset(
    partitions_def=spectra_partitions,
    deps=[normalized_spectra, dg.AssetDep(vae_model, partition_mapping=dg.AllPartitionMapping())],
    backfill_policy=SPECTRA_BACKFILL,
    retry_policy=PARTITION_RETRY,
    check_specs=check_specs("anomaly_scores", CHECKS),
    automation_condition=dg.AutomationCondition.eager(),
    op_tags=K8S_GPU_TAGS,
    kinds={"parquet", "ray", "pytorch"},
    group_name="scores",
    code_version="1",
)
def anomaly_scores(
    context: dg.AssetExecutionContext,
    config: ScoringConfig,
    storage: StorageResource,
    ray: RayResource,
    gpu: GpuResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Every score component, standardised against S/N, their combination ``anomaly_score`` with its
    p-value, the component, region and arm that explain it, the model version and why it scored
    (``model_status``), and the rank within the release. Which model scores: see
    :func:`~qad_assets.science.model.choice.choose_model`.
    """
    device_choice = gpu.choice()
    device = str(device_choice.torch_device())
    releases = sorted({release_of(key) for key in context.partition_keys})
    registry = mlflow.registry()
    models = {
        release: choose_model(
            storage.asset_dir("vae_model", release),
            registry,
            storage.asset_dir("anomaly_scores", release) / ".models",
            config.model,
        )
        for release in releases
    }
    for release, choice in models.items():
        context.log.info(f"{release}: scored by qad-vae v{choice.version} ({choice.status}): {choice.reason}")

    def step_for(key: str):
        choice = models[release_of(key)]
        return partial(
            score_partition,
            storage.partition_file("normalized_spectra", key),
            out=storage.partition_file("anomaly_scores", key),
            package=choice.package,
            model_version=choice.version,
            model_status=choice.status,
            trained_on_release=choice.trained_on_release,
            device=device,
        )

    summaries = run_partition_steps(context, ray, step_for, num_gpus=1 if device == "cuda" else 0)
    ranked = {
        release: rank_release(sorted(storage.asset_dir("anomaly_scores", release).glob(f"{release}_*.parquet")))
        for release in releases
    }
    mismatched, nonfinite = {}, {}
    for key in summaries:
        scores = read_table(
            storage.partition_file("anomaly_scores", key), columns=["anomaly_score", "p_value", "n_obs"]
        )
        if scores.num_rows != row_count(storage.partition_file("normalized_spectra", key)):
            mismatched[key] = scores.num_rows
        observed = scores["n_obs"].to_numpy() > 0
        bad = ~np.isfinite(scores["anomaly_score"].to_numpy()) | ~np.isfinite(scores["p_value"].to_numpy())
        if (bad & observed).any():
            nonfinite[key] = int((bad & observed).sum())
    return dg.MaterializeResult(
        metadata={
            **stage_metadata(summaries),
            "model_versions": dg.MetadataValue.json({r: m.version for r, m in models.items()}),
            "model_choice": dg.MetadataValue.json(
                {r: {"version": m.version, "status": m.status, "reason": m.reason} for r, m in models.items()}
            ),
            "ranked_spectra_per_release": dg.MetadataValue.json(ranked),
            **device_choice.describe(),
        },
        check_results=[
            check_result(
                "anomaly_scores",
                CHECKS,
                "one_row_per_spectrum",
                not mismatched,
                {"mismatched": dg.MetadataValue.json(mismatched)},
            ),
            check_result(
                "anomaly_scores",
                CHECKS,
                "finite_scores",
                not nonfinite,
                {"nonfinite": dg.MetadataValue.json(nonfinite)},
            ),
        ],
    )
