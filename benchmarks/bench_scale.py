"""DR1-shaped rehearsal: a demo release of a chosen shape through ``qad run``, measured per stage.

    python benchmarks/bench_scale.py --partitions 1000 --targets 16          # orchestration shape
    python benchmarks/bench_scale.py --partitions 72 --targets 300           # volume: ~15,000 quasars
    python benchmarks/bench_scale.py ... --work /tmp/qad-scale --keep --json out.json

It writes the release with the demo generator (``--workers`` processes, RESOLUTION left out: the pipeline
never reads it, and it is three quarters of a coadd's bytes), then runs ``qad run`` on it in a child
process while a sampler reads ``/proc`` every ``--interval`` seconds for that process and all its
descendants (the Ray daemons and workers it starts). Stage windows come from the Dagster instance
afterwards (each step's start and end events), so per stage it prints:

- wall s, and CPU s of the whole process tree (user + system, ``/proc/<pid>/stat``);
- spectra/s per core: the stage's input spectra over the tree's CPU seconds;
- peak RSS of the largest single process and of the whole tree (the sampler's maxima in the window);
- for the per-partition stages, the driver's CPU per partition (the ``qad`` process: Dagster's event
  writes and Ray scheduling, no science) and the orchestration overhead per partition: the stage's wall
  time on the Ray pool's cores minus the steps' own seconds (``StepSummary.seconds``), over the partitions.

``rank_release`` (inside the ``anomaly_scores`` step) is measured again on its own, in a fresh process, so
its peak RSS is not hidden by the scoring's. CPU figures include what other jobs' contention costs;
the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qad_assets.demo.plan import plan_release
from qad_assets.demo.release import write_pixel, write_truth
from qad_assets.demo.settings import DemoSettings

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
PER_PARTITION = ("raw_spectra", "normalized_spectra", "spectral_features", "anomaly_scores")


def generate(root: Path, release: str, n_pixels: int, targets: int, workers: int, seed: int = 0) -> None:
    """The demo release without RESOLUTION, its pixels written by ``workers`` processes."""
    settings = DemoSettings()
    plans = plan_release(n_pixels, targets, settings.anomaly_fraction, seed)
    with ProcessPoolExecutor(workers) as pool:
        written = list(
            pool.map(
                _write_one,
                [(root, release, plan, seed, settings) for plan in plans],
                chunksize=max(1, n_pixels // (8 * workers)),
            )
        )
    write_truth(root, release, [w[2] for w in written], settings, coadds=[w[0] for w in written])


def _write_one(args: tuple) -> tuple:
    root, release, plan, seed, settings = args
    return write_pixel(root, release, plan, seed, settings, resolution=False)


@dataclass
class Sample:
    t: float
    cpu: float  # CPU s of every process of the tree seen so far (exited ones at their last reading)
    driver_cpu: float
    largest_rss: int
    tree_rss: int


@dataclass
class TreeSampler:
    """Samples a process tree from ``/proc`` in a thread until stopped."""

    root: int
    interval: float
    samples: list[Sample] = field(default_factory=list)
    _last_cpu: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._sample())
            self._stop.wait(self.interval)

    def _sample(self) -> Sample:
        stats = _proc_stats()
        tree = _descendants(self.root, {pid: s[0] for pid, s in stats.items()})
        rss = []
        for pid in tree:
            _, cpu, pages = stats[pid]
            self._last_cpu[pid] = cpu
            rss.append(pages * PAGE)
        return Sample(
            time.time(),
            sum(self._last_cpu.values()),
            self._last_cpu.get(self.root, 0.0),
            max(rss, default=0),
            sum(rss),
        )


def _proc_stats() -> dict[int, tuple[int, float, int]]:
    """pid → (parent pid, user + system CPU s, resident pages) of every readable process."""
    stats = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, int(fields[21]))
    return stats


def _descendants(root: int, parent: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root] if root in parent else []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def run_qad(archive: Path, storage: Path, interval: float) -> tuple[float, list[Sample], str]:
    """``qad run`` in a child process, sampled; returns its wall time, the samples and its stdout."""
    env = {**os.environ, "QAD_DEVICE": os.environ.get("QAD_DEVICE", "cpu")}
    command = [sys.executable, "-m", "qad_assets.cli", "run", "--archive", str(archive), "--storage", str(storage)]
    start = time.perf_counter()
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as child:
        sampler = TreeSampler(child.pid, interval)
        thread = sampler.start()
        out, _ = child.communicate()
        sampler.stop()
        thread.join()
    if child.returncode:
        raise SystemExit(f"qad run failed ({child.returncode}):\n{out}")
    return time.perf_counter() - start, sampler.samples, out


@dataclass
class Stage:
    """One asset step of one run: its window and what its materialization recorded."""

    name: str
    start: float
    end: float
    partitions: int = 0
    rows_in: int = 0
    step_seconds: float = 0.0


def stages(storage: Path) -> list[Stage]:
    """Every step of every run in the storage root's instance, in time order, from its event log."""
    import dagster as dg

    found = []
    with dg.DagsterInstance.from_config(str(storage / "dagster_home")) as instance:
        for run in instance.get_runs():
            windows: dict[str, Stage] = {}
            for entry in instance.all_logs(run.run_id):
                event = entry.dagster_event
                if event is None or event.step_key is None:
                    continue
                if event.event_type_value == "STEP_START":
                    windows[event.step_key] = Stage(event.step_key, entry.timestamp, entry.timestamp)
                stage = windows.get(event.step_key)
                if stage is None:  # events before the step started (planned materializations)
                    continue
                if event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
                    stage.end = entry.timestamp
                materialization = entry.asset_materialization
                if materialization is not None and "partitions" in materialization.metadata:
                    meta = {k: v.value for k, v in materialization.metadata.items()}
                    stage.partitions, stage.rows_in = meta["partitions"], meta.get("rows_in", 0)
                    stage.step_seconds = meta.get("seconds", 0.0)
            found.extend(windows.values())
    return sorted(found, key=lambda s: s.start)


