"""The MLflow registry of the VAE: experiment tracking and the ``qad-vae`` versions and their aliases.

A plain object, so that the scoring service (a Ray Serve replica) uses the registry exactly as the
pipeline's ``MlflowResource`` does without importing Dagster.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow.types import Schema, TensorSpec

from qad_assets.science.model import pyfunc as vae_pyfunc

#: A newly trained version that passed its checks (``vae_model``); the service can shadow-score it.
CHALLENGER = "challenger"
#: The version the batch and the service score with; ``validation_report`` moves it when it promotes.
CHAMPION = "champion"


#: One fluent block at a time: the URIs and the active run are process-wide.
_FLUENT_LOCK = threading.Lock()


@contextmanager
def fluent_uris(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``start_run``, ``log_model``) at ``uri`` for a block, then put back what
    was there: ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into ``os.environ``, which
    every later subprocess (a ``qad`` run, a Ray worker) would inherit and register into this store.
    MLflow's own settings are restored as they were (unset stays unset, so the environment decides again).
    """
    with _FLUENT_LOCK:
        saved_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        saved_tracking, saved_registry = tracking_utils._tracking_uri, registry_utils._registry_uri
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            tracking_utils._tracking_uri, registry_utils._registry_uri = saved_tracking, saved_registry
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@dataclass(frozen=True)
class ModelRegistry:
    """Where runs and models go: ``tracking_uri`` (``MLFLOW_TRACKING_URI``), else a SQLite-backed store
    under ``<storage_root>/mlflow`` so the registry works with no server.
    """

    storage_root: str
    tracking_uri: str = ""
    experiment: str = "desi-qad"
    registered_model: str = "qad-vae"

    def uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        folder = Path(self.storage_root) / "mlflow"
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'mlflow.db'}"

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri(), registry_uri=self.uri())

    def experiment_id(self) -> str:
        """The experiment, created with its artifacts under the storage root on first use."""
        client = self.client()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        artifacts = (Path(self.storage_root) / "mlflow" / "artifacts").as_uri() if not self.tracking_uri else None
        return client.create_experiment(self.experiment, artifact_location=artifacts)

    def log_model_version(
        self,
        model_dir: Path,
        *,
        npix: int,
        params: dict[str, Any],
        history: dict[str, list[float]],
        tags: dict[str, str],
    ) -> tuple[str, str]:
        """Log a trained model (params, per-epoch losses, tags, the model as code + weights) and register
        a new version of ``registered_model``; returns ``(run_id, version)``.
        """
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 2, npix), "spectra")]),
            outputs=Schema([TensorSpec(np.dtype(np.float64), (-1, 3), "reduced_chi2_kl_amplitude")]),
        )
        with fluent_uris(self.uri()), mlflow.start_run(experiment_id=self.experiment_id(), tags=tags) as run:
            mlflow.log_params({k: str(v) for k, v in params.items()})
            for epoch in range(len(history.get("val_loss", []))):
                mlflow.log_metrics({k: float(v[epoch]) for k, v in history.items()}, step=epoch)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=vae_pyfunc.__file__,
                artifacts={"model_dir": str(model_dir)},
                signature=signature,
                registered_model_name=self.registered_model,
            )
        version = str(info.registered_model_version)
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(self.registered_model, version, key, value)
        return run.info.run_id, version

    def set_alias(self, alias: str, version: str) -> None:
        self.client().set_registered_model_alias(self.registered_model, alias, version)

    def version_for(self, reference: str) -> str:
        """A version number for ``reference``: an alias (``champion``) or a version number."""
        if reference.isdigit():
            return reference
        return str(self.client().get_model_version_by_alias(self.registered_model, reference).version)

    def alias_version(self, alias: str) -> str | None:
        """The version ``alias`` points at, None when the alias is not set (or the model not registered)."""
        try:
            aliases = self.client().get_registered_model(self.registered_model).aliases
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return str(aliases[alias]) if alias in aliases else None

    def version_tags(self, version: str) -> dict[str, str]:
        """Tags of a registered version (``release``: what it was trained on, ``dagster_run_id``, ...)."""
        return dict(self.client().get_model_version(self.registered_model, version).tags)

    def download_model_dir(self, reference: str, dst: Path) -> Path:
        """The model's weights directory for an alias or version, copied locally; nothing is unpickled.

        Only the logged ``artifacts`` (weights + scorer) are fetched, from the version's own artifact
        location: no ``models:/`` URI, so no process-wide registry URI is needed.
        """
        version = self.version_for(reference)
        source = self.client().get_model_version_download_uri(self.registered_model, version)
        root = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{source.rstrip('/')}/artifacts", dst_path=str(dst), tracking_uri=self.uri()
        )
        return next(Path(root).iterdir())
