"""The model package: a trained VAE and everything scoring needs, saved, published and loaded as one unit.

One home for the layout. A package is a directory::

    weights.safetensors   the VAE's tensors (safetensors: no code, nothing unpickled)
    model.json            architecture config and the rest-frame grid's fingerprint
    training.json         the TrainOptions it was trained with (val_fraction, seed, epochs, ...)
    scorer.json           latent density, S/N calibrations, p-value reference
    registration.json     which registered MLflow version it is, and the SHA-256 of every file above

A release's trained model lives under ``<release folder>/packages/v<version>/`` and ``current`` (a
symbolic link) names the one in use. A package is written in a staging folder, registered, then renamed
into place and ``current`` swapped in one rename: a crash at any point leaves the previous package
whole and in use, and :func:`load_verified_model` (the way in for :meth:`ModelPackage.load` and the
explorer) refuses a package whose files do not match their recorded hashes. The batch
``anomaly_scores`` step, the validation report and the scoring service all load and score through
:class:`ModelPackage`. Plain numpy/torch, no Dagster.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from qad_assets.errors import GridMismatchError, ModelPackageError
from qad_assets.science.io.atomic_files import write_atomic, write_bytes_atomic
from qad_assets.science.model.scoring import Scorer, score_spectra
from qad_assets.science.model.training import TrainOptions
from qad_assets.science.model.vae import SpectrumVAE, VaeConfig
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.rest_frame import REST_GRID, RestFrameGrid, grid_fingerprint

WEIGHTS_FILE = "weights.safetensors"
MODEL_FILE = "model.json"
TRAINING_FILE = "training.json"
SCORER_FILE = "scorer.json"
REGISTRATION_FILE = "registration.json"
#: The files a package is made of, besides its registration.
PACKAGE_FILES = (WEIGHTS_FILE, MODEL_FILE, TRAINING_FILE, SCORER_FILE)
_FORMAT_VERSION = 1

#: Per-spectrum outputs of scoring that the batch table and the service both report, besides S/N.
SCORE_COLUMNS = (
    "reduced_chi2",
    "chi2",
    "n_obs",
    "kl",
    "neg_elbo",
    "latent_nll",
    "anomaly_score",
    "p_value",
    "top_component",
    "top_region",
    "top_region_share",
    "worst_arm",
)


@dataclass(frozen=True)
class ModelPackage:
    """A trained model in memory: the network, the recipe that made it, its scorer, and which registered
    version it is. ``training_release`` is the release it was trained on: its training-split spectra are
    standardised against the training calibration, as in the batch.
    """

    model: SpectrumVAE
    config: VaeConfig
    options: TrainOptions
    scorer: Scorer
    version: str = ""
    training_release: str | None = None
    device: str = "cpu"

    def save(self, folder: Path, grid: RestFrameGrid = REST_GRID) -> Path:
        """Write every package file into ``folder`` (created), each atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self.model, self.config, grid, folder)
        write_bytes_atomic(folder / TRAINING_FILE, json.dumps(asdict(self.options), indent=2).encode())
        self.scorer.save(folder / SCORER_FILE)
        return folder

    @classmethod
    def load(
        cls, folder: Path, *, version: str | None = None, training_release: str | None = None, device: str = "cpu"
    ) -> ModelPackage:
        """Load a package; with a registration, check every file's hash and take the version from it."""
        folder = Path(folder)
        model, config, registration = load_verified_model(folder, map_location=device)
        options = TrainOptions(**json.loads((folder / TRAINING_FILE).read_text()))
        version = version or (registration or {}).get("version", "")
        return cls(model, config, options, Scorer.load(folder / SCORER_FILE), version, training_release, device)

    def score(self, spectra: Spectra, *, from_training_release: np.ndarray | bool = False) -> dict[str, np.ndarray]:
        """Rest-frame normalized spectra → ``snr``, every :data:`SCORE_COLUMNS` entry and ``latent_mean``
        (N, L). Rows from the training release (``from_training_release``) that fall in the training
        split are standardised against the training spectra.
        """
        in_training = self.scorer.training_rows(spectra.targetid) & np.asarray(from_training_release, bool)
        scores = score_spectra(self.model, self.scorer, spectra, REST_GRID, in_training=in_training, device=self.device)
        return {"snr": spectra.snr, **scores}


def stage_package(release_dir: Path, package: ModelPackage) -> Path:
    """Write ``package`` into a fresh staging folder under ``release_dir/packages`` (not yet in use)."""
    staging = release_dir / "packages" / f".staging-{uuid.uuid4().hex}"
    return package.save(staging)


