"""MLflow for the assets: ``ModelRegistry`` (``qad_assets.science.model.registry``) as a Dagster resource."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from mlflow import MlflowClient

from qad_assets.science.model.registry import CHALLENGER, CHAMPION, ModelRegistry

__all__ = ["CHALLENGER", "CHAMPION", "MlflowResource"]


class MlflowResource(dg.ConfigurableResource):
    """Where runs and models go: ``tracking_uri`` (``MLFLOW_TRACKING_URI``), else a SQLite-backed store
    under ``<storage_root>/mlflow``. Every method is the ``ModelRegistry``'s with these fields.
    """

    storage_root: str
    tracking_uri: str = ""
    experiment: str = "desi-qad"
    registered_model: str = "qad-vae"

    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.storage_root, self.tracking_uri, self.experiment, self.registered_model)

    def uri(self) -> str:
        return self.registry().uri()

    def client(self) -> MlflowClient:
        return self.registry().client()

    def experiment_id(self) -> str:
        return self.registry().experiment_id()

    def log_model_version(
        self,
        model_dir: Path,
        *,
        npix: int,
        params: dict[str, Any],
        history: dict[str, list[float]],
        tags: dict[str, str],
    ) -> tuple[str, str]:
        return self.registry().log_model_version(model_dir, npix=npix, params=params, history=history, tags=tags)

    def set_alias(self, alias: str, version: str) -> None:
        self.registry().set_alias(alias, version)

    def version_for(self, reference: str) -> str:
        return self.registry().version_for(reference)

    def alias_version(self, alias: str) -> str | None:
        return self.registry().alias_version(alias)

    def version_tags(self, version: str) -> dict[str, str]:
        return self.registry().version_tags(version)

    def download_model_dir(self, reference: str, dst: Path) -> Path:
        return self.registry().download_model_dir(reference, dst)