def measure(stage: Stage, samples: list[Sample], cores: int) -> dict:
    """The stage's row of the table, from the samples inside its window (and the ones just around it)."""
    inside = [s for s in samples if stage.start <= s.t <= stage.end] or [
        min(samples, key=lambda s: abs(s.t - stage.start))
    ]
    before = max((s for s in samples if s.t <= stage.start), key=lambda s: s.t, default=samples[0])
    after = min((s for s in samples if s.t >= stage.end), key=lambda s: s.t, default=samples[-1])
    wall = stage.end - stage.start
    cpu = after.cpu - before.cpu
    row = {
        "stage": stage.name,
        "partitions": stage.partitions,
        "spectra_in": stage.rows_in,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "spectra_per_s_core": round(stage.rows_in / cpu) if stage.rows_in and cpu > 0 else None,
        "peak_rss_largest_mb": round(max(s.largest_rss for s in inside) / 2**20),
        "peak_rss_tree_mb": round(max(s.tree_rss for s in inside) / 2**20),
    }
    if stage.name in PER_PARTITION and stage.partitions:
        row["driver_cpu_ms_per_partition"] = round(1000 * (after.driver_cpu - before.driver_cpu) / stage.partitions, 1)
        row["overhead_s_per_partition"] = round((wall * cores - stage.step_seconds) / stage.partitions, 3)
    return row


def rank_release_alone(storage: Path, release: str) -> dict:
    """``rank_release`` over the release's score files in a fresh process: its wall time and peak RSS."""
    code = (
        "import resource, sys, time\n"
        "from pathlib import Path\n"
        "from qad_assets.science.partition_steps import rank_release\n"
        "files = sorted(Path(sys.argv[1]).glob(sys.argv[2] + '_*.parquet'))\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "start = time.perf_counter(); n = rank_release(files); wall = time.perf_counter() - start\n"
        "print(n, wall, base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    scores = storage / "anomaly_scores" / release
    out = subprocess.run([sys.executable, "-c", code, str(scores), release], capture_output=True, text=True, check=True)
    n, wall, base_kb, peak_kb = out.stdout.split()[-4:]
    return {
        "ranked": int(n),
        "wall_s": round(float(wall), 2),
        "peak_rss_mb": round(int(peak_kb) / 1024),
        "import_rss_mb": round(int(base_kb) / 1024),
    }


def print_table(rows: list[dict]) -> None:
    columns = [
        ("stage", 20, "stage"),
        ("partitions", 8, "parts"),
        ("spectra_in", 9, "in"),
        ("wall_s", 8, "wall s"),
        ("cpu_s", 8, "cpu s"),
        ("spectra_per_s_core", 11, "spec/s/core"),
        ("peak_rss_largest_mb", 11, "RSS max MB"),
        ("peak_rss_tree_mb", 12, "RSS tree MB"),
        ("driver_cpu_ms_per_partition", 14, "driver ms/part"),
        ("overhead_s_per_partition", 12, "ovh s/part"),
    ]
    print("".join(f"{title:>{width + 1}}" if i else f"{title:<{width}}" for i, (_, width, title) in enumerate(columns)))
    for row in rows:
        cells = []
        for i, (key, width, _) in enumerate(columns):
            value = row.get(key)
            text = "" if value is None else str(value)
            cells.append(f"{text:<{width}}" if i == 0 else f"{text:>{width + 1}}")
        print("".join(cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--partitions", type=int, default=1000, help="HEALPix coadd files (partitions)")
    parser.add_argument("--targets", type=int, default=16, help="targets per coadd (about 70%% are kept quasars)")
    parser.add_argument("--release", default="rehearsal")
    parser.add_argument("--work", type=Path, default=Path("/tmp/qad-scale"), help="archive and storage go here")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes writing the release")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between /proc samples")
    parser.add_argument("--keep", action="store_true", help="keep the release and storage root afterwards")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    archive, storage = args.work / "archive", args.work / "storage"
    shutil.rmtree(args.work, ignore_errors=True)
    start = time.perf_counter()
    generate(archive, args.release, args.partitions, args.targets, args.workers)
    seconds = time.perf_counter() - start
    print(f"wrote {args.partitions} coadds × {args.targets} targets in {seconds:.0f} s ({_du(archive)})")
    load_before = os.getloadavg()[0]
    wall, samples, out = run_qad(archive, storage, args.interval)
    cores = int(os.environ.get("QAD_RAY_NUM_CPUS") or os.cpu_count() or 1)
    rows = [measure(stage, samples, cores) for stage in stages(storage)]
    total = {"stage": "qad run (total)", "wall_s": round(wall, 1), "cpu_s": round(samples[-1].cpu, 1)}
    total |= {"peak_rss_largest_mb": round(max(s.largest_rss for s in samples) / 2**20)}
    total |= {"peak_rss_tree_mb": round(max(s.tree_rss for s in samples) / 2**20)}
    rows.append(total)
    rank = rank_release_alone(storage, args.release)
    print(f"\nqad run on {args.partitions} partitions × {args.targets} targets, Ray on {cores} cores")
    print_table(rows)
    print(f"rank_release alone: {rank}")
    print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; storage {_du(storage)}")
    print(out.strip().splitlines()[-1] if out.strip() else "")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "rows": rows,
                    "rank_release": rank,
                    "samples": [asdict(s) for s in samples],
                }
            )
        )
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


def _du(path: Path) -> str:
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"{size / 2**30:.2f} GiB"


if __name__ == "__main__":
    main()
