"""``vae_model``: the VAE of one release, trained on its normalized spectra and registered in MLflow."""

import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import torch
from pydantic import Field

from qad_assets.assets.fan_out import CheckTable, check_result, check_specs
from qad_assets.assets.normalized_spectra import normalized_spectra
from qad_assets.errors import TooFewSpectraError
from qad_assets.partitions import release_partitions
from qad_assets.science.io.parquet_store import read_spectra, read_table
from qad_assets.science.model.package import ModelPackage, publish_package, stage_package
from qad_assets.science.model.scoring import fit_scorer
from qad_assets.science.model.training import TrainOptions, TrainResult, train_vae, train_vae_ray
from qad_assets.science.model.vae import VaeConfig
from qad_assets.science.spectra.rest_frame import REST_GRID
from qad_assets.science.validation.gate import CHI2_RANGE, PCA_TOLERANCE, evaluate_gate
from resources.gpu import GpuResource
from resources.k8s import K8S_GPU_TAGS
from resources.mlflow import CHALLENGER, MlflowResource
from resources.ray import RayResource
from resources.storage import StorageResource

#: Spectra the scorer's latent density and S/N calibrations are fitted on: a sample spread over the release
#: (every k-th row of every partition), 1.6 GB in memory, whatever the release (docs/scale.md).
MAX_SCORER_ROWS = 50_000

#: Retrain at most weekly (Sunday 05:00 UTC), once the release's normalized spectra have changed: a new
#: model per new partition would churn the registry and the scores.
RETRAIN_WEEKLY = dg.AutomationCondition.on_cron("0 5 * * 0", cron_timezone="UTC")

#: The quality gate (science/validation/gate.py), one check each. None blocks: a model that fails is
#: registered, not promoted, and scores the release only when there is no champion.
CHECKS: CheckTable = {
    "beats_pca": (False, f"held-out median reduced χ² (noise model) within {PCA_TOLERANCE}× the 10-component PCA's"),
    "noise_calibrated": (False, f"held-out median reduced χ² with the release's noise model in {CHI2_RANGE}"),
    "loss_decreased": (False, "validation loss of the best epoch is below that of the first epoch"),
}


class VaeTrainingConfig(dg.Config):
    """Model and training knobs (defaults and their reasons: docs/model.md)."""

    latent_dim: int = VaeConfig.latent_dim
    hidden: list[int] = Field(default_factory=lambda: list(VaeConfig.hidden))
    beta: float = VaeConfig.beta
    forest_weight: float = VaeConfig.forest_weight
    model_error: float = Field(
        default=VaeConfig.model_error, ge=0.0, lt=1.0, description="training likelihood's model-error floor ε"
    )
    seed: int = 0
    max_epochs: int = 40
    patience: int = 5
    batch_size: int = 256
    learning_rate: float = 1e-3
    ray_workers: int = Field(default=0, description="Ray Train workers; 0 trains in this process")

    def vae_config(self) -> VaeConfig:
        return VaeConfig(
            latent_dim=self.latent_dim,
            hidden=tuple(self.hidden),
            beta=self.beta,
            forest_weight=self.forest_weight,
            model_error=self.model_error,
        )

    def train_options(self) -> TrainOptions:
        return TrainOptions(
            seed=self.seed,
            max_epochs=self.max_epochs,
            patience=self.patience,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
        )


