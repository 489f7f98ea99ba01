"""MLflow for the assets: ``ModelRegistry`` (``qad_assets.science.model.registry``) as a Dagster resource."""

from __future__ import annotations

import dagster as dg

from qad_assets.science.model.registry import CHALLENGER, CHAMPION, ModelRegistry

__all__ = ["CHALLENGER", "CHAMPION", "MlflowResource"]


class MlflowResource(dg.ConfigurableResource):
    """Where runs and models go: ``tracking_uri`` (``MLFLOW_TRACKING_URI``), else a SQLite-backed store
    under ``<storage_root>/mlflow``; assets use the registry it builds.
    """

    storage_root: str
    tracking_uri: str = ""
    experiment: str = "desi-qad"
    registered_model: str = "qad-vae"

    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.storage_root, self.tracking_uri, self.experiment, self.registered_model)
