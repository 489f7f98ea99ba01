"""The ``qad`` command line: its commands, their options and their help."""

from __future__ import annotations

import argparse

from qad_assets.cli.commands import cmd_demo, cmd_explore, cmd_run, cmd_serve, cmd_ui

DESCRIPTION = "``qad``: run the pipeline on the demo release or a DESI archive, and open the Dagster UI."


def port_number(value: str) -> int:
    """A TCP port: outside 1-65535 the server would bind another port than the one it announces."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1 to 65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qad", description=DESCRIPTION)
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
    ui.add_argument("--port", type=port_number, default=3000, help="port (default: 3000)")
    ui.set_defaults(func=cmd_ui)

    serve = with_storage(
        commands.add_parser("serve", help="score spectra over HTTP with the registry's champion (Ray Serve)")
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=port_number, default=8000, help="port (default: 8000)")
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

    explore = with_storage(
        commands.add_parser("explore", help="inspect, label and export a release's candidates in the browser")
    )
    explore.add_argument("--release", help="release the page opens (default: the first scored release)")
    explore.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    explore.add_argument("--port", type=port_number, default=8050, help="port (default: 8050)")
    explore.set_defaults(func=cmd_explore)
    return parser