@dg.asset(
    partitions_def=release_partitions,
    deps=[dg.AssetDep(normalized_spectra, partition_mapping=dg.AllPartitionMapping())],
    check_specs=check_specs("vae_model", CHECKS),
    pool="gpu",
    automation_condition=RETRAIN_WEEKLY,
    op_tags=K8S_GPU_TAGS,
    kinds={"pytorch", "mlflow", "ray"},
    group_name="model",
    code_version="1",
)
def vae_model(
    context: dg.AssetExecutionContext,
    config: VaeTrainingConfig,
    storage: StorageResource,
    ray: RayResource,  # connects Ray before Ray Train starts
    gpu: GpuResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Train on every ``normalized_spectra`` partition of the release, fit its noise model and scorer,
    judge it with the quality gate, log the run to MLflow and register a new ``qad-vae`` version; alias
    ``challenger`` when the gate passes (``champion`` comes after validation). A release too small to
    train on is recorded as such and scored by the champion.
    """
    release = context.partition_key
    paths = sorted(storage.asset_dir("normalized_spectra", release).glob("*.parquet"))
    targetid = np.concatenate(
        [np.empty(0, np.int64)] + [read_table(p, columns=["TARGETID"])["TARGETID"].to_numpy() for p in paths]
    )
    n_spectra = len(targetid)
    try:
        options = config.train_options().for_targets(targetid)
    except TooFewSpectraError as err:
        context.log.warning(f"vae_model {release}: not trained: {err}; the champion scores it")
        return dg.MaterializeResult(
            metadata={"trained": False, "reason": str(err), "spectra": n_spectra},
            check_results=[
                check_result("vae_model", CHECKS, name, False, {"not_trained": str(err)}) for name in CHECKS
            ],
        )
    device_choice, registry = gpu.choice(), mlflow.registry()
    device = device_choice.torch_device()
    release_dir = storage.asset_dir("vae_model", release)
    result = train(config, options, paths, device, release_dir / "ray")
    spectra = read_spectra(paths, max_rows=MAX_SCORER_ROWS, wave=REST_GRID.wave)
    scorer = fit_scorer(result.model, spectra, val_fraction=options.val_fraction, grid=REST_GRID)
    gate = evaluate_gate(result.model, scorer.noise, spectra, options.val_fraction, result.history["val_loss"])
    staged = stage_package(release_dir, ModelPackage(result.model, result.config, options, scorer))
    tags = {"release": release, "dagster_run_id": context.run.run_id, "code_version": "2", "device": str(device)}
    tags["gate"] = gate.summary()
    params = {**result.config.to_dict(), **vars(options), "partitions": len(paths)}
    run_id, version = registry.log_model_version(
        staged, npix=REST_GRID.npix, params=params, history=result.history, tags=tags
    )
    if gate.passed:
        registry.set_alias(CHALLENGER, version)
    publish_package(release_dir, staged, version=version, run_id=run_id, gate=gate.to_dict())
    figures = gate.figures
    passed = {
        "beats_pca": figures["vae_median_reduced_chi2"] <= PCA_TOLERANCE * figures["pca_median_reduced_chi2"],
        "noise_calibrated": CHI2_RANGE[0] <= figures["vae_median_reduced_chi2"] <= CHI2_RANGE[1],
        "loss_decreased": figures["best_val_loss"] < figures["first_val_loss"],
    }
    history = result.history
    return dg.MaterializeResult(
        metadata={
            "trained": True,
            "model_uri": f"models:/{registry.registered_model}/{version}",
            "model_version": version,
            "gate": gate.summary(),
            "mlflow_run_id": run_id,
            "mlflow_tracking_uri": registry.uri(),
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "val_fraction": options.val_fraction,
            "val_reduced_chi2": figures["vae_median_reduced_chi2"],
            "pca_reduced_chi2": figures["pca_median_reduced_chi2"],
            "model_error": scorer.noise.model_error,
            "train_loss": dg.MetadataValue.json(history["train_loss"]),
            "val_loss": dg.MetadataValue.json(history["val_loss"]),
            "throughput_spectra_per_s": round(result.throughput, 1),
            "partitions": len(paths),
            **device_choice.describe(),
        },
        check_results=[
            check_result("vae_model", CHECKS, name, ok, {k: dg.MetadataValue.float(v) for k, v in figures.items()})
            for name, ok in passed.items()
        ],
    )


def train(
    config: VaeTrainingConfig, options: TrainOptions, paths: list[Path], device: torch.device, ray_dir: Path
) -> TrainResult:
    """Single process (CPU or the GPU), or Ray Train DDP with ``ray_workers`` workers (on the Ray that
    the ``ray`` resource connected to)."""
    if config.ray_workers <= 0:
        return train_vae(paths, REST_GRID, config.vae_config(), options, device=device)
    ray_dir.mkdir(parents=True, exist_ok=True)
    return train_vae_ray(
        paths,
        REST_GRID,
        config.vae_config(),
        options,
        storage_path=tempfile.mkdtemp(dir=ray_dir),
        num_workers=config.ray_workers,
        use_gpu=device.type == "cuda",
    )
