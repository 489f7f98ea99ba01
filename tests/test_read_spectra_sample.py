"""The release-wide sample the scorer and the validation harness hold: bounded, and spread over every file."""

from pathlib import Path

import numpy as np
import pyarrow as pa

from qad_assets.science.io.parquet_store import read_spectra, write_table_atomic
from qad_assets.science.spectra.container import numpy_to_list

WAVE = np.linspace(1000.0, 3000.0, 8)


def write_partition(path: Path, targetids: np.ndarray) -> Path:
    n = len(targetids)
    flux = np.tile(targetids[:, None].astype(np.float32), (1, WAVE.size))
    table = pa.table(
        {
            "TARGETID": pa.array(targetids, pa.int64()),
            "Z": pa.array(np.full(n, 2.0)),
            "scale": pa.array(np.ones(n, np.float32)),
            "spike_pull": pa.array(np.zeros(n, np.float32)),
            "flux": numpy_to_list(flux),
            "ivar": numpy_to_list(np.ones_like(flux)),
        }
    )
    return write_table_atomic(table, path)


def test_sample_is_bounded_and_spans_every_file(tmp_path: Path) -> None:
    paths = [write_partition(tmp_path / f"p{i}.parquet", np.arange(100 * i, 100 * i + 100)) for i in range(5)]
    everything = read_spectra(paths, max_rows=500, wave=WAVE)
    assert np.array_equal(everything.targetid, np.arange(500))
    assert np.array_equal(everything.flux[:, 0], everything.targetid.astype(np.float32))
    sample = read_spectra(paths, max_rows=120, wave=WAVE)
    assert len(sample) <= 120
    assert np.array_equal(sample.targetid, np.arange(0, 500, 5))  # every 5th row of every file
    assert np.array_equal(sample.flux[:, -1], sample.targetid.astype(np.float32))
    assert np.array_equal(sample.columns["scale"], np.ones(len(sample), np.float32))
