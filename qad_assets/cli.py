"""``qad``: run the pipeline on the demo release or a DESI archive, and open the Dagster UI.

Every command works on one storage root (``--storage``, default ``$QAD_STORAGE`` or ``./storage``):
products under it, and the Dagster instance in ``<storage>/dagster_home`` so that runs made here
show in ``qad ui`` afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from qad_assets.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTANCE_TEMPLATE = REPO_ROOT / "dagster.yaml"
SETTINGS_FILE = "qad-settings.json"
#: The pipeline as runs, in order: (job, partitioned by spectra partitions rather than by release).
PIPELINE = (("qad_spectra", True), ("qad_train", False), ("qad_score", True), ("qad_report", False))


@dataclass(frozen=True)
class RunSettings:
    """What the code location needs to know about this storage root, passed as environment."""

    storage: Path
    archive: str
    specprod: str | None = None
    qso_catalog: str | None = None

    def environment(self) -> dict[str, str]:
        env = {
            "QAD_STORAGE": str(self.storage),
            "QAD_ARCHIVE": self.archive,
            "DAGSTER_HOME": str(self.storage / "dagster_home"),
        }
        env["QAD_SPECPROD"] = self.specprod or ""
        env["QAD_QSO_CATALOG"] = self.qso_catalog or ""
        return env

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


def storage_root(value: str | None) -> Path:
    root = Path(value or os.environ.get("QAD_STORAGE") or "storage").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def prepare_instance_home(storage: Path) -> Path:
    """``<storage>/dagster_home`` holding the project's ``dagster.yaml``."""
    home = storage / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INSTANCE_TEMPLATE, home / "dagster.yaml")
    return home


def find_partitions(archive: str, release: str | None, specprod: str | None) -> tuple[str, str, list[str]]:
    """(release, specprod, partition keys) of the healpix coadds found in ``archive``."""
    from qad_assets.partitions import archive_partition_keys
    from qad_assets.science.io.archive import list_specprods

    specprods = list_specprods(archive)
    if specprod is None:
        if not specprods:
            raise UserError(f"{archive}: no spectro/redux/<specprod>/ folder (is this a DESI archive root?)")
        if len(specprods) > 1:
            raise UserError(f"{archive}: several productions {specprods}; choose one with --specprod")
        specprod = specprods[0]
    release = release or specprod
    if not release.isalnum() or release != release.lower():
        raise UserError(f"release name {release!r} must be lower-case letters and digits (use --release)")
    keys = archive_partition_keys(archive, specprod, release)
    if not keys:
        raise UserError(f"{archive}/spectro/redux/{specprod}/healpix: no coadd-<survey>-<program>-<pix>.fits files")
    return release, specprod, keys


QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def materialize(settings: RunSettings, release: str, keys: list[str]) -> tuple[list[dict], str | None]:
    """Materialize the release through the Dagster instance: the spectra partitions in as few runs as
    their order allows, then the per-release products. Stops at the first failed run and returns the
    summary rows so far with what failed (None when every run succeeded).
    """
    os.environ.update(settings.environment())
    prepare_instance_home(settings.storage)
    import dagster as dg

    from qad_assets.definitions import defs
    from qad_assets.partitions import contiguous_ranges, range_tags, release_partitions, spectra_partitions

    instance = dg.DagsterInstance.get()
    add_partitions(instance, spectra_partitions.name, keys)
    add_partitions(instance, release_partitions.name, [release])
    order = instance.get_dynamic_partitions(spectra_partitions.name)
    ranges = [{"tags": range_tags(first, last)} for first, last in contiguous_ranges(order, keys)]
    runs = [
        (job, selection)
        for job, per_spectra in PIPELINE
        for selection in (ranges if per_spectra else [{"partition_key": release}])
    ]
    rows: list[dict] = []
    checks: list[dict] = []
    for job_name, selection in runs:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, run_config=QUIET, raise_on_error=False, **selection
        )
        rows.extend(stage_rows(result))
        checks.extend(check_rows(result))
        if not result.success:
            print_checks(checks)
            return rows, failure_message(result)
    print_checks(checks)
    return rows, None