def publish_package(
    release_dir: Path, staged: Path, *, version: str, run_id: str, gate: dict[str, Any] | None = None
) -> Path:
    """Register a staged package (version, run id, its quality gate, file hashes), rename it to
    ``packages/v<version>`` and point ``current`` at it, in that order: the switch is one rename of a
    symbolic link.
    """
    registration = {"version": version, "mlflow_run_id": run_id, "gate": gate, "sha256": _hashes(staged)}
    write_bytes_atomic(staged / REGISTRATION_FILE, json.dumps(registration, indent=2).encode())
    final = release_dir / "packages" / f"v{version}"
    if final.exists():  # a rerun registered the same version again: replace it whole
        shutil.rmtree(final)
    staged.rename(final)
    link = release_dir / f".current-{uuid.uuid4().hex}"
    link.symlink_to(final.relative_to(release_dir))
    os.replace(link, release_dir / "current")
    return final


def current_package(release_dir: Path) -> Path:
    """The package a release uses now; :class:`ModelPackageError` when none was published."""
    current = release_dir / "current"
    if not current.exists():
        raise ModelPackageError(f"{release_dir}: no trained model for this release; materialize vae_model first")
    return current.resolve()


def read_registration(package: Path) -> dict[str, Any]:
    """The registration of a published package (its version, MLflow run and file hashes)."""
    path = Path(package) / REGISTRATION_FILE
    if not path.exists():
        raise ModelPackageError(f"{package}: not a published model package (no {REGISTRATION_FILE})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelPackageError(
            f"{path}: not a readable registration ({err}); retrain, or restore the package"
        ) from None


class PackageChangedError(ModelPackageError):
    """A package file is not the one its registration recorded: ``version`` is the registered version,
    ``files`` the files that differ (a front end that cannot show a path says which version broke).
    """

    def __init__(self, folder: Path, version: str, files: list[str]) -> None:
        super().__init__(
            f"{folder}: {', '.join(files)} changed since version {version} was registered; "
            "the package's parts do not belong together (retrain, or restore the package)"
        )
        self.version = version
        self.files = files


def load_verified_model(
    folder: Path, *, grid: RestFrameGrid = REST_GRID, map_location: str | torch.device = "cpu"
) -> tuple[SpectrumVAE, VaeConfig, dict[str, Any] | None]:
    """The VAE, its config and the registration of a package, loaded only after every file matched its
    recorded hash: the one way in for everything that draws or scores with a published package, so that
    a damaged file is :class:`PackageChangedError`, never a deserialisation error from inside safetensors.
    """
    registration = _verified_registration(folder)
    model, config, _ = load_model(folder, grid=grid, map_location=map_location)
    return model, config, registration


def _verified_registration(folder: Path) -> dict[str, Any] | None:
    """The registration, after checking that every file is the one it recorded; None if unregistered."""
    if not (folder / REGISTRATION_FILE).exists():
        return None
    registration = read_registration(folder)
    found = _hashes(folder)
    mismatched = sorted(name for name, digest in registration["sha256"].items() if found.get(name) != digest)
    if mismatched:
        raise PackageChangedError(folder, str(registration["version"]), mismatched)
    return registration


def _hashes(folder: Path) -> dict[str, str]:
    return {name: _sha256(folder / name) for name in PACKAGE_FILES if (folder / name).exists()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model: SpectrumVAE, config: VaeConfig, grid: Any, folder: str | Path) -> Path:
    """Write the weights (safetensors: tensors only, no code) and ``model.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(folder / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
    meta = {
        "format_version": _FORMAT_VERSION,
        "weights": WEIGHTS_FILE,
        "config": config.to_dict(),
        "grid": {"npix": model.npix, "sha256": grid_fingerprint(grid)},
    }
    write_atomic(folder / MODEL_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    return folder


def load_model(
    folder: str | Path, *, grid: Any = None, map_location: str | torch.device = "cpu"
) -> tuple[SpectrumVAE, VaeConfig, dict[str, Any]]:
    """The VAE of a package folder, in eval mode, read without unpickling code; with ``grid``, checked
    to be the grid it was trained on (:class:`~qad_assets.errors.GridMismatchError` otherwise).
    """
    folder = Path(folder)
    meta = json.loads((folder / MODEL_FILE).read_text())
    grid_info = meta["grid"]
    if grid is not None and grid_fingerprint(grid) != grid_info["sha256"]:
        raise GridMismatchError(
            f"model rest grid (npix={grid_info['npix']}, sha256={grid_info['sha256'][:12]}…) differs from the "
            f"data's (sha256={grid_fingerprint(grid)[:12]}…): retrain the VAE on this grid or resample the data"
        )
    try:
        config = VaeConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as err:
        raise ModelPackageError(f"{folder / MODEL_FILE}: config: {err}") from err
    state = load_file(str(folder / meta["weights"]), device=str(map_location))
    model = SpectrumVAE(grid_info["npix"], state["forest_mask"].cpu().numpy(), config)
    model.load_state_dict(state)
    return model.to(map_location).eval(), config, grid_info
