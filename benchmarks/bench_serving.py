"""Load test of the scoring service: throughput and latency on loopback, from a second process.

    python benchmarks/bench_serving.py [--storage DIR] [--single N] [--batch N] [--replicas R] [--time-limit S]

The server is ``qad serve`` in its own process (its own local Ray, the registry's champion of
``--storage``); this process is the client. Without ``--storage`` it first runs ``qad demo`` into a
temporary folder (about two minutes), whose default release promotes a champion. Each scenario sends
a fixed number of requests from ``concurrency`` threads, one HTTP connection each, and stops early at
``--time-limit`` seconds; request bodies are real demo spectra on DESI's brz grid (flux, ivar, mask),
serialized before the clock starts. Latency is from sending the request to having parsed the reply.
On one machine the client competes with the server for the cores: the figures are a floor.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from serve_process import demo_storage, free_port, start_server, stop_server

from qad_assets.science.io.parquet_store import read_table
from qad_assets.service.client import score_request


@dataclass(frozen=True)
class Scenario:
    name: str
    spectra_per_request: int
    requests: int
    concurrency: int


def request_bodies(storage: Path, per_request: int, count: int) -> list[bytes]:
    """``count`` JSON bodies of ``per_request`` real spectra each, cycling through the release."""
    raw = read_table(sorted((storage / "raw_spectra").glob("*/*.parquet"))[0])
    distinct = min(count, 8)  # a few distinct bodies, reused: memory stays bounded for 64-spectrum bodies
    bodies = []
    for b in range(distinct):
        rows = [(b * per_request + k) % raw.num_rows for k in range(per_request)]
        bodies.append(json.dumps(score_request(raw, rows)).encode())
    return [bodies[i % distinct] for i in range(count)]


def run_scenario(url: str, scenario: Scenario, bodies: list[bytes], time_limit: float) -> dict:
    """Send every body (until ``time_limit``) from ``concurrency`` threads; per-request latencies."""
    local = threading.local()
    deadline = time.perf_counter() + time_limit
    latencies: list[float] = []
    errors: list[str] = []

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return local.session

    def send(body: bytes) -> None:
        if time.perf_counter() > deadline:
            return
        start = time.perf_counter()
        response = session().post(f"{url}/score", data=body, headers={"content-type": "application/json"}, timeout=300)
        if response.status_code == 200 and len(response.json()["scores"]) == scenario.spectra_per_request:
            latencies.append(time.perf_counter() - start)
        else:
            errors.append(f"{response.status_code}: {response.text[:200]}")

    start = time.perf_counter()
    with ThreadPoolExecutor(scenario.concurrency) as pool:
        list(pool.map(send, bodies))
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3
    return {
        "done": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "wall": wall,
        "rps": len(latencies) / wall,
        "sps": len(latencies) * scenario.spectra_per_request / wall,
        "p50": float(np.percentile(ms, 50)) if ms.size else float("nan"),
        "p99": float(np.percentile(ms, 99)) if ms.size else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, help="storage root with a champion model (default: run qad demo)")
    parser.add_argument("--single", type=int, default=2000, help="single-spectrum requests (default: 2000)")
    parser.add_argument("--batch", type=int, default=100, help="64-spectrum requests (default: 100)")
    parser.add_argument("--replicas", type=int, default=1, help="scoring replicas of the server (default: 1)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per scenario at most (default: 120)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    storage = demo_storage(args.storage, tmp)
    scenarios = [
        Scenario("1 spectrum / request", 1, args.single, 16),
        Scenario("64 spectra / request", 64, args.batch, 4),
    ]
    port = free_port()
    server = start_server(storage, port, tmp / "serve.log", "--replicas", str(args.replicas))
    url = f"http://127.0.0.1:{port}"
    try:
        model = requests.get(f"{url}/model", timeout=10).json()
        results = []
        for scenario in scenarios:
            bodies = request_bodies(storage, scenario.spectra_per_request, scenario.requests)
            run_scenario(url, Scenario("warm-up", scenario.spectra_per_request, 8, 2), bodies[:8], 60)
            results.append((scenario, run_scenario(url, scenario, bodies, args.time_limit)))
    finally:
        stop_server(server)
    champion = model["champion"]
    print(
        f"\nscoring service: {champion['name']} v{champion['version']} on {model['device']}, "
        f"{args.replicas} replica(s), "
        f"{os.cpu_count()} CPUs shared by client and server, loopback HTTP"
    )
    header = f"{'scenario':<22}{'requests':>9}{'conc.':>6}{'errors':>7}{'wall s':>8}{'req/s':>8}{'spectra/s':>10}"
    header += f"{'p50 ms':>9}{'p99 ms':>9}"
    print(header + "\n" + "-" * len(header))
    for scenario, r in results:
        print(
            f"{scenario.name:<22}{r['done']:>9}{scenario.concurrency:>6}{r['errors']:>7}{r['wall']:>8.1f}"
            f"{r['rps']:>8.1f}{r['sps']:>10.0f}{r['p50']:>9.1f}{r['p99']:>9.1f}"
        )
        if r["done"] < scenario.requests:
            print(f"  stopped at the time limit: {r['done']} of {scenario.requests} requests")
        if r["errors"]:
            print(f"  first error: {r['first_error']}")


if __name__ == "__main__":
    main()
