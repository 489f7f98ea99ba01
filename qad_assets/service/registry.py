"""The model versions the service scores with, by alias, from the MLflow registry.

``refresh`` asks the registry where each alias points and loads a version it does not hold yet; a
version is swapped in with one assignment, so a batch in flight finishes with the model it started with.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qad_assets.science.model.package import ModelPackage
from qad_assets.science.model.registry import ModelRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A registered version in memory and the alias it was loaded for."""

    name: str
    alias: str
    scoring: ModelPackage

    @property
    def version(self) -> str:
        return self.scoring.version

    def describe(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "training_release": self.scoring.training_release,
        }


class RegistryModels:
    """Holds one loaded version per alias in ``aliases`` (``champion``, optionally ``challenger``)."""

    def __init__(self, registry: ModelRegistry, *, aliases: Sequence[str], device: str = "cpu") -> None:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in service logs
        self.registry, self.aliases, self.device = registry, tuple(aliases), device
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, alias: str) -> LoadedModel | None:
        return self._loaded.get(alias)

    def refresh(self) -> dict[str, str | None]:
        """Follow every alias to its current version, loading what changed; returns alias → version."""
        with self._lock:
            for alias in self.aliases:
                version = self.registry.alias_version(alias)
                current = self._loaded.get(alias)
                if version is None:
                    self._loaded.pop(alias, None)
                elif current is None or current.version != version:
                    self._loaded[alias] = LoadedModel(self.registry.registered_model, alias, self._scoring(version))
                    log.info("%s is now %s version %s", alias, self.registry.registered_model, version)
            return {alias: m.version if (m := self._loaded.get(alias)) else None for alias in self.aliases}

    def _scoring(self, version: str) -> ModelPackage:
        """A version already held under another alias is shared; anything else is downloaded (weights and
        scorer only, nothing unpickled) into a temporary folder, loaded, and the folder removed.
        """
        for held in self._loaded.values():
            if held.version == version:
                return held.scoring
        release = self.registry.version_tags(version).get("release")
        with tempfile.TemporaryDirectory(prefix=f"qad-model-v{version}-") as tmp:
            model_dir = self.registry.download_model_dir(version, Path(tmp))
            return ModelPackage.load(model_dir, version=version, training_release=release, device=self.device)
