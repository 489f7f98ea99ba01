"""``qad``: run the pipeline on the demo release or a DESI archive, and open the Dagster UI.

Every command works on one storage root (``--storage``, default ``$QAD_STORAGE`` or ``./storage``):
products under it, and the Dagster instance in ``<storage>/dagster_home`` so that runs made here
show in ``qad ui`` afterwards. Modules: ``parser`` (options), ``commands`` (one function each),
``pipeline`` (settings, instance, runs through Dagster), ``render`` (what is printed about the runs).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from qad_assets.cli.parser import build_parser
from qad_assets.cli.pipeline import RunSettings, prepare_instance_home
from qad_assets.config import keep_local_ray_on_loopback
from qad_assets.errors import QadError

__all__ = ["RunSettings", "build_parser", "main", "prepare_instance_home"]


def main(argv: list[str] | None = None) -> int:
    """Run one command: 0 when done, 2 for a problem the user can act on (``QadError``), 1 for a bug."""
    args = build_parser().parse_args(argv)
    keep_local_ray_on_loopback()  # before any command imports Ray
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
    except QadError as err:
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
