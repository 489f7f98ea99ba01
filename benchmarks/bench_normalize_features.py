"""Throughput of ``normalized_spectra`` and ``spectral_features`` against their straightforward peers.

    python benchmarks/bench_normalize_features.py [--archive DIR] [--repeats N] [--peer-spectra N]
                                                  [--pandas-spectra N]

Without ``--archive`` it writes the default demo release to a temporary folder first, then reads every
coadd with ``read_spectra_file`` to get the ``raw_spectra`` tables (reading is not timed here; see
``bench_raw_spectra.py``). Times are CPU seconds of this process (``time.process_time``) with every
thread pool pinned to one thread, so spectra/s is per core; on a shared machine CPU time is still
inflated a little by the neighbours (cache, memory bandwidth), so the load average is printed too.

Rows of the table:

- ``normalize_batch`` / ``normalized_table``: the CPU (numba) path, after a warm-up call so the JIT
  compile is excluded (it is reported on its own line); the table row includes the Arrow in/out, the
  indented row is the resampling kernel alone (the part ``docs/rest_frame.md`` quotes).
- peer: ``desispec.interpolation.resample_flux`` one spectrum at a time on de-redshifted wavelengths,
  masked pixels at ivar 0 (as desispec's coadds do), then the same median normalization; on the first
  ``--peer-spectra`` spectra.
- ``spectral_features`` (polars frame) against the per-spectrum pandas reference of
  ``tests/test_spectral_features.py`` (plain loops, rows assembled into a ``pandas.DataFrame``; the
  test suite checks it equals ours), on the first ``--pandas-spectra`` spectra.
- the CUDA path (``device="cuda"``, wall-clock seconds, since GPU time is not CPU time) when a device
  is present.

Peak memory is for normalizing the largest partition, in a fresh child process: the tracemalloc peak
(numpy's allocations) and the rise of the resident-set high-water mark (everything, Arrow included;
Linux only).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS"):
    os.environ[_var] = "1"  # per-core figures: every pool pinned before the libraries start
os.environ.setdefault("DESI_LOGLEVEL", "WARNING")

import argparse  # noqa: E402
import gc  # noqa: E402
import multiprocessing  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from desispec.interpolation import resample_flux  # noqa: E402  (imported here: not inside the peer's timing)

torch.set_num_threads(1)

from qad_assets.demo.release import write_demo_release  # noqa: E402
from qad_assets.science.io.archive import HealpixCoadd, find_healpix_coadds, list_specprods  # noqa: E402
from qad_assets.science.io.spectra_file import read_spectra_file  # noqa: E402
from qad_assets.science.spectra import resampling  # noqa: E402
from qad_assets.science.spectra.arms import BRZ_WAVE  # noqa: E402
from qad_assets.science.spectra.container import Spectra, list_to_numpy  # noqa: E402
from qad_assets.science.spectra.features import spectral_features  # noqa: E402
from qad_assets.science.spectra.features_reference import reference_features  # noqa: E402
from qad_assets.science.spectra.normalization import normalize_batch, normalized_table  # noqa: E402
from qad_assets.science.spectra.resampling import resample_to_rest  # noqa: E402
from qad_assets.science.spectra.rest_frame import NORM_MIN_WAVE, REST_GRID  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NORMALIZE_TARGET_SPEEDUP, NORMALIZE_TARGET_RATE, FEATURES_TARGET_SPEEDUP = 20.0, 10_000.0, 5.0


@dataclass(frozen=True)
class Timing:
    """One row of the table: what ran, on how many spectra, in how many seconds."""

    name: str
    spectra: int
    seconds: float
    clock: str = "cpu s"

    @property
    def rate(self) -> float:
        return self.spectra / self.seconds


def cpu_seconds(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Result of ``fn()`` and the CPU seconds it took."""
    start = time.process_time()
    result = fn()
    return result, time.process_time() - start


# --------------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------------


def raw_partitions(root: Path) -> tuple[list[HealpixCoadd], list[pa.Table]]:
    """Every healpix coadd of the archive's first production, and its ``raw_spectra`` table."""
    coadds = find_healpix_coadds(str(root), list_specprods(str(root))[0])
    return coadds, [read_spectra_file(c.coadd, c.redrock, release="bench").spectra for c in coadds]


# --------------------------------------------------------------------------------------------------
# normalized_spectra
# --------------------------------------------------------------------------------------------------


def jit_compile_seconds(raw: pa.Table) -> float:
    """CPU seconds of the first call (one spectrum): numba compiles the resampling kernel there.

    The call goes through ``normalized_table`` so the kernel is compiled for exactly the array types
    (read-only Arrow-backed float32, bool) the timed calls pass; a second signature would recompile.
    """
    _, seconds = cpu_seconds(lambda: normalized_table(raw.slice(0, 1)))
    return seconds


