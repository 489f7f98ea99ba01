"""The explorer's latency on a release of 150,000 spectra: a page of the table, and a candidate's view.

The release is synthetic: the product files of a demo release scored by the pipeline (``qad demo``) are
copied over and over under new TARGETIDs (scores jittered, ranks recomputed release-wide) until they hold
``--spectra`` rows in partitions of the demo's size (~280 spectra), and the demo's model package is
copied with them. ``raw_spectra`` files hold only the columns the explorer reads (TARGETID and the
position): the 7781-pixel observed arrays of 150,000 spectra (10 GB) play no part in it. The other
products are whole. Then the explorer (``qad_assets.explorer.app``) runs under uvicorn on a loopback
port, 400 labels are added, and ``requests`` measures, over HTTP:

* the first request (building the release index) and a restart (reading the cached index);
* pages of 50 rows for typical views (default order, a deep page, filters and sorts, labelled or not);
* a candidate's view as the page opens it: its detail (row, label history, 8 latent neighbours) then its
  spectrum (data, noise, reconstruction by the VAE, residuals), in rest and observed frame.

Run (after ``.venv/bin/qad demo --storage /tmp/demo``)::

    .venv/bin/python benchmarks/bench_explorer.py --source /tmp/demo --work /tmp/bench-explorer

Needs ~5 GB of disk under ``--work`` (normalized spectra); figures of a run are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import resource
import shutil
import socket
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import requests
import uvicorn

from qad_assets.explorer.app import create_app
from qad_assets.labels.store import LabelStore
from qad_assets.labels.vocabulary import CODES
from qad_assets.science.ranking.candidates import product_files

RELEASE = "bench"
#: Typical views of the table: (what, query parameters).
PAGES = [
    ("by rank, first page", {}),
    ("by rank, page at row 100,000", {"offset": 100_000}),
    (
        "score desc, 1.5 < z < 3, p < 0.05",
        {"sort": "anomaly_score", "descending": "true", "z_min": 1.5, "z_max": 3, "p_max": 0.05},
    ),
    ("BAL, not labelled, by p-value", {"bal": "true", "labelled": "false", "sort": "p_value"}),
    ("region civ, by z desc", {"region": "civ", "sort": "Z", "descending": "true"}),
    ("labelled only", {"labelled": "true"}),
]


def write_release(source: Path, source_release: str, work: Path, spectra: int, seed: int = 0) -> int:
    """Copies of the source release's products under new TARGETIDs until ``spectra`` rows; returns them."""
    rng = np.random.default_rng(seed)
    assets = ("anomaly_scores", "spectral_features", "raw_spectra", "normalized_spectra")
    files = {asset: product_files(source, asset, source_release) for asset in assets}
    keys = sorted(files["anomaly_scores"])
    frames = {
        (asset, key): pl.read_parquet(
            files[asset][key], columns=["TARGETID", "TARGET_RA", "TARGET_DEC"] if asset == "raw_spectra" else None
        )
        for asset in assets
        for key in keys
    }
    per_copy = sum(len(frames["anomaly_scores", key]) for key in keys)
    copies = math.ceil(spectra / per_copy)
    plan = []  # (copy, key, rows)
    left = spectra
    for copy in range(copies):
        for key in keys:
            rows = min(len(frames["anomaly_scores", key]), left)
            if rows:
                plan.append((copy, key, rows))
            left -= rows
    scores = [
        frames["anomaly_scores", key]["anomaly_score"].to_numpy()[:rows] + rng.normal(0, 0.05, rows)
        for _, key, rows in plan
    ]
    everything = np.concatenate(scores)
    order = np.argsort(-everything, kind="stable")
    ranks = np.empty(len(everything), np.int64)
    ranks[order] = np.arange(1, len(everything) + 1)
    offset = 0
    for index, ((copy, key, rows), score) in enumerate(zip(plan, scores, strict=True)):
        name = f"{RELEASE}_main_dark_{100_000 + index}"
        shift = pl.col("TARGETID") + copy * 10**11
        for asset in assets:
            frame = frames[asset, key].head(rows).with_columns(shift)
            if asset == "anomaly_scores":
                frame = frame.with_columns(
                    pl.Series("anomaly_score", score), pl.Series("rank", ranks[offset : offset + rows])
                )
            (work / asset / RELEASE).mkdir(parents=True, exist_ok=True)
            frame.write_parquet(work / asset / RELEASE / f"{name}.parquet", compression="lz4", statistics=False)
        offset += rows
    shutil.rmtree(work / "vae_model" / RELEASE, ignore_errors=True)
    shutil.copytree(source / "vae_model" / source_release, work / "vae_model" / RELEASE, symlinks=True)
    return offset


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Explorer:
    """The app under uvicorn in a thread of this process, as ``qad explore`` runs it."""

    def __init__(self, storage: Path) -> None:
        self.labels = LabelStore.for_storage(storage)
        port = free_port()
        config = uvicorn.Config(create_app(storage, self.labels), host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}/api/releases/{RELEASE}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.labels.close()


