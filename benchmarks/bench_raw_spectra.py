"""Throughput of ``raw_spectra`` (read + merge + write Parquet) against desispec's per-spectrum loop.

    python benchmarks/bench_raw_spectra.py [--archive DIR] [--peer-spectra N]

Without ``--archive`` it writes the default demo release to a temporary folder first. Times are CPU
seconds of this process (``time.process_time``), single-threaded, so spectra/s is per core. The peer
is the straightforward loop a user would write: ``desispec.io.read_spectra`` per file, then
``coadd_cameras`` per spectrum, appended row by row to a Parquet table; it runs on the first
``--peer-spectra`` input spectra (it is ~100× slower) and its rate is per input spectrum as ours is.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DESI_LOGLEVEL", "WARNING")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from qad_assets.demo.release import write_demo_release  # noqa: E402
from qad_assets.science.io.archive import find_healpix_coadds, list_specprods  # noqa: E402
from qad_assets.science.io.parquet_store import write_table_atomic  # noqa: E402
from qad_assets.science.io.spectra_file import read_spectra_file  # noqa: E402


def ours(coadds, out: Path) -> tuple[int, float, float]:
    """(input spectra, read+merge seconds, total seconds incl. Parquet write)."""
    n, read_s, total_s = 0, 0.0, 0.0
    for c in coadds:
        t0 = time.process_time()
        result = read_spectra_file(c.coadd, c.redrock, release="bench")
        t1 = time.process_time()
        write_table_atomic(result.spectra, out / f"{c.healpix}.parquet")
        write_table_atomic(result.ledger, out / f"{c.healpix}-ledger.parquet")
        t2 = time.process_time()
        n += result.ledger.num_rows
        read_s += t1 - t0
        total_s += t2 - t0
    return n, read_s, total_s


def peer(coadds, out: Path, limit: int) -> tuple[int, float]:
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
    parser.add_argument("--peer-spectra", type=int, default=200, help="input spectra for the desispec peer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.archive or Path(tmp) / "archive")
        if not args.archive:
            write_demo_release(root)
        coadds = find_healpix_coadds(str(root), list_specprods(str(root))[0])
        out = Path(tmp) / "out"
        ours(coadds[:1], out)  # warm the page cache and imports
        n, read_s, total_s = ours(coadds, out)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        pn, peer_s = peer(coadds, out, args.peer_spectra)
    rows = [
        ("desi-qad read + merge (no write)", n, read_s),
        ("desi-qad read + merge + write", n, total_s),
        ("desispec per-spectrum loop (peer)", pn, peer_s),
    ]
    print(f"{'path':<36}{'spectra':>9}{'cpu s':>9}{'spectra/s/core':>16}")
    for name, count, secs in rows:
        print(f"{name:<36}{count:>9}{secs:>9.2f}{count / secs:>16.0f}")
    print(f"speed-up over the peer: {(n / total_s) / (pn / peer_s):.0f}x; peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
