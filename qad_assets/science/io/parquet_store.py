"""Parquet files written atomically and reproducibly, read back with their Arrow schema.

A product file is written to a temporary name in its own folder and renamed over the target, so a
reader (or a crashed run) never sees half a file, and rerunning a partition replaces it with the same
bytes: the writer options are fixed here and nothing time-dependent goes into the file.

All Parquet I/O goes through polars' native reader and writer: it encodes the fixed-size spectrum
lists ~3× faster than pyarrow's, and mixing pyarrow's Parquet thread pool with polars in one process
aborts the interpreter at exit now and then (apache/arrow#34314, pola-rs/polars#24169).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from qad_assets.science.io.atomic_files import write_atomic
from qad_assets.science.spectra.container import Spectra

COMPRESSION = "lz4"  # noisy float32 spectra barely compress; lz4 costs almost nothing


def write_table_atomic(table: pa.Table, path: Path) -> Path:
    """Write ``table`` (and its schema metadata) to ``path`` atomically."""
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    frame = pl.from_arrow(table)
    return write_atomic(
        path, lambda tmp: frame.write_parquet(tmp, compression=COMPRESSION, statistics=False, metadata=metadata)
    )


def read_table(path: Path, schema: pa.Schema | None = None, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a product file; with ``schema``, cast back to it (polars names list items ``element``)."""
    columns = list(columns) if columns is not None else (schema.names if schema is not None else None)
    table = pl.read_parquet(path, columns=columns, memory_map=True).to_arrow()
    return _cast(table, schema) if schema is not None else table


def iter_tables(
    path: Path, schema: pa.Schema | None = None, columns: Sequence[str] | None = None, rows: int = 4096
) -> Iterator[pa.Table]:
    """Stream a product file in chunks of about ``rows`` rows, so memory stays bounded."""
    columns = list(columns) if columns is not None else (schema.names if schema is not None else None)
    frame = pl.scan_parquet(path)
    if columns is not None:
        frame = frame.select(columns)
    for chunk in frame.collect_batches(chunk_size=rows):
        table = chunk.to_arrow()
        yield _cast(table, schema) if schema is not None else table


def row_count(path: Path) -> int:
    """Rows in a product file, from its footer (no data pages read)."""
    return pl.scan_parquet(path).select(pl.len()).collect().item()


def schema_matches(path: Path, schema: pa.Schema) -> bool:
    """Whether a file holds exactly ``schema``'s columns, in order, with its types (footer only)."""
    expected = pl.from_arrow(schema.empty_table()).schema
    return pl.read_parquet_schema(path) == dict(expected)


def read_metadata(path: Path) -> dict[str, str]:
    """The key-value metadata of a product file (e.g. the rest-frame grid)."""
    return pl.read_parquet_metadata(path)


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    target = pa.schema([schema.field(name) for name in table.column_names], metadata=schema.metadata)
    return table.cast(target)


#: Per-spectrum columns of ``normalized_spectra`` that scoring uses besides the spectrum itself.
SPECTRUM_COLUMNS = ("scale", "spike_pull")


def read_spectra(paths: Sequence[Path], *, max_rows: int, wave: np.ndarray) -> Spectra:
    """At most ``max_rows`` spectra of ``normalized_spectra`` files on the grid ``wave``, with their
    :data:`SPECTRUM_COLUMNS`: every row (in path order) when the release has no more, else every k-th row of
    every file (k = ceil(rows / max_rows)), so that the sample spans the whole release, not its first files.

    The sample is filled into arrays of its final size one file at a time: memory is the sample plus one
    partition, whatever the release's size.
    """
    counts = [row_count(path) for path in paths]
    step = max(1, -(-sum(counts) // max(max_rows, 1)))
    sample: Spectra | None = None
    start = 0
    for path, count in zip(paths, counts, strict=True):
        if count == 0:
            continue
        table = read_table(path, columns=["TARGETID", "Z", *SPECTRUM_COLUMNS, "flux", "ivar"])
        part = Spectra.from_table(table if step == 1 else table.take(np.arange(0, count, step)), wave, SPECTRUM_COLUMNS)
        del table
        sample = sample or _allocate(part, sum(-(-c // step) for c in counts))
        _fill(sample, part, start)
        start += len(part)
    return sample if sample is not None else Spectra.empty(wave)


def _allocate(like: Spectra, n: int) -> Spectra:
    """Uninitialized spectra of ``n`` rows with the arrays and columns of ``like``."""

    def empty(values: np.ndarray) -> np.ndarray:
        return np.empty((n, *values.shape[1:]), values.dtype)

    return replace(
        like,
        flux=empty(like.flux),
        ivar=empty(like.ivar),
        targetid=empty(like.targetid),
        z=empty(like.z),
        columns={name: empty(values) for name, values in like.columns.items()},
    )


def _fill(sample: Spectra, part: Spectra, start: int) -> None:
    rows = slice(start, start + len(part))
    sample.flux[rows], sample.ivar[rows] = part.flux, part.ivar
    sample.targetid[rows], sample.z[rows] = part.targetid, part.z
    for name, values in part.columns.items():
        sample.columns[name][rows] = values
