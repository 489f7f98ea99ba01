"""The ``qad`` commands: ``demo``, ``run``, ``ui``, ``serve`` and ``explore``, each on one storage root."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from qad_assets.cli.guard import storage_lock
from qad_assets.cli.pipeline import RunSettings, find_partitions, materialize, prepare_instance_home, storage_root
from qad_assets.cli.render import (
    check_rows,
    failure_message,
    print_checks,
    print_skipped,
    print_summary,
    stage_rows,
)
from qad_assets.config import Settings
from qad_assets.errors import UserError


def run_pipeline(settings: RunSettings, release: str | None) -> None:
    """Every run of the release, then the checks and the summary; a failed run is the user's to act on."""
    start = time.perf_counter()
    found = find_partitions(settings.archive, release, settings.specprod)
    release, keys = found.release, found.keys
    settings = RunSettings(settings.storage, settings.archive, found.specprod, settings.qso_catalog)
    settings.save()
    print(f"release {release}: {len(keys)} partitions from {settings.archive}", file=sys.stderr)
    print_skipped(found.skipped, f"{settings.archive}/spectro/redux/{found.specprod}/healpix")
    results = materialize(settings, release, keys)
    print_checks([check for result in results for check in check_rows(result)])
    print_summary(
        [row for result in results for row in stage_rows(result)], time.perf_counter() - start, settings.storage
    )
    if results and not results[-1].success:
        raise UserError(failure_message(results[-1]))


def cmd_demo(args: argparse.Namespace) -> None:
    from qad_assets.demo.release import write_demo_release

    storage = storage_root(args.storage)
    archive = storage / "demo_archive"
    with storage_lock(storage):
        print(f"writing the demo release to {archive}", file=sys.stderr)
        demo = write_demo_release(
            archive,
            release=args.release,
            n_pixels=args.n_pixels,
            targets_per_pixel=args.targets_per_pixel,
            seed=args.seed,
        )
        print(f"truth table: {demo.truth_path}", file=sys.stderr)
        run_pipeline(RunSettings(storage, str(archive)), args.release)


def cmd_run(args: argparse.Namespace) -> None:
    storage = storage_root(args.storage)
    if "://" not in args.archive and not Path(args.archive).is_dir():
        raise UserError(f"--archive {args.archive}: no such directory")
    if args.qso_catalog and "://" not in args.qso_catalog and not Path(args.qso_catalog).is_file():
        raise UserError(f"--qso-catalog {args.qso_catalog}: no such file")
    archive = args.archive if "://" in args.archive else str(Path(args.archive).resolve())
    catalog = args.qso_catalog and (
        args.qso_catalog if "://" in args.qso_catalog else str(Path(args.qso_catalog).resolve())
    )
    with storage_lock(storage):
        run_pipeline(RunSettings(storage, archive, args.specprod, catalog), args.release)


def cmd_ui(args: argparse.Namespace) -> None:
    """``dagster dev`` in place of this process, its environment set to the storage root's settings."""
    storage = storage_root(args.storage)
    settings = RunSettings.load(storage) or RunSettings(storage, str(storage / "demo_archive"))
    prepare_instance_home(storage)
    env = {**os.environ, **settings.environment()}
    command = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-m",
        "qad_assets.definitions",
        "-h",
        args.host,
        "-p",
        str(args.port),
    ]
    print(f"Dagster UI on http://{args.host}:{args.port} (instance {storage / 'dagster_home'})", file=sys.stderr)
    os.execve(sys.executable, command, env)


def cmd_serve(args: argparse.Namespace) -> None:
    from qad_assets.service.app import start, stop
    from qad_assets.service.settings import ServiceSettings

    try:
        settings = ServiceSettings.from_env(
            str(storage_root(args.storage)),
            shadow_fraction=args.shadow_fraction,
            poll_seconds=args.poll_seconds,
            max_json_bytes=int(args.max_json_mb * 2**20),
            max_upload_bytes=int(args.max_upload_mb * 2**20),
        )
        print(f"scoring service on http://{args.host}:{args.port} (API: /docs); Ctrl-C stops it", file=sys.stderr)
        start(
            settings,
            host=args.host,
            port=args.port,
            replicas=args.replicas,
            gpus_per_replica=args.gpus_per_replica,
            ray_address=Settings.from_env().ray_address,
            blocking=True,
        )
    except ValidationError as err:  # settings out of range
        raise UserError(str(err)) from err
    except KeyboardInterrupt:
        stop()  # on a cluster the application would otherwise outlive this command
        print("scoring service stopped", file=sys.stderr)


def cmd_explore(args: argparse.Namespace) -> None:
    """The candidate explorer over the storage root (uvicorn says where it listens); labels go to
    ``$QAD_LABELS_DB``, else to SQLite beside the products.
    """
    from qad_assets.explorer.app import serve

    storage = storage_root(args.storage, create=False)
    serve(storage, host=args.host, port=args.port, release=args.release, labels_url=Settings.from_env().labels_db)