def add_partitions(instance, name: str, keys: list[str]) -> None:
    known = set(instance.get_dynamic_partitions(name))
    instance.add_dynamic_partitions(name, [k for k in keys if k not in known])


def check_rows(result) -> list[dict]:
    """Every asset check evaluated in a run: asset, check, passed, severity, description."""
    return [
        {
            "asset": evaluation.asset_key.to_user_string(),
            "check": evaluation.check_name,
            "passed": evaluation.passed,
            "severity": evaluation.severity.value,
            "description": evaluation.description or "",
        }
        for evaluation in result.get_asset_check_evaluations()
    ]


def print_checks(checks: list[dict]) -> None:
    """The asset checks as a table; a failed ERROR check blocks what is downstream of its asset."""
    if not checks:
        return
    print(f"\n{'asset':<22}{'check':<24}{'result':<10}description", file=sys.stderr)
    for c in checks:
        result = "pass" if c["passed"] else ("FAIL" if c["severity"] == "ERROR" else "warn")
        print(f"{c['asset']:<22}{c['check']:<24}{result:<10}{c['description']}", file=sys.stderr)


def stage_rows(result) -> list[dict]:
    """One summary row per asset of a run, from its materialization metadata.

    A run over a partition range records one event per partition, all with the run's totals.
    """
    rows: dict[str, dict] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        stage = materialization.asset_key.to_user_string()
        rows[stage] = {"stage": stage, **{k: v.value for k, v in materialization.metadata.items()}}
    return list(rows.values())


def failure_message(result) -> str:
    messages = [
        f"{event.step_key}: {event.step_failure_data.error.message.strip()}"
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data.error is not None
    ]
    return "pipeline run failed\n" + "\n".join(messages or [f"run {result.run_id} did not succeed"])


COUNTS = ("partitions", "rows_in", "rows_kept", "rows_filtered", "rows_quarantined", "seconds")
#: What the summary shows for a per-release product, which has no row counts.
RELEASE_FIELDS = (
    "model_version",
    "val_reduced_chi2",
    "epochs_run",
    "overall_auroc",
    "pca_auroc",
    "snr_spearman_vae",
    "promoted_to_champion",
    "report",
)


def print_summary(rows: list[dict], seconds: float, storage: Path) -> None:
    """Rows in/kept/filtered/quarantined per stage (or the key figures of a per-release product), time,
    and where the outputs are.
    """
    totals: dict[str, dict] = {}
    for row in rows:
        total = totals.setdefault(row["stage"], dict.fromkeys(COUNTS, 0) | {"detail": ""})
        for name in COUNTS:
            total[name] += row.get(name, 0)
        total["detail"] = ", ".join(
            f"{k}={row[k]:.3g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in RELEASE_FIELDS if k in row
        )
    header = f"{'stage':<22}{'partitions':>11}{'in':>9}{'kept':>9}{'filtered':>10}{'quarantined':>13}{'cpu s':>9}"
    print("\n" + header + "\n" + "-" * len(header))
    for stage, t in totals.items():
        if t["detail"]:
            print(f"{stage:<22}{t['detail']}")
            continue
        print(
            f"{stage:<22}{t['partitions']:>11}{t['rows_in']:>9}{t['rows_kept']:>9}{t['rows_filtered']:>10}"
            f"{t['rows_quarantined']:>13}{t['seconds']:>9.1f}"
        )
    print(f"\nwall time {seconds:.1f} s")
    for stage in totals:
        print(f"{stage:<22}{storage / stage}")
    print(f"{'dagster instance':<22}{storage / 'dagster_home'}   (open with: qad ui --storage {storage})")


def run_pipeline(settings: RunSettings, release: str | None) -> None:
    start = time.perf_counter()
    release, specprod, keys = find_partitions(settings.archive, release, settings.specprod)
    settings = RunSettings(settings.storage, settings.archive, specprod, settings.qso_catalog)
    settings.save()
    print(f"release {release}: {len(keys)} partitions from {settings.archive}", file=sys.stderr)
    rows, failure = materialize(settings, release, keys)
    print_summary(rows, time.perf_counter() - start, settings.storage)
    if failure:
        raise UserError(failure)


