"""Resources, built in one place: ``build_resources`` for given settings, ``resources_from_env`` for the
code location."""

from __future__ import annotations

import dagster as dg

from qad_assets import config
from qad_assets.config import Settings
from resources.archive import ArchiveResource
from resources.gpu import GpuResource
from resources.labels import LabelStoreResource
from resources.mlflow import MlflowResource
from resources.ray import RayResource
from resources.storage import StorageResource


def build_resources(
    settings: Settings, *, storage: str | dg.EnvVar, archive: str | dg.EnvVar
) -> dict[str, dg.ConfigurableResource]:
    """The resources for ``settings``. ``storage`` and ``archive`` come apart so that the code location can
    pass ``dg.EnvVar``s, read when a run starts, while the CLI passes its own paths.
    """
    return {
        "storage": StorageResource(root=storage),
        "archive": ArchiveResource(root=archive, specprod=settings.specprod, qso_catalog=settings.qso_catalog),
        "mlflow": MlflowResource(storage_root=storage, tracking_uri=settings.mlflow_tracking_uri),
        "gpu": GpuResource(device=settings.device),
        "ray": RayResource(address=settings.ray_address, num_cpus=settings.ray_num_cpus),
        "labels": LabelStoreResource(storage_root=storage, url=settings.labels_db),
    }


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """The code location's resources: ``config.REQUIRED`` (storage root, DESI tree) must be set when a run
    starts, ``config.OPTIONAL`` are read now (``qad_assets.config``).
    """
    return build_resources(Settings.from_env(), storage=dg.EnvVar(config.STORAGE), archive=dg.EnvVar(config.ARCHIVE))
