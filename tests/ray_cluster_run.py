"""The driver of ``tests/test_ray_multinode.py``: a demo release through the spectra stages, training and
scoring on the Ray cluster that ``RAY_ADDRESS`` names, as ``qad run`` drives it (each Dagster run connects
through the ``ray`` resource), in a process of its own so that the test's own Ray state plays no part.

``python tests/ray_cluster_run.py ARCHIVE STORAGE --nodes N --out FILE [--train] [--ray-train]`` waits
until the cluster has N live nodes, then runs ``qad_spectra``; with ``--train`` ``qad_train`` (in this
process: bit-reproducible, so a later run on the same storage scores with the same model); with
``--ray-train`` the same training in this process and on Ray Train with one worker per node; then
``qad_score``, printing ``scoring`` on stdout just before it starts (the test kills a node then). FILE gets
the cluster's nodes, the runs' ids and the Ray Train figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import dagster as dg
import ray
import torch

from qad_assets.assets.vae_model import VaeTrainingConfig, train
from qad_assets.cli.pipeline import RunSettings, add_partitions, find_partitions, prepare_instance_home
from qad_assets.definitions import build_definitions
from qad_assets.partitions import range_tags
from qad_assets.science.io.parquet_store import row_count
from qad_assets.science.model.training import train_vae
from qad_assets.science.spectra.rest_frame import REST_GRID
from resources import build_resources

#: A model small enough to train in seconds, for long enough that two trainings can be compared (the held-out
#: χ² of the test's 155 spectra: about 1.6 after 20 epochs with the model-error floor; 3.1 without it).
TRAINING = {"latent_dim": 4, "hidden": [64], "max_epochs": 20, "patience": 20, "batch_size": 32, "learning_rate": 3e-3}
NODE_WAIT_S = 120


def main(args: argparse.Namespace) -> None:
    report: dict[str, object] = {"nodes": wait_for_nodes(args.nodes), "run_ids": []}
    settings = RunSettings(storage=args.storage, archive=args.archive)
    defs = build_definitions(build_resources(settings.settings(), storage=str(args.storage), archive=args.archive))
    found = find_partitions(args.archive, None, None)
    tags = range_tags(found.keys[0], found.keys[-1])
    with dg.DagsterInstance.from_config(str(prepare_instance_home(args.storage))) as instance:
        add_partitions(instance, "spectra_partitions", found.keys)
        add_partitions(instance, "releases", [found.release])

        def execute(job: str, **selection: object) -> None:
            result = defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False, **selection)
            report["run_ids"].append(result.run_id)
            if not result.success:
                raise SystemExit(f"{job} failed: {[e.message for e in result.all_events if e.is_failure]}")

        execute("qad_spectra", tags=tags)
        if args.train:
            execute("qad_train", partition_key=found.release, run_config={"ops": {"vae_model": {"config": TRAINING}}})
        if args.ray_train:
            paths = sorted((args.storage / "normalized_spectra" / found.release).glob("*.parquet"))
            report["ray_train"] = compare_ray_train(paths, args.storage / "ray_train")
        print("scoring", flush=True)
        execute("qad_score", tags=tags)
    args.out.write_text(json.dumps(report, indent=2))


def wait_for_nodes(expected: int) -> dict[str, str]:
    """Node id → node address of the cluster once it has ``expected`` live nodes."""
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    try:
        deadline = time.monotonic() + NODE_WAIT_S
        while True:
            alive = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
            if len(alive) == expected:
                return alive
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(alive)} live Ray nodes after {NODE_WAIT_S} s, expected {expected}")
            time.sleep(0.2)
    finally:
        ray.shutdown()


def compare_ray_train(paths: list[Path], ray_dir: Path) -> dict[str, object]:
    """The training config in this process and on Ray Train with one worker per node (two nodes of one CPU
    each, two workers of one CPU): best held-out pooled reduced χ² and epochs of each."""
    config = VaeTrainingConfig(**TRAINING, ray_workers=2)
    options = config.train_options().for_release(sum(row_count(p) for p in paths))
    single = train_vae(paths, REST_GRID, config.vae_config(), options)
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    try:
        cpus = {n["NodeManagerAddress"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}
        start = time.perf_counter()
        distributed = train(config, options, paths, torch.device("cpu"), ray_dir)
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return {
        "node_cpus": cpus,
        "single_chi2": single.best_val_reduced_chi2,
        "two_node_chi2": distributed.best_val_reduced_chi2,
        "single_epochs": single.epochs_run,
        "two_node_epochs": distributed.epochs_run,
        "two_node_seconds": seconds,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("archive")
    parser.add_argument("storage", type=Path)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--ray-train", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
