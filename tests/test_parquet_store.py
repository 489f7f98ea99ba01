"""Product files: atomic, byte-for-byte reproducible, and read back with their exact schema."""

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from qad_assets.science.io.parquet_store import iter_tables, read_metadata, read_table, write_table_atomic
from qad_assets.science.io.spectra_file import RAW_SPECTRA_SCHEMA
from qad_assets.science.spectra.arms import NPIX


def raw_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    columns = {}
    for field in RAW_SPECTRA_SCHEMA:
        if pa.types.is_fixed_size_list(field.type):
            kind = field.type.value_type
            values = (
                rng.normal(size=n * NPIX).astype(np.float32) if kind == pa.float32() else rng.random(n * NPIX) > 0.2
            )
            columns[field.name] = pa.FixedSizeListArray.from_arrays(pa.array(values, kind), type=field.type)
        elif pa.types.is_string(field.type):
            columns[field.name] = pa.array(["demo"] * n)
        else:
            columns[field.name] = pa.array(rng.integers(1, 10**6, n)).cast(field.type)
    return pa.Table.from_pydict(columns, schema=RAW_SPECTRA_SCHEMA.with_metadata({"grid": "brz"}))


def test_round_trip_keeps_the_schema_values_and_metadata(tmp_path: Path) -> None:
    table = raw_table(50)
    path = write_table_atomic(table, tmp_path / "p.parquet")
    back = read_table(path, RAW_SPECTRA_SCHEMA)
    assert back.schema.equals(RAW_SPECTRA_SCHEMA)
    assert back.equals(table.cast(RAW_SPECTRA_SCHEMA))
    assert read_metadata(path)["grid"] == "brz"
    assert read_table(path, RAW_SPECTRA_SCHEMA, columns=["TARGETID", "Z"]).column_names == ["TARGETID", "Z"]


def test_rewriting_gives_identical_bytes_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "p.parquet"
    first = write_table_atomic(raw_table(20), path).read_bytes()
    second = write_table_atomic(raw_table(20), path).read_bytes()
    assert first == second
    assert [p.name for p in path.parent.iterdir()] == ["p.parquet"]


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_table_atomic(raw_table(5), tmp_path / "p.parquet")
    before = path.read_bytes()

    def disk_full(self, file, **kwargs) -> None:
        Path(file).write_bytes(b"PAR1 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_table_atomic(raw_table(6), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.parquet"]


def test_streaming_covers_every_row_once_in_bounded_chunks(tmp_path: Path) -> None:
    path = write_table_atomic(raw_table(300), tmp_path / "p.parquet")
    chunks = list(iter_tables(path, RAW_SPECTRA_SCHEMA, columns=["TARGETID", "flux"], rows=64))
    assert max(c.num_rows for c in chunks) <= 64
    assert pa.concat_tables(chunks).equals(read_table(path, RAW_SPECTRA_SCHEMA, columns=["TARGETID", "flux"]))
