"""The project's configuration: every environment variable it reads, named and read here only.

One module so that the code location, the CLI and the scoring service agree on the names and on what an
empty value means (unset). No Dagster import: the service reads it too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from qad_assets.errors import UserError

STORAGE = "QAD_STORAGE"
ARCHIVE = "QAD_ARCHIVE"
SPECPROD = "QAD_SPECPROD"
QSO_CATALOG = "QAD_QSO_CATALOG"
DEVICE = "QAD_DEVICE"
MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
RAY_ADDRESS = "RAY_ADDRESS"
RAY_NUM_CPUS = "QAD_RAY_NUM_CPUS"
#: SQLAlchemy URL of the label database (empty: SQLite under the storage root).
LABELS_DB = "QAD_LABELS_DB"
#: Dagster's own variable, set only for a child process (``qad ui``): ``<storage>/dagster_home``.
DAGSTER_HOME = "DAGSTER_HOME"
#: Ray's switch for a machine that is not part of a cluster: at "0" a local Ray takes 127.0.0.1 as its node
#: address, so its GCS, raylet, workers and agents listen on loopback only (by default they listen on every
#: interface). Ray reads it when it is imported: set it first (``keep_local_ray_on_loopback``).
RAY_LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

#: What a run needs; the code location loads without them (they are ``dg.EnvVar``s until a run starts).
REQUIRED = (STORAGE, ARCHIVE)
OPTIONAL = (SPECPROD, QSO_CATALOG, DEVICE, MLFLOW_TRACKING_URI, RAY_ADDRESS, RAY_NUM_CPUS, LABELS_DB)

Device = Literal["auto", "cuda", "cpu"]

#: Release and production (specprod) names: they become partition keys (``<release>_<survey>_...``) and
#: folder names under the storage root and the archive, so only lower-case ASCII letters and digits.
NAME_PATTERN = re.compile(r"[a-z0-9]{1,32}")


def check_name(kind: str, name: object) -> str:
    """``name`` when it is a valid release or specprod name (``NAME_PATTERN``), else a ``UserError`` that
    says why. Every place where such a name becomes a partition key or a path calls this.
    """
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise UserError(
            f"{kind} name {name!r} must be 1 to 32 lower-case ASCII letters and digits: it becomes a partition "
            "key and a folder name"
        )
    return name


@dataclass(frozen=True)
class Settings:
    """Where the products, the DESI tree, the MLflow registry, Ray and the label database are, and which
    torch device to use.

    ``storage`` and ``archive`` are None when unset; ``device`` is ``auto`` (CUDA if available), ``cuda``
    or ``cpu``; an empty ``mlflow_tracking_uri`` means the SQLite registry under the storage root, an
    empty ``labels_db`` the SQLite label database there.
    """

    storage: str | None = None
    archive: str | None = None
    specprod: str | None = None
    qso_catalog: str | None = None
    device: Device = "auto"
    mlflow_tracking_uri: str = ""
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    labels_db: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """The settings ``environ`` gives; an empty variable is the same as an unset one."""

        def get(name: str) -> str | None:
            return environ.get(name) or None

        cpus = get(RAY_NUM_CPUS)
        return cls(
            storage=get(STORAGE),
            archive=get(ARCHIVE),
            specprod=get(SPECPROD),
            qso_catalog=get(QSO_CATALOG),
            device=cast(Device, get(DEVICE) or "auto"),
            mlflow_tracking_uri=get(MLFLOW_TRACKING_URI) or "",
            ray_address=get(RAY_ADDRESS),
            ray_num_cpus=int(cpus) if cpus else None,
            labels_db=get(LABELS_DB) or "",
        )

    def dagster_home(self) -> Path | None:
        """The storage root's Dagster instance folder, where its runs are recorded."""
        return Path(self.storage) / "dagster_home" if self.storage else None

    def environment(self) -> dict[str, str]:
        """The variables that give a child process exactly these settings: every one, empty when unset, so
        that nothing the parent's environment holds overrides them; with a storage root, ``DAGSTER_HOME``.
        """
        values = {
            STORAGE: self.storage,
            ARCHIVE: self.archive,
            SPECPROD: self.specprod,
            QSO_CATALOG: self.qso_catalog,
            DEVICE: self.device,
            MLFLOW_TRACKING_URI: self.mlflow_tracking_uri,
            RAY_ADDRESS: self.ray_address,
            RAY_NUM_CPUS: None if self.ray_num_cpus is None else str(self.ray_num_cpus),
            LABELS_DB: self.labels_db,
        }
        env = {name: value or "" for name, value in values.items()}
        if (home := self.dagster_home()) is not None:
            env[DAGSTER_HOME] = str(home)
        if not self.ray_address:
            env[RAY_LOOPBACK] = "0"
        return env


def keep_local_ray_on_loopback(environ: MutableMapping[str, str] = os.environ) -> None:
    """Make a local Ray (no ``RAY_ADDRESS``) listen on loopback only; call before Ray is imported. A cluster
    address leaves Ray as it is: its nodes must reach each other.
    """
    if not environ.get(RAY_ADDRESS):
        environ.setdefault(RAY_LOOPBACK, "0")
