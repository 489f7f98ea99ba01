"""Abuse of the scoring service, bounded and on loopback: does /health keep answering, does the replica's
memory stay bounded, and does a good request still score exactly as the batch afterwards?

    python benchmarks/bench_service_abuse.py [--storage DIR] [--stalled 260] [--headers 200]
                                             [--large 3] [--large-mib 46] [--flood 2000]

The server is ``qad serve`` in its own process (its own local Ray, the registry's champion of
``--storage``, or the release's own model where a small release promoted none; without ``--storage``,
``qad demo`` first, a few minutes). This process attacks it, one scenario after the other, each bounded in
connections and time:

* stalled bodies: ``--stalled`` connections from as many loopback addresses, and as many again from one
  address, send a request head announcing a 1 MB JSON body and its first byte, then nothing for 30 s;
* half-sent headers: ``--headers`` connections from as many addresses send half a request head, then
  nothing (answers awaited 40 s at most);
* large JSON: ``--large`` valid requests of ``--large-mib`` MiB each (real demo spectra) at once;
* flood: ``--flood`` one-spectrum requests from 64 threads, each from an address of its own (so that
  the per-client cap lets them all in and the replica is loaded, not just the front door).

Throughout, a prober asks ``/health`` every 0.25 s from an address of its own, 127.0.0.2 (1 s timeout),
and the scoring replica's resident memory is sampled every 0.2 s (from /proc). Before and after, the
first 16 spectra of a partition are scored. The targets (each printed with its verdict; exit status 1
when one is missed): every /health answer 200 within 1 s; the replica's peak RSS within ``MEMORY_BOUND``
of its RSS at rest; the good request's answers identical before and after, and equal to the batch's
``anomaly_scores`` (1e-5, as tests/test_scoring_service.py) when ``--storage`` was scored by this code.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import requests
from requests.adapters import HTTPAdapter
from serve_process import demo_storage, free_port, start_server, stop_server

from qad_assets.science.io.parquet_store import read_table
from qad_assets.science.model.package import current_package, read_registration
from qad_assets.science.model.registry import CHAMPION, ModelRegistry
from qad_assets.service.client import score_request

#: The replica process: Ray titles it after the application and deployment.
REPLICA = "ServeReplica:qad-scoring"
PROBE_ADDRESS = "127.0.0.2"
HEALTH_LIMIT_S = 1.0
#: Peak replica RSS above its RSS at rest. The replica parses at most two large JSON bodies at once
#: (MAX_CONCURRENT_LARGE_JSON), each in about twice its size (docs/operations.md), the body itself
#: beside it: 2 × 3 × 46 MiB ≈ 280 MiB, plus scoring 140 spectra per request; before the front door one
#: 46 MiB request took 1.9 GiB and three 4.8 GiB.
MEMORY_BOUND_MIB = 512
#: Compared with the batch, as tests/test_scoring_service.py does.
COMPARED = ("anomaly_score", "p_value", "reduced_chi2", "chi2", "kl", "latent_nll", "top_region_share", "snr")
SAME = ("top_region", "worst_arm", "model_version", "n_obs")
STALL_S = 30.0


class FromAddress(HTTPAdapter):
    """Connections from a loopback address of our choosing: the front door caps connections per address,
    so the prober and each flood thread are clients of their own."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(source: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", FromAddress(source))
    return session


