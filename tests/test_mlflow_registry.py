"""The MLflow registry behind vae_model and anomaly_scores: versions, aliases, tags, safe loading."""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow as mlflow_api
import numpy as np
import pytest
import torch

from qad_assets.errors import GridMismatchError, ModelPackageError
from qad_assets.science.model.package import load_model, save_model
from qad_assets.science.model.registry import CHALLENGER, CHAMPION, ModelRegistry
from qad_assets.science.model.vae import SpectrumVAE, VaeConfig, reconstruct
from qad_assets.science.spectra.rest_frame import REST_GRID, lya_forest_mask


def small_model(seed: int) -> SpectrumVAE:
    torch.manual_seed(seed)
    return SpectrumVAE(REST_GRID.npix, lya_forest_mask(REST_GRID), VaeConfig(hidden=(32,), latent_dim=4)).eval()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRegistry, list[Path]]:
    root = tmp_path_factory.mktemp("storage")
    mlflow = ModelRegistry(str(root))
    dirs = []
    for seed in (0, 1):
        model_dir = save_model(small_model(seed), VaeConfig(hidden=(32,), latent_dim=4), REST_GRID, root / f"m{seed}")
        run_id, version = mlflow.log_model_version(
            model_dir,
            npix=REST_GRID.npix,
            params={"seed": seed},
            history={"train_loss": [2.0, 1.5], "val_loss": [2.1, 1.6]},
            tags={"release": "demo", "dagster_run_id": f"run-{seed}"},
        )
        assert version == str(seed + 1) and run_id
        dirs.append(model_dir)
    return mlflow, dirs


def spectra(n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    flux = (1 + 0.1 * rng.normal(size=(n, REST_GRID.npix))).astype(np.float32)
    ivar = np.full((n, REST_GRID.npix), 25.0, np.float32)
    ivar[:, :1000] = 0
    return flux, ivar


def test_versions_carry_tags_and_metrics(registry) -> None:
    mlflow, _ = registry
    client = mlflow.client()
    version = client.get_model_version("qad-vae", "2")
    assert version.tags["release"] == "demo" and version.tags["dagster_run_id"] == "run-1"
    run = client.get_run(version.run_id)
    assert run.data.params["seed"] == "1"
    assert [m.value for m in client.get_metric_history(version.run_id, "val_loss")] == [2.1, 1.6]
    assert run.data.tags["dagster_run_id"] == "run-1"


def test_aliases_move_and_loading_by_alias_gives_the_same_predictions(registry, tmp_path: Path) -> None:
    mlflow, dirs = registry
    mlflow.set_alias(CHALLENGER, "2")
    mlflow.set_alias(CHAMPION, "1")
    assert mlflow.version_for(CHAMPION) == "1" and mlflow.version_for(CHALLENGER) == "2"
    flux, ivar = spectra()
    for alias, local in ((CHAMPION, dirs[0]), (CHALLENGER, dirs[1])):
        downloaded = mlflow.download_model_dir(alias, tmp_path / alias)
        assert (downloaded / "model.json").exists()
        model, _, _ = load_model(downloaded, grid=REST_GRID)
        expected, _, _ = load_model(local, grid=REST_GRID)
        np.testing.assert_array_equal(
            reconstruct(model, flux, ivar).spectrum, reconstruct(expected, flux, ivar).spectrum
        )
    mlflow.set_alias(CHAMPION, "2")  # promotion moves the alias; the next download follows it
    assert mlflow.version_for(CHAMPION) == "2"


def test_a_registered_model_refuses_another_grid(registry, tmp_path: Path) -> None:
    mlflow, _ = registry
    downloaded = mlflow.download_model_dir("1", tmp_path / "v1")
    with pytest.raises(GridMismatchError):
        load_model(downloaded, grid=REST_GRID.wave[:-1])


def test_logging_a_version_leaves_the_environment_as_it_found_it(registry, tmp_path: Path, monkeypatch) -> None:
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into os.environ: a qad run started afterwards
    from this process registered its model into the first store (version 4 of another release).
    """
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    _, dirs = registry
    other = ModelRegistry(str(tmp_path))
    _, version = other.log_model_version(dirs[0], npix=REST_GRID.npix, params={}, history={}, tags={})
    assert version == "1"
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    other.log_model_version(dirs[0], npix=REST_GRID.npix, params={}, history={}, tags={})
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"
    assert sorted(int(v.version) for v in other.client().search_model_versions("name='qad-vae'")) == [1, 2]
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # MLflow follows the environment again, not a pinned copy
    assert mlflow_api.get_tracking_uri() != "sqlite:///elsewhere.db"


def test_two_threads_log_into_their_own_registries(registry, tmp_path: Path, monkeypatch) -> None:
    """The fluent URIs and the active run are process-wide: unserialized, both threads' runs failed."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _, dirs = registry
    stores = [ModelRegistry(str(tmp_path / name)) for name in ("a", "b")]

    def log_twice(store: ModelRegistry) -> list[str]:
        return [
            store.log_model_version(dirs[0], npix=REST_GRID.npix, params={}, history={}, tags={})[1] for _ in range(2)
        ]

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(log_twice, stores)) == [["1", "2"], ["1", "2"]]
    assert "MLFLOW_TRACKING_URI" not in os.environ


@pytest.mark.parametrize("model_error", [float("nan"), -0.05, None, "0.05"])
def test_a_package_with_a_broken_model_error_is_refused_naming_its_file(tmp_path: Path, model_error) -> None:
    """NaN would make every χ² NaN, silently; None or a string failed later inside reconstruct."""
    folder = save_model(small_model(0), VaeConfig(hidden=(32,), latent_dim=4), REST_GRID, tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    meta["config"]["model_error"] = model_error
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelPackageError, match=r"model\.json: config: model_error must be a number in \[0, 1\)"):
        load_model(folder, grid=REST_GRID)
