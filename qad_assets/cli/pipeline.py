"""The pipeline as ``qad`` runs it: a storage root's settings and Dagster instance, the partitions found in
an archive, and the runs that materialize them.

Nothing here touches the process environment: the resources are built from a run's settings and the
instance is opened from ``<storage>/dagster_home``, so runs made here show in ``qad ui`` afterwards.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from qad_assets.config import Settings, check_name
from qad_assets.errors import UserError

if TYPE_CHECKING:  # Dagster is imported when a run starts, not for ``qad --help``
    import dagster as dg

progress = logging.getLogger("qad.progress")

SETTINGS_FILE = "qad-settings.json"
#: The Dagster instance of a storage root, shipped as package data (the top-level dagster.yaml links here).
INSTANCE_TEMPLATE = resources.files("qad_assets.cli") / "dagster.yaml"
#: The pipeline as runs, in order: (job, partitioned by spectra partitions rather than by release).
PIPELINE = (("qad_spectra", True), ("qad_train", False), ("qad_score", True), ("qad_report", False))
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass(frozen=True)
class RunSettings:
    """What a storage root runs on, saved beside it so that ``qad ui`` opens what ``qad run`` used; the
    rest of the configuration (device, MLflow, Ray) comes from the environment.
    """

    storage: Path
    archive: str
    specprod: str | None = None
    qso_catalog: str | None = None

    def settings(self) -> Settings:
        """The whole configuration: the environment's, with this storage root, archive and production."""
        return replace(
            Settings.from_env(),
            storage=str(self.storage),
            archive=self.archive,
            specprod=self.specprod,
            qso_catalog=self.qso_catalog,
        )

    def environment(self) -> dict[str, str]:
        """The variables that give a child process (``dagster dev``) this code location and instance."""
        return self.settings().environment()

    def save(self) -> None:
        (self.storage / SETTINGS_FILE).write_text(
            json.dumps({"archive": self.archive, "specprod": self.specprod, "qso_catalog": self.qso_catalog}, indent=2)
        )

    @classmethod
    def load(cls, storage: Path) -> RunSettings | None:
        path = storage / SETTINGS_FILE
        if not path.exists():
            return None
        return cls(storage=storage, **json.loads(path.read_text()))


def storage_root(value: str | None, *, create: bool = True) -> Path:
    """``--storage``, else the configured storage root, else ``./storage``; created if missing unless
    ``create`` is false (a command that only reads products must not leave an empty root behind a typo).
    """
    root = Path(value or Settings.from_env().storage or "storage").expanduser().resolve()
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return root


def prepare_instance_home(storage: Path) -> Path:
    """``<storage>/dagster_home`` holding the project's ``dagster.yaml``."""
    home = storage / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_bytes(INSTANCE_TEMPLATE.read_bytes())
    return home


@dataclass(frozen=True)
class FoundPartitions:
    """What ``qad run`` found in an archive: the release, its production, its partition keys, and the
    entries named like coadds that it skipped (path under the production's ``healpix`` folder, why)."""

    release: str
    specprod: str
    keys: list[str]
    skipped: list[tuple[str, str]]


def find_partitions(archive: str, release: str | None, specprod: str | None) -> FoundPartitions:
    """The release, production, partition keys and skipped entries of the healpix coadds in ``archive``.

    Release and production names are checked (``config.check_name``) before either becomes a key or a path.
    """
    from qad_assets.partitions import SpectraPartition
    from qad_assets.science.io.archive import list_specprods, scan_healpix_coadds

    if specprod is not None:
        check_name("specprod", specprod)
    if release is not None:
        check_name("release", release)
    specprods = list_specprods(archive)
    if specprod is None:
        if not specprods:
            raise UserError(f"{archive}: no spectro/redux/<specprod>/ folder (is this a DESI archive root?)")
        if len(specprods) > 1:
            raise UserError(f"{archive}: several productions {specprods}; choose one with --specprod")
        specprod = check_name("specprod", specprods[0])
    release = check_name("release", release or specprod)
    scan = scan_healpix_coadds(archive, specprod)
    keys = [SpectraPartition(release, c.survey, c.program, c.healpix).key for c in scan.coadds]
    if not keys:
        raise UserError(f"{archive}/spectro/redux/{specprod}/healpix: no coadd-<survey>-<program>-<pix>.fits files")
    return FoundPartitions(release, specprod, keys, scan.skipped)


def materialize(settings: RunSettings, release: str, keys: list[str]) -> list[dg.ExecuteInProcessResult]:
    """Materialize the release through the storage root's Dagster instance: the spectra partitions in as few
    runs as their order allows, then the per-release products. Stops at the first failed run; returns the
    results of the runs made.

    The caller holds the storage root's lock (``guard.storage_lock``): runs an earlier, killed ``qad`` left
    in progress are marked failed and their pool slots freed first, and a run that waits for a pool slot
    says which run holds it.
    """
    import dagster as dg

    from qad_assets.cli.guard import PoolWaitReporter, recover_interrupted_runs, run_tags
    from qad_assets.definitions import build_definitions
    from qad_assets.partitions import contiguous_ranges, range_tags, release_partitions, spectra_partitions
    from resources import build_resources

    defs = build_definitions(
        build_resources(settings.settings(), storage=str(settings.storage), archive=settings.archive)
    )
    with dg.DagsterInstance.from_config(str(prepare_instance_home(settings.storage))) as instance:
        for line in recover_interrupted_runs(instance):
            progress.warning(line)
        add_partitions(instance, spectra_partitions.name, keys)
        add_partitions(instance, release_partitions.name, [release])
        order = instance.get_dynamic_partitions(spectra_partitions.name)
        ranges = [{"tags": range_tags(first, last)} for first, last in contiguous_ranges(order, keys)]
        runs = [
            (job, selection)
            for job, per_spectra in PIPELINE
            for selection in (ranges if per_spectra else [{"partition_key": release}])
        ]
        results = []
        for job_name, selection in runs:
            run_id = str(uuid.uuid4())  # known before the run starts, for the pool-wait report
            tags = {**selection.get("tags", {}), **run_tags()}
            with PoolWaitReporter(instance, run_id):
                result = defs.resolve_job_def(job_name).execute_in_process(
                    instance=instance,
                    run_config=QUIET,
                    raise_on_error=False,
                    run_id=run_id,
                    tags=tags,
                    partition_key=selection.get("partition_key"),
                )
            results.append(result)
            if not result.success:
                break
    return results


def add_partitions(instance: dg.DagsterInstance, name: str, keys: list[str]) -> None:
    known = set(instance.get_dynamic_partitions(name))
    instance.add_dynamic_partitions(name, [k for k in keys if k not in known])
