"""Throughput of ``raw_spectra`` (read + merge + write Parquet) against desispec's per-spectrum loop.

    python benchmarks/bench_raw_spectra.py [--archive DIR] [--peer-spectra N]
    python benchmarks/bench_raw_spectra.py --dr1-shaped [--files 8] [--rows 500] [--qso-fraction 0.1] [--peer-files N]

Without ``--archive`` it writes the default demo release to a temporary folder first. With
``--dr1-shaped`` it writes coadds shaped like DR1's instead: ``--rows`` targets per file of which
``--qso-fraction`` are quasars (the rest galaxies, stars, sky fibres and unassigned fibres taken from a
demo pixel), RESOLUTION present, CHECKSUM/DATASUM on every HDU as desispec writes them; the ``cold``
rows then read them after evicting them from the page cache (``posix_fadvise``), which is how a release
pass meets them. Times are CPU seconds of this process (``time.process_time``: user + system, so page
faults count), single-threaded, so spectra/s is per core; the cold rows also give wall time and the bytes
read from disk. The peer is the straightforward loop a user would write: ``desispec.io.read_spectra`` per
file, then ``coadd_cameras`` per spectrum, appended row by row to a Parquet table; it runs on the first
``--peer-spectra`` input spectra (default: the first file's) and its rate is per input spectrum as ours is.
``--peer-files N`` adds the kinder peer: ``coadd_cameras`` once per file on the first N files.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DESI_LOGLEVEL", "WARNING")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from astropy.io import fits  # noqa: E402

from qad_assets.demo.geometry import FIRST_PIXEL  # noqa: E402
from qad_assets.demo.release import write_demo_release  # noqa: E402
from qad_assets.science.io.archive import HealpixCoadd, find_healpix_coadds, healpix_coadd, list_specprods  # noqa: E402
from qad_assets.science.io.parquet_store import write_table_atomic  # noqa: E402
from qad_assets.science.io.spectra_file import read_spectra_file  # noqa: E402
from qad_assets.science.partition_steps import ingest_healpix_coadd  # noqa: E402

DR1_SHAPED = "dr1shape"
#: Rows of a demo pixel that a DR1-shaped file draws its non-quasars from (filtered, not quarantined).
NON_QUASAR_REASONS = ("not_qso", "not_target", "unassigned_fiber", "zwarn")


def write_dr1_shaped(root: Path, *, files: int, rows: int, qso_fraction: float, seed: int = 0) -> list[HealpixCoadd]:
    """Coadd + redrock files of ``rows`` targets each, ``qso_fraction`` of them quasars, in the DESI layout
    under ``root`` (production ``dr1shape``), with RESOLUTION and checksums: the shape of DR1's healpix
    coadds, whose rows are mostly galaxies and stars. Rows are drawn from one demo pixel (new TARGETIDs).
    """
    source = write_demo_release(root / "source", n_pixels=1, targets_per_pixel=400, seed=seed)
    truth = pq.read_table(source.truth_path, columns=["expected_status", "expected_reason"])
    status = truth["expected_status"].to_numpy(zero_copy_only=False)
    reason = truth["expected_reason"].to_numpy(zero_copy_only=False)
    quasars = np.flatnonzero(status == "kept")
    others = np.flatnonzero(np.isin(reason, NON_QUASAR_REASONS))
    rng = np.random.default_rng(seed)
    n_qso = max(1, round(qso_fraction * rows))
    written = []
    with fits.open(source.coadd_paths[0]) as coadd, fits.open(source.redrock_paths[0]) as redrock:
        source_tid = coadd["FIBERMAP"].data["TARGETID"]
        redshifts = redrock["REDSHIFTS"].data
        rr_row = {int(t): i for i, t in enumerate(redshifts["TARGETID"])}
        for i in range(files):
            healpix = FIRST_PIXEL + i
            pick = np.concatenate(
                [rng.choice(quasars, n_qso, replace=n_qso > quasars.size), rng.choice(others, rows - n_qso)]
            )
            rng.shuffle(pick)
            tid = np.where(source_tid[pick] > 0, (i + 1) * 10**7 + np.arange(rows), source_tid[pick])
            paths = healpix_coadd(str(root), DR1_SHAPED, "main", "dark", healpix)
            Path(paths.coadd).parent.mkdir(parents=True, exist_ok=True)
            hdus: list[fits.hdu.base.ExtensionHDU] = []
            for hdu in coadd:
                if hdu.name == "PRIMARY":
                    header = hdu.header.copy()
                    header["HPXPIXEL"], header["SPGRPVAL"] = healpix, healpix
                    hdus.append(fits.PrimaryHDU(header=header))
                elif hdu.name in ("FIBERMAP", "SCORES"):
                    table = hdu.data[pick].copy()
                    table["TARGETID"] = tid
                    hdus.append(fits.BinTableHDU(table, header=hdu.header, name=hdu.name))
                elif hdu.name == "EXP_FIBERMAP" or hdu.name.endswith("WAVELENGTH"):
                    hdus.append(hdu.copy())
                else:
                    data = np.ascontiguousarray(hdu.data[pick])
                    hdus.append(fits.ImageHDU(data, header=hdu.header, name=hdu.name, uint=True))
            fits.HDUList(hdus).writeto(paths.coadd, overwrite=True, checksum=True)
            rr = redshifts[[rr_row[int(t)] for t in source_tid[pick]]].copy()
            rr["TARGETID"] = tid
            header = redrock[0].header.copy()
            header["HPXPIXEL"] = healpix
            rr_hdus = fits.HDUList([fits.PrimaryHDU(header=header), fits.BinTableHDU(rr, name="REDSHIFTS")])
            rr_hdus.writeto(paths.redrock, overwrite=True, checksum=True)
            written.append(paths)
    return written


def evict(coadds: Sequence[HealpixCoadd]) -> None:
    """Drop the files from the page cache, so that the next read comes from the disk."""
    for c in coadds:
        for path in (c.coadd, c.redrock):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def ours(coadds: Sequence[HealpixCoadd]) -> tuple[int, float]:
    """(input spectra, CPU seconds) of read + merge, nothing written."""
    n, start = 0, time.process_time()
    for c in coadds:
        n += read_spectra_file(c.coadd, c.redrock, release="bench").ledger.num_rows
    return n, time.process_time() - start


def step(coadds: Sequence[HealpixCoadd], out: Path) -> tuple[int, float, float, float]:
    """The ``raw_spectra`` partition step on every file (read, merge, Parquet + ledger written, the header
    row count): (input spectra, CPU seconds, wall seconds, MB read from disk)."""
    n, before = 0, resource.getrusage(resource.RUSAGE_SELF).ru_inblock
    start, wall = time.process_time(), time.perf_counter()
    for c in coadds:
        summary = ingest_healpix_coadd(
            c, release="bench", out=out / f"{c.healpix}.parquet", ledger_out=out / f"{c.healpix}-ledger.parquet"
        )
        n += summary.rows_in
    cpu, wall = time.process_time() - start, time.perf_counter() - wall
    read_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_inblock - before) * 512 / 1e6
    return n, cpu, wall, read_mb


def peer_by_file(coadds: Sequence[HealpixCoadd], out: Path, files: int) -> tuple[int, float]:
    """desispec read_spectra + coadd_cameras of the whole file (it loops over spectra inside), Parquet."""
    from desispec.coaddition import coadd_cameras
    from desispec.io import read_spectra

    n, tables = 0, []
    t0 = time.process_time()
    for c in coadds[:files]:
        merged = coadd_cameras(read_spectra(c.coadd))
        flux, ivar = merged.flux["brz"].astype(np.float32), merged.ivar["brz"].astype(np.float32)
        tables.append(
            pa.table(
                {
                    "TARGETID": np.asarray(merged.fibermap["TARGETID"], np.int64),
                    "flux": pa.FixedSizeListArray.from_arrays(pa.array(flux.ravel()), flux.shape[1]),
                    "ivar": pa.FixedSizeListArray.from_arrays(pa.array(ivar.ravel()), ivar.shape[1]),
                }
            )
        )
        n += len(flux)
    write_table_atomic(pa.concat_tables(tables), out / "peer-by-file.parquet")
    return n, time.process_time() - t0


def peer(coadds: Sequence[HealpixCoadd], out: Path, limit: int) -> tuple[int, float]:
    """desispec read_spectra + coadd_cameras one spectrum at a time, rows appended to Parquet."""
    from desispec.coaddition import coadd_cameras
    from desispec.io import read_spectra

    n, rows = 0, []
    t0 = time.process_time()
    for c in coadds:
        spectra = read_spectra(c.coadd)
        for i in range(spectra.num_spectra()):
            merged = coadd_cameras(spectra[i])
            rows.append(
                {
                    "TARGETID": int(spectra.fibermap["TARGETID"][i]),
                    "flux": merged.flux["brz"][0].astype(np.float32),
                    "ivar": merged.ivar["brz"][0].astype(np.float32),
                }
            )
            n += 1
            if n >= limit:
                break
        if n >= limit:
            break
    write_table_atomic(pa.Table.from_pylist(rows), out / "peer.parquet")
    return n, time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", help="DESI archive root (default: write the demo release)")
    parser.add_argument("--dr1-shaped", action="store_true", help="write and read DR1-shaped coadds instead")
    parser.add_argument("--files", type=int, default=8, help="DR1-shaped files")
    parser.add_argument("--rows", type=int, default=500, help="targets per DR1-shaped file")
    parser.add_argument("--qso-fraction", type=float, default=0.1, help="quasars among a DR1-shaped file's rows")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (the median is printed)")
    parser.add_argument("--peer-spectra", type=int, help="input spectra for the desispec peer (default: one file's)")
    parser.add_argument("--peer-files", type=int, default=0, help="files for the per-file desispec peer (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.archive or Path(tmp) / "archive")
        if args.dr1_shaped:
            coadds = write_dr1_shaped(root, files=args.files, rows=args.rows, qso_fraction=args.qso_fraction)
        else:
            if not args.archive:
                write_demo_release(root)
            coadds = find_healpix_coadds(str(root), list_specprods(str(root))[0])
        out = Path(tmp) / "out"
        ours(coadds[:1])  # warm the page cache, imports and compiled kernels
        reads, steps, colds = [], [], []
        for _ in range(args.repeats):
            reads.append(ours(coadds))
            steps.append(step(coadds, out))
            if args.dr1_shaped:
                evict(coadds)
                colds.append(step(coadds, out))
        n, read_s = sorted(reads, key=lambda r: r[1])[len(reads) // 2]
        _, step_s, _, _ = sorted(steps, key=lambda r: r[1])[len(steps) // 2]
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        limit = args.peer_spectra or (args.rows if args.dr1_shaped else 200)
        pn, peer_s = peer(coadds, out, limit)
        fn, file_s = peer_by_file(coadds, out, args.peer_files) if args.peer_files else (0, 0.0)
    rows = [
        ("desi-qad read + merge (no write)", n, read_s),
        ("desi-qad raw_spectra step", n, step_s),
    ]
    if colds:
        _, cold_s, cold_wall, cold_mb = sorted(colds, key=lambda r: r[1])[len(colds) // 2]
        rows.append(("desi-qad raw_spectra step, cold", n, cold_s))
    rows.append(("desispec per-spectrum loop (peer)", pn, peer_s))
    if fn:
        rows.append(("desispec coadd_cameras per file (peer)", fn, file_s))
    quasars = "" if not args.dr1_shaped else f", {args.qso_fraction:.0%} quasars"
    print(f"{len(coadds)} files, {n} input spectra{quasars}; median of {args.repeats} passes")
    print(f"{'path':<38}{'spectra':>9}{'cpu s':>9}{'spectra/s/core':>16}")
    for name, count, secs in rows:
        print(f"{name:<38}{count:>9}{secs:>9.2f}{count / secs:>16.0f}")
    if colds:
        print(
            f"cold: {n / cold_wall:.0f} spectra/s wall, {cold_mb:.0f} MB read from disk "
            f"({cold_mb * 1e3 / n:.0f} kB per input spectrum)"
        )
    for label, rate in (("per-spectrum", pn / peer_s), ("per-file", fn / file_s if fn else 0.0)):
        if rate:
            print(
                f"speed-up over the {label} peer: {(n / step_s) / rate:.0f}x (step), {(n / read_s) / rate:.0f}x (read)"
            )
    print(f"peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
