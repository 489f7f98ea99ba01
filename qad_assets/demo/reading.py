"""A written demo release read back exactly as the pipeline reads it, with its truth per spectrum."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from qad_assets.demo.release import DemoRelease
from qad_assets.science.io.parquet_store import SPECTRUM_COLUMNS, read_table
from qad_assets.science.io.spectra_file import read_spectra_file
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.normalization import normalized_table
from qad_assets.science.spectra.rest_frame import REST_GRID


def read_demo_spectra(demo: DemoRelease) -> tuple[Spectra, np.ndarray]:
    """Every kept quasar of a demo release, normalized as the pipeline normalizes it, and its truth
    ``anomaly_class`` per row ('' for a normal quasar): the fixture of tests and benchmarks.
    """
    table = pa.concat_tables(
        normalized_table(read_spectra_file(c, r, release=demo.release).spectra)
        for c, r in zip(demo.coadd_paths, demo.redrock_paths, strict=True)
    )
    truth = read_table(demo.truth_path, columns=["TARGETID", "anomaly_class"])
    class_of = dict(zip(truth["TARGETID"].to_pylist(), truth["anomaly_class"].to_pylist(), strict=True))
    classes = np.asarray([class_of[t] or "" for t in table["TARGETID"].to_pylist()])
    return Spectra.from_table(table, REST_GRID.wave, columns=SPECTRUM_COLUMNS), classes