def time_resample(arrays: list[Spectra], repeats: int) -> Timing:
    """``resample_to_rest`` alone (the numba kernel, no normalization), for the figure in docs/rest_frame.md."""

    def run() -> int:
        for a in arrays:
            resample_to_rest(BRZ_WAVE, a.flux, a.ivar, a.ivar > 0, a.z)
        return sum(len(a.z) for a in arrays)

    n, seconds = cpu_seconds(lambda: sum(run() for _ in range(repeats)))
    return Timing("  of which resample_to_rest (numba kernel)", n, seconds)


def time_normalize_batch(arrays: list[Spectra], repeats: int) -> Timing:
    """``normalize_batch`` over every partition, ``repeats`` times (numpy in, numpy out)."""

    def run() -> int:
        for a in arrays:
            normalize_batch(a)
        return sum(len(a.z) for a in arrays)

    n, seconds = cpu_seconds(lambda: sum(run() for _ in range(repeats)))
    return Timing("normalize_batch (numba, CPU)", n, seconds)


def time_normalized_table(tables: list[pa.Table], repeats: int) -> Timing:
    """``normalized_table`` over every partition (Arrow in, Arrow out), ``repeats`` times.

    Each output is dropped at once, as the partition step drops it after writing it: keeping them all
    would make every pass fault in fresh pages, which no worker does.
    """

    def run() -> int:
        for _ in range(repeats):
            for t in tables:
                normalized_table(t)
        return repeats * sum(t.num_rows for t in tables)

    n, seconds = cpu_seconds(run)
    return Timing("normalized_table (numba, Arrow in/out)", n, seconds)