def timed_get(session: requests.Session, url: str, **params) -> tuple[float, dict]:
    start = time.perf_counter()
    response = session.get(url, params=params, timeout=120)
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed, response.json()


def summary(seconds: list[float]) -> str:
    ms = sorted(1000 * s for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"{statistics.median(ms):>8.0f}{p95:>8.0f}{ms[-1]:>8.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="storage root of a scored demo release")
    parser.add_argument("--source-release", default="demo")
    parser.add_argument("--work", type=Path, required=True, help="storage root to write the large release to")
    parser.add_argument("--spectra", type=int, default=150_000)
    parser.add_argument("--repeats", type=int, default=20, help="requests per page view")
    parser.add_argument("--candidates", type=int, default=30, help="candidate views measured")
    parser.add_argument("--keep", action="store_true", help="reuse --work's release if it is there")
    args = parser.parse_args()

    if not (args.keep and (args.work / "anomaly_scores" / RELEASE).is_dir()):
        shutil.rmtree(args.work, ignore_errors=True)
        start = time.perf_counter()
        written = write_release(args.source, args.source_release, args.work, args.spectra)
        print(f"wrote {written} spectra of release {RELEASE!r} in {time.perf_counter() - start:.0f} s")
    shutil.rmtree(args.work / "explorer", ignore_errors=True)
    shutil.rmtree(args.work / "labels", ignore_errors=True)

    explorer = Explorer(args.work)
    session = requests.Session()
    cold, info = timed_get(session, explorer.url)
    print(f"{info['candidates']} candidates; first request (index built) {cold:.2f} s")
    rng = np.random.default_rng(1)
    ids = timed_get(session, f"{explorer.url}/candidates", limit=500, sort="anomaly_score", descending="true")[1]
    for targetid in rng.choice([r["TARGETID"] for r in ids["rows"]], 400, replace=False):
        explorer.labels.add(RELEASE, int(targetid), str(rng.choice(CODES)), author="bench")
    explorer.stop()
    explorer = Explorer(args.work)  # a restart: the cached index
    session = requests.Session()
    warm, _ = timed_get(session, explorer.url)
    print(f"restart: first request (cached index) {warm:.2f} s; 400 labels in the database")

    print(f"\n{'table page (50 rows)':<48}{'median':>8}{'p95':>8}{'max':>8}   ms, {args.repeats} requests each")
    for what, params in PAGES:
        times = [timed_get(session, f"{explorer.url}/candidates", limit=50, **params)[0] for _ in range(args.repeats)]
        total = timed_get(session, f"{explorer.url}/candidates", limit=1, **params)[1]["total"]
        print(f"{what + f' ({total} rows)':<48}{summary(times)}")

    everything = timed_get(session, f"{explorer.url}/candidates", limit=500, offset=int(rng.integers(0, 100_000)))[1]
    picks = rng.choice([r["TARGETID"] for r in everything["rows"]], args.candidates, replace=False)
    detail, rest, observed, view = [], [], [], []
    for targetid in picks:
        d, _ = timed_get(session, f"{explorer.url}/candidates/{targetid}")
        r, _ = timed_get(session, f"{explorer.url}/candidates/{targetid}/spectrum", frame="rest")
        o, _ = timed_get(session, f"{explorer.url}/candidates/{targetid}/spectrum", frame="observed", smooth=5)
        detail.append(d)
        rest.append(r)
        observed.append(o)
        view.append(d + r)
    print(f"\n{'candidate view':<48}{'median':>8}{'p95':>8}{'max':>8}   ms, {args.candidates} random candidates")
    print(f"{'detail (row, history, 8 neighbours)':<48}{summary(detail)}")
    print(f"{'spectrum, rest frame':<48}{summary(rest)}")
    print(f"{'spectrum, observed frame, smoothed 5 px':<48}{summary(observed)}")
    print(f"{'view = detail + spectrum':<48}{summary(view)}")
    start = time.perf_counter()
    exported = session.get(f"{explorer.url}/export", params={"format": "votable", "p_max": 0.01}, timeout=300)
    print(f"\nVOTable export of p < 0.01: {len(exported.content) / 1e6:.1f} MB in {time.perf_counter() - start:.2f} s")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"peak memory of this process (server + client): {peak_gb:.2f} GB")
    explorer.stop()


if __name__ == "__main__":
    main()