def cmd_demo(args: argparse.Namespace) -> None:
    from qad_assets.demo.release import write_demo_release

    storage = storage_root(args.storage)
    archive = storage / "demo_archive"
    print(f"writing the demo release to {archive}", file=sys.stderr)
    demo = write_demo_release(
        archive, release=args.release, n_pixels=args.n_pixels, targets_per_pixel=args.targets_per_pixel, seed=args.seed
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
    run_pipeline(RunSettings(storage, archive, args.specprod, catalog), args.release)


def cmd_ui(args: argparse.Namespace) -> None:
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
            ray_address=os.environ.get("RAY_ADDRESS") or None,
            blocking=True,
        )
    except ValueError as err:  # settings out of range, or options that do not go together
        raise UserError(str(err)) from err
    except KeyboardInterrupt:
        stop()  # on a cluster the application would otherwise outlive this command
        print("scoring service stopped", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qad", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def with_storage(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--storage",
            metavar="DIR",
            help="storage root for products and the Dagster instance (default: $QAD_STORAGE or ./storage)",
        )
        sub.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
        return sub

    demo = with_storage(commands.add_parser("demo", help="write the embedded demo release and run the pipeline on it"))
    demo.add_argument("--release", default="demo", help="release name of the demo (default: demo)")
    demo.add_argument("--n-pixels", type=int, default=8, help="HEALPix coadd files to write (default: 8)")
    demo.add_argument("--targets-per-pixel", type=int, default=400, help="targets per coadd file (default: 400)")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the demo release (default: 0)")
    demo.set_defaults(func=cmd_demo)

    run = with_storage(commands.add_parser("run", help="run the pipeline on a DESI archive tree"))
    run.add_argument(
        "--archive",
        required=True,
        metavar="DIR",
        help="DESI root holding spectro/redux/<specprod>/healpix/... (a path or fsspec URL)",
    )
    run.add_argument("--release", help="release name for partitions (default: the specprod folder name)")
    run.add_argument("--specprod", help="production folder to read when the archive holds several")
    run.add_argument(
        "--qso-catalog",
        metavar="FILE",
        help="DESI QSO catalogue (QSO_cat_*.fits): select its quasars and use its redshifts",
    )
    run.set_defaults(func=cmd_run)

    ui = with_storage(commands.add_parser("ui", help="start the Dagster webserver and daemon on this storage root"))
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    ui.add_argument("--port", type=int, default=3000, help="port (default: 3000)")
    ui.set_defaults(func=cmd_ui)

    serve = with_storage(
        commands.add_parser("serve", help="score spectra over HTTP with the registry's champion (Ray Serve)")
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--replicas", type=int, default=1, help="scoring replicas (default: 1)")
    serve.add_argument(
        "--gpus-per-replica",
        type=float,
        metavar="N",
        help="GPUs each replica asks Ray for (default: 1 if this machine's device is CUDA, else 0)",
    )
    serve.add_argument(
        "--shadow-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of requests also scored by the challenger, both logged (default: 0)",
    )
    serve.add_argument(
        "--poll-seconds",
        type=float,
        default=30.0,
        metavar="S",
        help="how often to check the registry aliases; 0: only on POST /reload (default: 30)",
    )
    serve.add_argument("--max-json-mb", type=float, default=64.0, help="largest JSON body in MiB (default: 64)")
    serve.add_argument("--max-upload-mb", type=float, default=512.0, help="largest coadd upload in MiB (default: 512)")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    warnings.filterwarnings("ignore", message=".*input example was not provided.*")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    progress = logging.getLogger("qad.progress")
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    try:
        args.func(args)
    except UserError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # any other failure: one line unless --debug
        if args.debug:
            raise
        print(f"error: {type(err).__name__}: {err} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