class Prober(threading.Thread):
    """GET /health every 0.25 s with a 1 s timeout: latencies (s) and failures, per scenario."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.scenario = url, threading.Event(), "start"
        self.samples: dict[str, list[float]] = {}
        self.failures: dict[str, list[str]] = {}

    def run(self) -> None:
        session = session_from(PROBE_ADDRESS)
        while not self.stop.wait(0.25):
            name, started = self.scenario, time.perf_counter()
            try:
                status = session.get(f"{self.url}/health", timeout=HEALTH_LIMIT_S).status_code
                problem = "" if status == 200 else str(status)
            except requests.RequestException as err:
                problem = type(err).__name__
            self.samples.setdefault(name, []).append(time.perf_counter() - started)
            if problem:
                self.failures.setdefault(name, []).append(problem)


class Memory(threading.Thread):
    """The replica's resident set (MiB), sampled every 0.2 s: peak per scenario."""

    def __init__(self, server_pid: int) -> None:
        super().__init__(daemon=True)
        self.stop, self.scenario = threading.Event(), "start"
        self.pid = replica_pid(server_pid)
        self.peak: dict[str, float] = {}

    def now(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.peak[self.scenario] = max(self.peak.get(self.scenario, 0.0), self.now())


def parent_pid(pid: int) -> int:
    """From /proc/<pid>/stat; the command name may hold spaces, so read after its closing parenthesis."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = parent_pid(pid)
    return False


def replica_pid(server_pid: int, timeout: float = 60) -> int:
    """The scoring replica of this ``qad serve``: a process titled after the deployment, descending from
    it (other engineers' services on the machine are not ours to measure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                titled = REPLICA in (entry / "cmdline").read_bytes().decode(errors="replace")
                if titled and descends_from(int(entry.name), server_pid):
                    return int(entry.name)
            except (OSError, ValueError):  # the process ended while we looked
                continue
        time.sleep(1)
    raise RuntimeError(f"no scoring replica process under qad serve (pid {server_pid})")


# -- the attacks: each returns how many connections got each answer ----------------------------------------


def connect(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(60)
    sock.connect(("127.0.0.1", port))
    return sock


def answers(socks: list[socket.socket], wait: float) -> Counter[str]:
    """The status each connection got within ``wait`` s ('none' when the server said nothing by then,
    'closed' when it hung up without a word); every socket is closed."""
    counts: Counter[str] = Counter()
    deadline = time.monotonic() + wait
    for sock in socks:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = sock.recv(200)
            counts[data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"] += 1
        except OSError:  # socket.timeout included
            counts["none"] += 1
        sock.close()
    return counts


def open_and_send(port: int, sources: list[str], data: bytes) -> tuple[list[socket.socket], int]:
    """A connection from each source with ``data`` sent on it; and how many could not be opened."""
    socks, failed = [], 0
    for source in sources:
        try:
            sock = connect(port, source)
            sock.sendall(data)
            socks.append(sock)
        except OSError:
            failed += 1
    return socks, failed


def stalled_bodies(port: int, n: int) -> Counter[str]:
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
    spread = [f"127.0.{10 + i // 250}.{1 + i % 250}" for i in range(n)]
    socks, failed = open_and_send(port, [a for source in spread for a in (source, "127.0.9.1")], head)
    time.sleep(STALL_S)
    return answers(socks, STALL_S) + Counter({"not connected": failed} if failed else {})


def half_headers(port: int, n: int) -> Counter[str]:
    sources = [f"127.0.{20 + i // 250}.{1 + i % 250}" for i in range(n)]
    socks, failed = open_and_send(port, sources, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Ty")
    return answers(socks, 40) + Counter({"not connected": failed} if failed else {})


def post_all(url: str, bodies: list[bytes], threads: int, timeout: float) -> Counter[str]:
    """Every body POSTed to /score from ``threads`` threads, thread k from address 127.0.30.<k+1>."""
    counts: Counter[str] = Counter()
    lock, local, numbers = threading.Lock(), threading.local(), iter(range(threads))

    def send(body: bytes) -> None:
        if not hasattr(local, "session"):
            with lock:
                local.session = session_from(f"127.0.30.{next(numbers) + 1}")
        try:
            headers = {"content-type": "application/json"}
            code = str(local.session.post(f"{url}/score", data=body, headers=headers, timeout=timeout).status_code)
        except requests.RequestException as err:
            code = type(err).__name__
        with lock:
            counts[code] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, bodies))
    return counts


# -- the good request, before and after -----------------------------------------------------------------


def first_partition(storage: Path, product: str) -> pa.Table:
    key = sorted((storage / "raw_spectra" / "demo").glob("*.parquet"))[0].name
    return read_table(storage / product / "demo" / key)


def good_request(url: str, storage: Path) -> list[dict]:
    """The service's scores of the first 16 spectra of the release's first partition."""
    body = score_request(first_partition(storage, "raw_spectra"), list(range(16)), release="demo")
    response = requests.post(f"{url}/score", json=body, timeout=120)
    response.raise_for_status()
    return response.json()["scores"]


def batch_difference(scores: list[dict], storage: Path) -> float:
    """Largest difference between these scores and the batch's ``anomaly_scores``, relative where the
    value exceeds 1 (inf when a label column differs)."""
    batch = first_partition(storage, "anomaly_scores")
    row = {t: i for i, t in enumerate(batch["TARGETID"].to_pylist())}
    rows = [row[s["targetid"]] for s in scores]
    if any([s[c] for s in scores] != [batch[c].to_pylist()[r] for r in rows] for c in SAME):
        return float("inf")
    worst = 0.0
    for column in COMPARED:
        got = np.asarray([np.nan if s[column] is None else s[column] for s in scores], float)
        want = batch[column].to_numpy()[rows].astype(float)
        worst = max(worst, float(np.nanmax(np.abs(got - want) / np.maximum(np.abs(want), 1.0))))
    return worst


# -- running it -------------------------------------------------------------------------------------------


def ensure_champion(storage: Path) -> None:
    """A small release may miss the promotion gate: serve the release's own model then."""
    registry = ModelRegistry(str(storage))
    if registry.alias_version(CHAMPION) is None:
        version = read_registration(current_package(storage / "vae_model" / "demo"))["version"]
        print(f"no champion in {storage}: serving the release's own version {version}", file=sys.stderr)
        registry.set_alias(CHAMPION, version)


def attacks(storage: Path, url: str, port: int, args: argparse.Namespace) -> list[tuple[str, Callable]]:
    """The scenarios, in order; request bodies are serialized before any clock starts."""
    raw = first_partition(storage, "raw_spectra")
    per_spectrum = len(json.dumps(score_request(raw, [0, 1]))) - len(json.dumps(score_request(raw, [0])))
    large_rows = [i % raw.num_rows for i in range(int(args.large_mib * 2**20 / per_spectrum))]
    large = json.dumps(score_request(raw, large_rows, release="demo")).encode()
    small = [json.dumps(score_request(raw, [i % raw.num_rows], release="demo")).encode() for i in range(64)]
    flood = [small[i % 64] for i in range(args.flood)]
    return [
        (f"stalled bodies ({2 * args.stalled})", lambda: stalled_bodies(port, args.stalled)),
        (f"half-sent headers ({args.headers})", lambda: half_headers(port, args.headers)),
        (
            f"large JSON ({args.large} x {len(large) / 2**20:.0f} MiB)",
            lambda: post_all(url, [large] * args.large, args.large, 300),
        ),
        (f"flood ({args.flood} x 1 spectrum)", lambda: post_all(url, flood, 64, 120)),
    ]


def run_all(scenarios: list[tuple[str, Callable]], prober: Prober, memory: Memory) -> list[tuple]:
    """Each scenario, then 5 s of calm (probed under the name 'after …'): (name, answers, s, RSS at end)."""
    results = []
    for name, attack in scenarios:
        prober.scenario = memory.scenario = name
        started = time.perf_counter()
        outcome = attack()
        seconds = time.perf_counter() - started
        prober.scenario = memory.scenario = f"after {name}"
        time.sleep(5)
        results.append((name, outcome, seconds, memory.now()))
    return results


def table(results: list[tuple], prober: Prober, memory: Memory, rest: float) -> None:
    """One row a scenario: its answers and time; /health (probes, median and slowest answer in s, failures)
    and the replica's RSS (MiB) during it and the 5 s after; the RSS at its end."""
    print(
        f"\nscoring service abuse, {os.cpu_count()} CPUs shared by attacker and server (load average "
        f"{os.getloadavg()[1]:.1f} over the last 5 min), loopback HTTP"
    )
    header = f"{'scenario':<30}{'answers':<38}{'s':>5}{'/health n':>10}{'median':>7}{'max':>6}{'fails':>6}"
    header += f"{'RSS peak':>9}{'end':>6}"
    print(header + "\n" + "-" * len(header))
    for name, outcome, seconds, end_rss in results:
        health = prober.samples.get(name, []) + prober.samples.get(f"after {name}", [])
        failed = len(prober.failures.get(name, []) + prober.failures.get(f"after {name}", []))
        top = max(memory.peak.get(name, rest), memory.peak.get(f"after {name}", rest))
        text = ", ".join(f"{code}: {count}" for code, count in sorted(outcome.items()))
        probes = f"{len(health):>10}{np.median(health):>7.2f}{max(health):>6.2f}{failed:>6}"
        print(f"{name:<30}{text:<38}{seconds:>5.0f}{probes}{top:>9.0f}{end_rss:>6.0f}")


def verdicts(prober: Prober, memory: Memory, rest: float, before: list, after: list, difference: float) -> bool:
    """Each target with what was measured (over the whole run, calm moments included); True when all met."""
    probes = [s for samples in prober.samples.values() for s in samples]
    fails, slowest = sum(map(len, prober.failures.values())), max(probes, default=float("inf"))
    peak = max(memory.peak.values(), default=float("inf"))
    checks = [
        (
            f"/health: {len(probes)} probes, all 200 within {HEALTH_LIMIT_S:g} s",
            fails == 0 and slowest <= HEALTH_LIMIT_S,
            f"{fails} failed, slowest {slowest:.2f} s",
        ),
        (
            f"replica RSS at most {MEMORY_BOUND_MIB} MiB over its {rest:.0f} MiB at rest",
            peak - rest <= MEMORY_BOUND_MIB,
            f"peak {peak:.0f} MiB (+{peak - rest:.0f})",
        ),
        (
            "the good request answers as before the abuse",
            after == before,
            "identical" if after == before else "DIFFERENT",
        ),
        (
            "the good request equals the batch's anomaly_scores (1e-5)",
            difference <= 1e-5,
            f"largest difference {difference:.1e}",
        ),
    ]
    for target, met, measured in checks:
        print(f"{'met   ' if met else 'MISSED'} {target}: {measured}")
    return all(met for _, met, _ in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, help="storage root with a scored demo release (default: qad demo)")
    parser.add_argument("--stalled", type=int, default=260, help="stalled bodies, per source pattern (default 260)")
    parser.add_argument("--headers", type=int, default=200, help="half-sent request heads (default 200)")
    parser.add_argument("--large", type=int, default=3, help="large JSON requests at once (default 3)")
    parser.add_argument("--large-mib", type=float, default=46, help="size of each, MiB (default 46)")
    parser.add_argument("--flood", type=int, default=2000, help="one-spectrum requests (default 2000)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-abuse-"))
    storage = demo_storage(args.storage, tmp)
    ensure_champion(storage)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    scenarios = attacks(storage, url, port, args)
    server = start_server(storage, port, tmp / "serve.log")
    prober, memory = Prober(url), Memory(server.pid)
    try:
        before = good_request(url, storage)
        prober.start()
        memory.start()
        time.sleep(2)
        rest = memory.now()
        results = run_all(scenarios, prober, memory)
        after = good_request(url, storage)
    finally:
        prober.stop.set()
        memory.stop.set()
        stop_server(server)
    table(results, prober, memory, rest)
    sys.exit(0 if verdicts(prober, memory, rest, before, after, batch_difference(after, storage)) else 1)


if __name__ == "__main__":
    main()
