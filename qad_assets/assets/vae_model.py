"""``vae_model``: the VAE of one release, trained on its normalized spectra and registered in MLflow."""

import tempfile
from pathlib import Path

import dagster as dg
import torch
from pydantic import Field

from qad_assets.assets.fan_out import CheckTable, check_result, check_specs
from qad_assets.assets.normalized_spectra import normalized_spectra
from qad_assets.partitions import release_partitions
from qad_assets.science.io.parquet_store import read_spectra
from qad_assets.science.model.package import ModelPackage, publish_package, stage_package
from qad_assets.science.model.scoring import fit_scorer
from qad_assets.science.model.training import TrainOptions, TrainResult, train_vae, train_vae_ray
from qad_assets.science.model.vae import VaeConfig
from qad_assets.science.spectra.rest_frame import REST_GRID
from resources.gpu import GpuResource
from resources.k8s import K8S_GPU_TAGS
from resources.mlflow import CHALLENGER, MlflowResource
from resources.ray import RayResource
from resources.storage import StorageResource

#: Spectra the scorer's latent density and S/N calibrations are fitted on (a bounded sample of a release).
MAX_SCORER_ROWS = 200_000

#: Validation χ² per effective pixel above which the model did not learn quasars (noise alone gives 1).
MAX_VAL_REDUCED_CHI2 = 2.0

#: Retrain at most weekly (Sunday 05:00 UTC), once the release's normalized spectra have changed: a new
#: model per new partition would churn the registry and the scores.
RETRAIN_WEEKLY = dg.AutomationCondition.on_cron("0 5 * * 0", cron_timezone="UTC")

CHECKS: CheckTable = {
    "loss_decreased": (True, "validation loss of the best epoch is below that of the first epoch"),
    "val_reduced_chi2": (True, f"validation χ²/pixel of the best epoch ≤ {MAX_VAL_REDUCED_CHI2}"),
}


class VaeTrainingConfig(dg.Config):
    """Model and training knobs (defaults and their reasons: docs/model.md)."""

    latent_dim: int = VaeConfig.latent_dim
    hidden: list[int] = Field(default_factory=lambda: list(VaeConfig.hidden))
    beta: float = VaeConfig.beta
    forest_weight: float = VaeConfig.forest_weight
    seed: int = 0
    max_epochs: int = 40
    patience: int = 5
    batch_size: int = 256
    learning_rate: float = 1e-3
    ray_workers: int = Field(default=0, description="Ray Train workers; 0 trains in this process")

    def vae_config(self) -> VaeConfig:
        return VaeConfig(
            latent_dim=self.latent_dim, hidden=tuple(self.hidden), beta=self.beta, forest_weight=self.forest_weight
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
    """Train on every ``normalized_spectra`` partition of the release, log the run to MLflow and register
    a new ``qad-vae`` version with alias ``challenger`` (``champion`` comes after validation).
    """
    release = context.partition_key
    paths = sorted(storage.asset_dir("normalized_spectra", release).glob("*.parquet"))
    if not paths:
        raise dg.Failure(f"no normalized_spectra partitions of release {release} under {storage.root}")
    device_choice, registry = gpu.choice(), mlflow.registry()
    device = device_choice.torch_device()
    release_dir = storage.asset_dir("vae_model", release)
    result = train(config, paths, device, release_dir / "ray")
    options = config.train_options()
    spectra = read_spectra(paths, max_rows=MAX_SCORER_ROWS, wave=REST_GRID.wave)
    scorer = fit_scorer(result.model, spectra, val_fraction=options.val_fraction, grid=REST_GRID)
    staged = stage_package(release_dir, ModelPackage(result.model, result.config, options, scorer))
    tags = {"release": release, "dagster_run_id": context.run.run_id, "code_version": "1", "device": str(device)}
    params = {**result.config.to_dict(), **vars(options), "partitions": len(paths)}
    run_id, version = registry.log_model_version(
        staged, npix=REST_GRID.npix, params=params, history=result.history, tags=tags
    )
    history = result.history
    checks = [
        check_result(
            "vae_model",
            CHECKS,
            "loss_decreased",
            min(history["val_loss"]) < history["val_loss"][0],
            {"first": history["val_loss"][0], "best": min(history["val_loss"])},
        ),
        check_result(
            "vae_model",
            CHECKS,
            "val_reduced_chi2",
            result.best_val_reduced_chi2 <= MAX_VAL_REDUCED_CHI2,
            {"val_reduced_chi2": result.best_val_reduced_chi2},
        ),
    ]
    if all(c.passed for c in checks):
        registry.set_alias(CHALLENGER, version)
    publish_package(release_dir, staged, version=version, run_id=run_id)
    return dg.MaterializeResult(
        metadata={
            "model_uri": f"models:/{registry.registered_model}/{version}",
            "model_version": version,
            "mlflow_run_id": run_id,
            "mlflow_tracking_uri": registry.uri(),
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "val_reduced_chi2": result.best_val_reduced_chi2,
            "train_loss": dg.MetadataValue.json(history["train_loss"]),
            "val_loss": dg.MetadataValue.json(history["val_loss"]),
            "throughput_spectra_per_s": round(result.throughput, 1),
            "partitions": len(paths),
            **device_choice.describe(),
        },
        check_results=checks,
    )


def train(config: VaeTrainingConfig, paths: list[Path], device: torch.device, ray_dir: Path) -> TrainResult:
    """Single process (CPU or the GPU), or Ray Train DDP with ``ray_workers`` workers (on the Ray that
    the ``ray`` resource connected to)."""
    if config.ray_workers <= 0:
        return train_vae(paths, REST_GRID, config.vae_config(), config.train_options(), device=device)
    ray_dir.mkdir(parents=True, exist_ok=True)
    return train_vae_ray(
        paths,
        REST_GRID,
        config.vae_config(),
        config.train_options(),
        storage_path=tempfile.mkdtemp(dir=ray_dir),
        num_workers=config.ray_workers,
        use_gpu=device.type == "cuda",
    )