def desispec_normalize(raw: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The peer: desispec ``resample_flux`` on de-redshifted wavelengths, then the median normalization
    (good pixels redward of 1250 Å), one spectrum at a time. Returns normalized flux, ivar and scale."""
    a = Spectra.from_table(raw, BRZ_WAVE)
    red_side = REST_GRID.wave >= NORM_MIN_WAVE
    n = len(a.z)
    out_flux, out_ivar, out_scale = np.zeros((n, REST_GRID.npix)), np.zeros((n, REST_GRID.npix)), np.ones(n)
    for i in range(n):
        masked_ivar = a.ivar[i].astype(np.float64)  # ingestion zeroed the ivar of masked pixels
        flux, ivar = resample_flux(REST_GRID.wave, BRZ_WAVE / (1.0 + a.z[i]), a.flux[i].astype(np.float64), masked_ivar)
        use = (ivar > 0) & red_side
        if use.sum() < 50:
            use = ivar > 0
        scale = np.median(flux[use]) if use.any() else 1.0
        scale = scale if scale > 0 else 1.0
        out_flux[i], out_ivar[i], out_scale[i] = flux / scale, ivar * scale**2, scale
    return out_flux, out_ivar, out_scale


def time_desispec_peer(tables: list[pa.Table], limit: int) -> tuple[pa.Table, tuple[np.ndarray, ...], Timing]:
    """The peer on the first ``limit`` spectra (it is slow): the subset, its output and its timing."""
    subset = pa.concat_tables(tables).slice(0, limit).combine_chunks()
    output, seconds = cpu_seconds(lambda: desispec_normalize(subset))
    return subset, output, Timing("desispec resample_flux loop (peer)", subset.num_rows, seconds)


def peer_agreement(subset: pa.Table, peer: tuple[np.ndarray, ...]) -> tuple[float, float]:
    """Largest difference of the resampled spectra, ours vs the peer, where the peer has data: flux
    relative to each spectrum's peak |flux|, ivar relative to itself. Both scales are undone first
    (``flux·scale``, ``ivar/scale²``), so a different fallback scale does not count."""
    ours = normalized_table(subset)
    scale = ours["scale"].to_numpy()[:, None]
    flux, ivar = list_to_numpy(ours["flux"]) * scale, list_to_numpy(ours["ivar"]) / scale**2
    peer_norm_flux, peer_norm_ivar, peer_scale = peer
    peer_flux, peer_ivar = peer_norm_flux * peer_scale[:, None], peer_norm_ivar / peer_scale[:, None] ** 2
    has = peer_ivar > 0
    peak = np.abs(peer_flux).max(axis=1, keepdims=True) + 1e-30
    flux_err = np.where(has, np.abs(flux - peer_flux) / peak, 0.0).max()
    ivar_err = np.where(has, np.abs(ivar - peer_ivar) / np.where(has, peer_ivar, 1.0), 0.0).max()
    return float(flux_err), float(ivar_err)


def proc_status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` figure in KiB (Linux), else None."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def reset_peak_rss() -> bool:
    """Reset the resident-set high-water mark (``echo 5 > /proc/self/clear_refs``; Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def partition_memory_mb(coadd: str, redrock: str) -> tuple[float, float | None]:
    """Peak memory of normalizing one partition, measured in a fresh process (run it in a child): the
    tracemalloc peak (numpy's buffers: work arrays and outputs) and the rise of the resident-set
    high-water mark over the resident set with the input read (everything, Arrow included; Linux only).

    A fresh process because a warm allocator reuses freed memory without growing the resident set, so
    the rise would read ~0 after the timing runs.
    """
    raw = read_spectra_file(coadd, redrock, release="bench").spectra
    normalized_table(raw.slice(0, 1))  # the JIT compile, outside the measurement
    gc.collect()
    rss_before = proc_status_kib("VmRSS")
    can_reset = reset_peak_rss()
    tracemalloc.start()
    table = normalized_table(raw)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    hwm = proc_status_kib("VmHWM")
    del table
    rss_rise = (hwm - rss_before) / 1024 if can_reset and hwm is not None and rss_before is not None else None
    return traced_peak / 2**20, rss_rise


def peak_memory_mb(coadd: HealpixCoadd) -> tuple[float, float | None]:
    """:func:`partition_memory_mb` of one partition, in a spawned child process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(partition_memory_mb, coadd.coadd, coadd.redrock).result()


def cuda_timing(tables: list[pa.Table], repeats: int) -> Timing | None:
    """``normalize_batch(device="cuda")`` wall-clock rate, or None without a CUDA device."""
    if not torch.cuda.is_available():
        return None
    arrays = [Spectra.from_table(t, BRZ_WAVE) for t in tables]
    a = arrays[0]
    normalize_batch(a, device="cuda")  # warm-up: CUDA context, kernels
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        for a in arrays:
            normalize_batch(a, device="cuda")  # returns numpy: synchronized
    seconds = time.perf_counter() - start
    n = repeats * sum(len(a.z) for a in arrays)
    return Timing(f"normalize_batch (torch, {torch.cuda.get_device_name()})", n, seconds, "wall s")


# --------------------------------------------------------------------------------------------------
# spectral_features
# --------------------------------------------------------------------------------------------------


def time_features(normalized: list[pa.Table], repeats: int) -> Timing:
    """``spectral_features`` (polars frame) over every normalized partition, ``repeats`` times."""

    def run() -> int:
        for t in normalized:
            spectral_features(t)
        return sum(t.num_rows for t in normalized)

    n, seconds = cpu_seconds(lambda: sum(run() for _ in range(repeats)))
    return Timing("spectral_features (numpy core, polars)", n, seconds)


def time_pandas_peer(normalized: list[pa.Table], limit: int) -> tuple[Timing, float]:
    """The pandas reference on the first ``limit`` spectra: its timing, and the largest difference
    from ours over every feature (NaN/null treated as equal), as a check that both did the same work."""
    subset = pa.concat_tables(normalized).slice(0, limit).combine_chunks()
    frame, seconds = cpu_seconds(lambda: reference_features(subset))
    ours = spectral_features(subset).to_pandas()
    worst = 0.0
    for column in frame.columns:
        a, b = frame[column].to_numpy(float), ours[column].to_numpy(float)
        both = np.isfinite(a) & np.isfinite(b)
        if (np.isfinite(a) != np.isfinite(b)).any():
            worst = np.inf
        elif both.any():
            worst = max(worst, float(np.max(np.abs(a[both] - b[both]) / np.maximum(np.abs(a[both]), 1.0))))
    return Timing("pandas per-spectrum reference (peer)", subset.num_rows, seconds), worst


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_table(rows: list[Timing]) -> None:
    print(f"{'path':<48}{'spectra':>9}{'seconds':>10}{'':>7}{'spectra/s/core':>16}")
    for row in rows:
        print(f"{row.name:<48}{row.spectra:>9}{row.seconds:>10.3f}{row.clock:>7}{row.rate:>16,.0f}")


@dataclass(frozen=True)
class Results:
    """Everything one benchmark run measured."""

    rows: list[Timing]
    batch: Timing
    table: Timing
    peer: Timing
    features: Timing
    pandas_peer: Timing
    compile_s: float
    first_pass: Timing
    recompiled: bool
    agreement: tuple[float, float]
    features_difference: float
    largest: pa.Table
    memory_mb: tuple[float, float | None]
    load: tuple[float, float]
    spectra: int
    partitions: int


def measure(root: Path, args: argparse.Namespace) -> Results:
    """Run every measurement, in an order that keeps each one's warm-up out of the next one's timing."""
    load_before = os.getloadavg()[0]
    coadds, raw = raw_partitions(root)
    arrays = [Spectra.from_table(t, BRZ_WAVE) for t in raw]
    compile_s = jit_compile_seconds(raw[0])
    first_pass = time_normalized_table(raw, 1)  # not in the table: allocator and caches still cold
    kernel = resampling._numba_kernel
    signatures = len(kernel.signatures) if kernel is not None else 0
    batch = time_normalize_batch(arrays, args.repeats)
    resample = time_resample(arrays, args.repeats)
    table = time_normalized_table(raw, args.repeats)
    normalized = [normalized_table(t) for t in raw]  # the features' input
    subset, peer_output, peer = time_desispec_peer(raw, args.peer_spectra)
    recompiled = kernel is not None and len(kernel.signatures) != signatures
    features = time_features(normalized, args.repeats)
    pandas_peer, difference = time_pandas_peer(normalized, args.pandas_spectra)
    largest = max(range(len(raw)), key=lambda i: raw[i].num_rows)
    memory = peak_memory_mb(coadds[largest])
    cuda = cuda_timing(raw, args.repeats)
    rows = [r for r in (batch, resample, table, peer, features, pandas_peer, cuda) if r is not None]
    return Results(
        rows,
        batch,
        table,
        peer,
        features,
        pandas_peer,
        compile_s,
        first_pass,
        recompiled,
        peer_agreement(subset, peer_output),
        difference,
        raw[largest],
        memory,
        (load_before, os.getloadavg()[0]),
        sum(t.num_rows for t in raw),
        len(raw),
    )


def report(r: Results, repeats: int) -> None:
    """The table, then one line per target and the context a reader needs to trust the figures."""
    print_table(r.rows)
    if not any(row.clock == "wall s" for row in r.rows):
        print("CUDA normalize_batch: no CUDA device")
    print(
        f"numba JIT compile (first call, excluded above): {r.compile_s:.2f} cpu s; first pass after it (cold): "
        f"{r.first_pass.rate:,.0f} spectra/s/core; recompiled while timing: {r.recompiled}"
    )
    speedup = r.table.rate / r.peer.rate
    print(
        f"normalized_spectra (normalized_table): {speedup:.1f}x the desispec loop "
        f"(target >= {NORMALIZE_TARGET_SPEEDUP:.0f}x: {verdict(speedup >= NORMALIZE_TARGET_SPEEDUP)}); "
        f"{r.table.rate:,.0f} spectra/s/core (target >= {NORMALIZE_TARGET_RATE:,.0f}: "
        f"{verdict(r.table.rate >= NORMALIZE_TARGET_RATE)})"
    )
    print(
        f"  normalize_batch alone: {r.batch.rate / r.peer.rate:.1f}x, {r.batch.rate:,.0f} spectra/s/core; "
        f"largest relative difference from desispec: flux {r.agreement[0]:.1e}, ivar {r.agreement[1]:.1e}"
    )
    in_mb = sum(r.largest[c].nbytes for c in ("flux", "ivar", "good")) / 2**20
    out_mb = r.largest.num_rows * REST_GRID.npix * 8 / 2**20
    traced, rss = r.memory_mb
    rss_text = f"{rss:.0f} MB" if rss is not None else "n/a"
    print(
        f"peak memory, largest partition ({r.largest.num_rows} spectra, {in_mb:.0f} MB brz arrays in, {out_mb:.0f} MB "
        f"rest-frame arrays out): tracemalloc {traced:.0f} MB, RSS high-water rise {rss_text}"
    )
    speedup = r.features.rate / r.pandas_peer.rate
    print(
        f"spectral_features: {speedup:.1f}x the pandas reference (target >= {FEATURES_TARGET_SPEEDUP:.0f}x: "
        f"{verdict(speedup >= FEATURES_TARGET_SPEEDUP)}); largest feature difference {r.features_difference:.1e}"
    )
    print(
        f"load average (1 min) {r.load[0]:.2f} before, {r.load[1]:.2f} after, on {os.cpu_count()} CPUs; "
        f"{r.spectra} spectra in {r.partitions} partitions, {repeats} repeats"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", help="DESI archive root (default: write the demo release)")
    parser.add_argument("--repeats", type=int, default=5, help="passes over all partitions for our paths")
    parser.add_argument("--peer-spectra", type=int, default=300, help="spectra for the desispec peer")
    parser.add_argument("--pandas-spectra", type=int, default=100, help="spectra for the pandas peer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.archive or Path(tmp) / "archive")
        if not args.archive:
            write_demo_release(root)
        report(measure(root, args), args.repeats)


if __name__ == "__main__":
    main()
