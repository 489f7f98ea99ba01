"""How the scoring service is configured: ``qad serve`` options plus the pipeline's environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from qad_assets.config import Settings
from qad_assets.science.model.registry import ModelRegistry


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
        """Settings from the variables the pipeline reads too (``qad_assets.config``): the MLflow tracking
        URI, the device, the QSO catalogue; ``options`` (the command line) come on top.
        """
        env = Settings.from_env()
        return cls(
            storage_root=storage_root,
            tracking_uri=env.mlflow_tracking_uri,
            device=env.device,
            qso_catalog=env.qso_catalog,
            **options,
        )

    def registry(self) -> ModelRegistry:
        return ModelRegistry(
            storage_root=self.storage_root, tracking_uri=self.tracking_uri, registered_model=self.registered_model
        )

    def shadow_folder(self) -> Path:
        return Path(self.storage_root) / "serving" / "shadow"
