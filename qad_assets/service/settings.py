"""How the scoring service is configured: ``qad serve`` options plus the pipeline's environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from resources.mlflow import MlflowResource


class ServiceSettings(BaseModel):
    """Where the registry is and how the service behaves."""

    storage_root: str = Field(description="storage root: default MLflow store and the shadow log")
    tracking_uri: str = Field(default="", description="MLflow tracking/registry URI; empty: SQLite under storage")
    registered_model: str = "qad-vae"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    shadow_fraction: float = Field(default=0.0, ge=0.0, le=1.0, description="requests also scored by challenger")
    poll_seconds: float = Field(default=30.0, ge=0.0, description="registry alias polling period; 0: only /reload")
    max_json_bytes: int = Field(default=64 * 2**20, gt=0, description="largest JSON body (≈ 200 DESI spectra)")
    max_upload_bytes: int = Field(default=512 * 2**20, gt=0, description="largest upload (DR1 coadds are ≤ ~300 MB)")
    max_spectra: int = Field(default=4096, gt=0, description="most spectra in one JSON request")
    qso_catalog: str | None = Field(default=None, description="QSO catalogue used for uploads, as the pipeline uses it")
    seed: int = Field(default=0, description="seed of the shadow sampling")

    @classmethod
    def from_env(cls, storage_root: str, **options: Any) -> ServiceSettings:
        """Settings from the variables the pipeline reads too: ``MLFLOW_TRACKING_URI``, ``QAD_DEVICE``,
        ``QAD_QSO_CATALOG``; ``options`` (the command line) come on top.
        """
        return cls(
            storage_root=storage_root,
            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", ""),
            device=os.environ.get("QAD_DEVICE") or "auto",
            qso_catalog=os.environ.get("QAD_QSO_CATALOG") or None,
            **options,
        )

    def mlflow(self) -> MlflowResource:
        return MlflowResource(
            storage_root=self.storage_root, tracking_uri=self.tracking_uri, registered_model=self.registered_model
        )

    def shadow_folder(self) -> Path:
        return Path(self.storage_root) / "serving" / "shadow"
