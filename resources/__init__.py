"""Resources, chosen per environment in one place (``resources_from_env``)."""

from __future__ import annotations

import os

import dagster as dg

from resources.archive import ArchiveResource
from resources.gpu import GpuResource
from resources.mlflow import MlflowResource
from resources.ray import RayResource
from resources.storage import StorageResource


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """The resources of the code location, configured from environment variables.

    ``QAD_STORAGE`` (storage root) and ``QAD_ARCHIVE`` (DESI tree) are required at run time;
    ``QAD_SPECPROD``, ``QAD_QSO_CATALOG``, ``QAD_DEVICE`` (auto/cuda/cpu),
    ``MLFLOW_TRACKING_URI``, ``RAY_ADDRESS`` and
    ``QAD_RAY_NUM_CPUS`` are optional.
    """
    return {
        "storage": StorageResource(root=dg.EnvVar("QAD_STORAGE")),
        "archive": ArchiveResource(
            root=dg.EnvVar("QAD_ARCHIVE"),
            specprod=os.environ.get("QAD_SPECPROD") or None,
            qso_catalog=os.environ.get("QAD_QSO_CATALOG") or None,
        ),
        "mlflow": MlflowResource(
            storage_root=dg.EnvVar("QAD_STORAGE"), tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", "")
        ),
        "gpu": GpuResource(device=os.environ.get("QAD_DEVICE", "auto")),
        "ray": RayResource(
            address=os.environ.get("RAY_ADDRESS") or None,
            num_cpus=int(os.environ["QAD_RAY_NUM_CPUS"]) if os.environ.get("QAD_RAY_NUM_CPUS") else None,
        ),
    }
