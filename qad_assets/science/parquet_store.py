"""Parquet files written atomically and reproducibly.

A product file is written to a temporary name in its own folder and renamed over the target, so a
reader (or a crashed run) never sees half a file, and rerunning a partition replaces it with the same
bytes: the writer options are fixed here and nothing time-dependent goes into the file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WRITE_OPTIONS = {
    "compression": "zstd",
    "compression_level": 1,
    "use_dictionary": ["release", "survey", "program", "Z_SOURCE", "status", "file"],
    "write_statistics": ["TARGETID"],
    "row_group_size": 4096,
}


def write_table_atomic(table: pa.Table, path: Path) -> Path:
    """Write ``table`` to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, **WRITE_OPTIONS)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """Read one product file (memory-mapped, no thread pool: partitions are already parallel)."""
    return pq.read_table(path, columns=columns, memory_map=True, use_threads=False)
