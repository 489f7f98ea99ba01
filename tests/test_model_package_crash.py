"""A crash between the model package's writes never leaves a mixed package in use, and a package whose
parts do not belong together is refused.

Two small packages (untrained VAEs of different seeds, each with a scorer fitted on the same synthetic
spectra) stand for the release's current version 1 and a new version 2 being published.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import qad_assets.science.model.package as package_module
from qad_assets.errors import ModelPackageError
from qad_assets.science.model.package import (
    REGISTRATION_FILE,
    SCORER_FILE,
    WEIGHTS_FILE,
    ModelPackage,
    current_package,
    publish_package,
    read_registration,
    stage_package,
)
from qad_assets.science.model.scoring import fit_scorer
from qad_assets.science.model.training import TrainOptions
from qad_assets.science.model.vae import SpectrumVAE, VaeConfig
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.rest_frame import REST_GRID, lya_forest_mask


class Crash(Exception):
    """Stands for the process dying at that point."""


@pytest.fixture(scope="module")
def spectra() -> Spectra:
    rng = np.random.default_rng(0)
    n = 160
    z = rng.uniform(1.0, 3.0, n)
    observed = REST_GRID.wave[None] * (1 + z[:, None])
    cover = (observed > 3600) & (observed < 9824)
    flux = np.where(cover, 1 + 0.1 * rng.normal(size=cover.shape), 0).astype(np.float32)
    ivar = np.where(cover, 100.0, 0).astype(np.float32)
    return Spectra(REST_GRID.wave, flux, ivar, 39627800000000000 + np.arange(n, dtype=np.int64), z)


def make_package(spectra: Spectra, seed: int) -> ModelPackage:
    torch.manual_seed(seed)
    config = VaeConfig(latent_dim=4, hidden=(32,))
    model = SpectrumVAE(REST_GRID.npix, lya_forest_mask(), config).eval()
    options = TrainOptions(seed=seed, val_fraction=0.3)
    return ModelPackage(model, config, options, fit_scorer(model, spectra, val_fraction=options.val_fraction))


@pytest.fixture(scope="module")
def packages(spectra: Spectra) -> tuple[ModelPackage, ModelPackage]:
    return make_package(spectra, 0), make_package(spectra, 1)


@pytest.fixture
def release(tmp_path: Path, packages, spectra: Spectra) -> tuple[Path, np.ndarray]:
    """A release folder whose current package is version 1, and version 1's scores."""
    release_dir = tmp_path / "vae_model" / "demo"
    publish_package(release_dir, stage_package(release_dir, packages[0]), version="1", run_id="run-1")
    return release_dir, ModelPackage.load(current_package(release_dir)).score(spectra)["anomaly_score"]


def assert_version_1_in_use(release_dir: Path, spectra: Spectra, scores: np.ndarray) -> None:
    package = current_package(release_dir)
    assert package.name == "v1" and read_registration(package)["version"] == "1"
    loaded = ModelPackage.load(package)  # every file checked against registration.json
    assert loaded.version == "1"
    np.testing.assert_array_equal(loaded.score(spectra)["anomaly_score"], scores)


def crash_on(monkeypatch: pytest.MonkeyPatch, target: object, name: str, when) -> None:
    """Make ``target.<name>`` raise ``Crash`` on the call for which ``when(*args)`` is true."""
    real = getattr(target, name)

    def maybe_crash(*args, **kwargs):
        if when(*args):
            raise Crash(f"killed in {name}{args!r}")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, maybe_crash)


@pytest.mark.parametrize(
    ("name", "when"),
    [
        ("write_atomic", lambda path, _: Path(path).name == "model.json"),  # weights written, config not
        ("write_bytes_atomic", lambda path, _: Path(path).name == "training.json"),
        ("write_bytes_atomic", lambda path, _: Path(path).name == REGISTRATION_FILE),  # all parts, no registration
        ("replace", lambda src, dst: Path(dst).name == "current"),  # renamed to v2, link not swapped
    ],
    ids=["after-weights", "after-model-json", "before-registration", "before-switch"],
)
def test_a_crash_while_publishing_leaves_the_old_package_whole_and_in_use(
    release, packages, spectra: Spectra, monkeypatch: pytest.MonkeyPatch, name: str, when
) -> None:
    release_dir, scores = release
    crash_on(monkeypatch, package_module.os if name == "replace" else package_module, name, when)
    with pytest.raises(Crash):
        publish_package(release_dir, stage_package(release_dir, packages[1]), version="2", run_id="run-2")
    monkeypatch.undo()
    assert_version_1_in_use(release_dir, spectra, scores)
    # and the next attempt publishes version 2 whole
    publish_package(release_dir, stage_package(release_dir, packages[1]), version="2", run_id="run-2")
    new = ModelPackage.load(current_package(release_dir))
    assert new.version == "2" and current_package(release_dir).name == "v2"
    assert not np.array_equal(new.score(spectra)["anomaly_score"], scores)


@pytest.mark.parametrize("part", [WEIGHTS_FILE, SCORER_FILE])
def test_a_package_whose_parts_do_not_belong_together_is_refused(release, packages, part: str, tmp_path: Path) -> None:
    """The mixed folder of the old layout: version 2's weights (or scorer) under version 1's registration."""
    release_dir, _ = release
    other = stage_package(tmp_path / "other", packages[1])
    shutil.copy(other / part, current_package(release_dir) / part)
    with pytest.raises(ModelPackageError, match=rf"{part} changed since version 1 was registered"):
        ModelPackage.load(current_package(release_dir))
