"""A real two-node Ray cluster on this machine: a head and a worker node, each its own ``ray start``
process tree on its own loopback address, with token authentication, and the pipeline driven through
``RAY_ADDRESS`` (the head's GCS address: the driver runs on the head's machine).

A demo release runs first on the head alone, then on both nodes on the same storage, with the same
model (``tests/ray_cluster_run.py`` is the driver). The two-node run spreads the partitions of every
spectra stage over both nodes, trains on Ray Train with one worker per node, and loses its worker node
(SIGKILL of its whole process tree) while that node runs a scoring task: the run still completes, each
partition is materialized and written once, and every row equals the single-node run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from qad_assets.demo.release import write_demo_release
from qad_assets.science.io.parquet_store import read_table

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).parent / "ray"
DRIVER = Path(__file__).parent / "ray_cluster_run.py"
#: Loopback addresses that Ray does not rewrite (it replaces 127.0.0.1 by the host's address).
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
#: Each node one CPU, so a stage's partitions spread over both and Ray Train puts one worker on each.
NODE_ARGS = [
    "--block",
    "--num-cpus=1",
    "--num-gpus=0",
    "--object-store-memory=100000000",
    "--disable-usage-stats",
    "--dashboard-agent-listen-port=0",
    "--include-log-monitor=false",
]
PIXELS = 6
SPECTRA_ASSETS = ("raw_spectra", "normalized_spectra", "spectral_features")
PRODUCTS = (*SPECTRA_ASSETS, "raw_spectra/ledger", "anomaly_scores")
#: Two-node Ray Train against one process, same data and options: relative gap of the best held-out pooled
#: reduced χ². On these 155 spectra (30 held out) the seed alone moves the figure far more than a few per
#: cent: one process 1.52-1.69 for seeds 0-3, two local Ray Train workers 1.66-1.92 for seeds 0-2 (the
#: same seed 0: 1.58 and 1.92, 22 %); two nodes gave 1.85 against 1.67 (10.5 %). A tolerance under the
#: seed spread would test the seed, not the cluster.
RAY_TRAIN_TOLERANCE = 0.25
START_S, RUN_S = 120, 600


@dataclass
class RayNode:
    """One ``ray start --block`` in a session of its own: the session holds the whole node (GCS, raylet,
    agents, workers), so killing the session's processes is losing the machine, and touches nobody else's.
    """

    name: str
    process: subprocess.Popen
    log: Path

    def pids(self) -> list[int]:
        return [pid for pid, sid in _sessions().items() if sid == self.process.pid]

    def task_running(self, function: str) -> bool:
        """Whether a worker of this node runs ``function`` now (Ray titles it ``ray::<function>``)."""
        return any(_cmdline(pid).startswith(f"ray::{function}") for pid in self.pids())

    def kill(self) -> None:
        """SIGKILL every process of the node until none is left (a dying raylet may still fork a worker)."""
        deadline = time.monotonic() + 30
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.poll()  # reaps the `ray start` process once it died
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray {self.name} node: processes {pids} survive SIGKILL")
            time.sleep(0.1)
        self.process.wait(timeout=30)

    def log_tail(self) -> str:
        return f"--- {self.name} ---\n{self.log.read_text(errors='replace')[-2000:]}"


@dataclass
class RayCluster:
    """Separate Ray node processes under ``root``, with a token of their own."""

    root: Path
    nodes: list[RayNode] = field(default_factory=list)
    address: str = ""

    def __post_init__(self) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "QAD_", "MLFLOW_"))}
        self.env = clean | {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": os.urandom(16).hex(),
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",  # else each Ray Train report waits ~1 s for a poll
        }

    def start_head(self) -> RayNode:
        # Free ports for what a head always starts and this test does not use (Ray Client server, the
        # dashboard's minimal head): their defaults may be taken by another Ray on this machine.
        unused = [f"--ray-client-server-port={_free_port()}", f"--dashboard-port={_free_port()}"]
        head = self._start("head", HEAD_IP, ["--head", "--port=0", "--include-dashboard=false", *unused])
        ready = self.root / "head" / "ray_current_cluster"  # written once the head is up
        deadline = time.monotonic() + START_S
        while not ready.exists():
            if head.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start\n{head.log_tail()}")
            time.sleep(0.2)
        self.address = ready.read_text().strip()
        return head

    def add_worker(self) -> RayNode:
        return self._start("worker", WORKER_IP, [f"--address={self.address}"])

    def _start(self, name: str, ip: str, args: list[str]) -> RayNode:
        log = self.root / f"{name}.log"
        command = [str(RAY), "start", f"--node-ip-address={ip}", f"--temp-dir={self.root / name}", *NODE_ARGS, *args]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        node = RayNode(name, process, log)
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class DrivenRun:
    report: dict
    seconds: float
    killed_at: float | None = None


@dataclass
class Runs:
    """Both runs on one storage root: the single-node run's products moved to ``single`` before the
    two-node run wrote its own."""

    storage: Path
    single: Path
    one_node: DrivenRun
    two_nodes: DrivenRun
    keys: list[str]

    def node_id(self, address: str) -> str:
        return next(node for node, where in self.two_nodes.report["nodes"].items() if where == address)


def drive(cluster: RayCluster, archive: Path, storage: Path, *args: str, kill: RayNode | None = None) -> DrivenRun:
    """Run the driver against the cluster; with ``kill``, SIGKILL that node as soon as it runs a scoring
    task (the driver says ``scoring`` when that run starts)."""
    out, errors = storage.with_suffix(f".{len(cluster.nodes)}.json"), storage.with_suffix(".stderr")
    command = [sys.executable, str(DRIVER), str(archive), str(storage), f"--nodes={len(cluster.nodes)}", *args]
    start, killed_at = time.perf_counter(), None
    with errors.open("wb") as err:
        driver = subprocess.Popen(
            [*command, f"--out={out}"],
            env=cluster.env | {"RAY_ADDRESS": cluster.address},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        for line in driver.stdout:
            if line.strip() == "scoring" and kill is not None:
                killed_at = kill_when_running(kill, "_call", driver) - start
        rc = driver.wait(timeout=RUN_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    logs = "\n".join(node.log_tail() for node in cluster.nodes)
    assert rc == 0, f"driver failed:\n{errors.read_text(errors='replace')[-4000:]}\n{logs}"
    return DrivenRun(json.loads(out.read_text()), time.perf_counter() - start, killed_at)


def kill_when_running(node: RayNode, function: str, driver: subprocess.Popen) -> float:
    deadline = time.monotonic() + RUN_S
    while not node.task_running(function):
        if driver.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{node.name} never ran a {function} task while scoring")
        time.sleep(0.02)
    node.kill()
    return time.perf_counter()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    tmp = tmp_path_factory.mktemp("multinode")
    archive, storage, single = tmp / "archive", tmp / "storage", tmp / "single"
    write_demo_release(archive, n_pixels=PIXELS, targets_per_pixel=40, seed=7)
    # Short: Ray's socket paths under the temp dir must fit in 107 bytes.
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="qad-ray-", dir="/tmp")))
    try:
        cluster.start_head()
        one_node = drive(cluster, archive, storage, "--train")
        for asset in (*SPECTRA_ASSETS, "anomaly_scores"):
            (single / asset).parent.mkdir(parents=True, exist_ok=True)
            (storage / asset).rename(single / asset)
        worker = cluster.add_worker()
        two_nodes = drive(cluster, archive, storage, "--ray-train", kill=worker)
    finally:
        cluster.close()
    keys = sorted(p.stem for p in (single / "raw_spectra" / "demo").glob("*.parquet"))
    yield Runs(storage, single, one_node, two_nodes, keys)


def materializations(runs: Runs, asset: str, run: DrivenRun) -> list[dg.AssetMaterialization]:
    """``asset``'s materializations by ``run``'s Dagster runs."""
    with dg.DagsterInstance.from_config(str(runs.storage / "dagster_home")) as instance:
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=10_000).records
    return [r.asset_materialization for r in records if r.run_id in run.report["run_ids"]]


def test_every_spectra_stage_ran_partitions_on_both_nodes(runs: Runs) -> None:
    head, worker = runs.node_id(HEAD_IP), runs.node_id(WORKER_IP)
    assert len(runs.keys) == PIXELS
    for asset in SPECTRA_ASSETS:
        per_node = materializations(runs, asset, runs.two_nodes)[0].metadata["partitions_per_node"].value
        print(f"{asset}: partitions per node {per_node} (head {head[:8]}, worker {worker[:8]})")
        assert set(per_node) == {head, worker}
        assert sum(per_node.values()) == PIXELS
    alone = materializations(runs, "raw_spectra", runs.one_node)[0].metadata["partitions_per_node"].value
    assert alone == {head: PIXELS}


def test_losing_a_node_mid_run_loses_no_partition(runs: Runs) -> None:
    print(f"two-node run {runs.two_nodes.seconds:.0f} s; worker killed at {runs.two_nodes.killed_at:.0f} s")
    assert runs.two_nodes.killed_at is not None
    for asset in (*SPECTRA_ASSETS, "anomaly_scores"):
        partitions = Counter(m.partition for m in materializations(runs, asset, runs.two_nodes))
        assert partitions == dict.fromkeys(runs.keys, 1), asset
    with dg.DagsterInstance.from_config(str(runs.storage / "dagster_home")) as instance:
        restarts = [
            record
            for run_id in runs.two_nodes.report["run_ids"]
            for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_RESTARTED)
        ]
    assert restarts == []  # Ray re-ran the lost task; Dagster's step retry was not needed


def test_rows_equal_the_single_node_run(runs: Runs) -> None:
    compared = 0
    for product in PRODUCTS:
        names = sorted(p.name for p in product_files(runs.single, product))
        assert names == [f"{key}.parquet" for key in runs.keys]
        assert sorted(p.name for p in product_files(runs.storage, product)) == names
        for name in names:
            expected = read_table(product_dir(runs.single, product) / name)
            found = read_table(product_dir(runs.storage, product) / name)
            assert found.equals(expected), f"{product}/{name}"
            compared += found.num_rows
    print(f"{compared} rows of {len(PRODUCTS)} products equal the single-node run's")
    assert compared > 0


def test_ray_train_on_two_nodes_matches_one_process(runs: Runs) -> None:
    figures = runs.two_nodes.report["ray_train"]
    print(f"Ray Train: {figures}")
    assert figures["node_cpus"] == {HEAD_IP: 1, WORKER_IP: 1}  # two one-CPU workers: one on each node
    assert figures["two_node_epochs"] == figures["single_epochs"]
    gap = abs(figures["two_node_chi2"] - figures["single_chi2"]) / figures["single_chi2"]
    assert gap < RAY_TRAIN_TOLERANCE


def product_dir(storage: Path, product: str) -> Path:
    asset, _, sub = product.partition("/")
    return storage / asset / "demo" / sub


def product_files(storage: Path, product: str) -> list[Path]:
    """Every visible file of a product folder (partition files, not a killed writer's hidden temporaries)."""
    return [p for p in product_dir(storage, product).iterdir() if p.is_file() and not p.name.startswith(".")]


def _free_port() -> int:
    """A port free on every address (Ray's head binds some services on 127.0.0.1, others on its own)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _sessions() -> dict[int, int]:
    """pid → session id of every process (from /proc; processes that end meanwhile are skipped)."""
    sessions = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                sessions[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3])
            except (OSError, IndexError, ValueError):
                continue
    return sessions


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
