"""One container for a batch of spectra: arrays on one wavelength grid plus per-spectrum columns.

On the model of ``desispec.spectra.Spectra``: training, scoring, validation and the service all pass
a :class:`Spectra` instead of five to seven parallel arrays, and slice or select it as one thing.
Plain numpy/pyarrow, no Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from qad_assets.science.spectra.snr import spectrum_snr

Rows = slice | np.ndarray | Sequence[int]


@dataclass(frozen=True, eq=False)
class Spectra:
    """``N`` spectra on the grid ``wave``: flux and ivar ``(N, P)`` float32 (ivar = 0 where there is no
    data), ``targetid`` (N,) int64, ``z`` (N,) float64, ``columns`` of other per-spectrum values
    (first axis N: coverage, flags, request index, …) and ``meta`` for the batch (release, …).
    """

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    targetid: np.ndarray
    z: np.ndarray
    columns: Mapping[str, np.ndarray] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, p = len(self.targetid), len(self.wave)
        if self.flux.shape != (n, p) or self.ivar.shape != (n, p):
            raise ValueError(f"flux {self.flux.shape} and ivar {self.ivar.shape} must be ({n} spectra, {p} pixels)")
        for name, values in {"z": self.z, **self.columns}.items():
            if len(values) != n:
                raise ValueError(f"column {name} has {len(values)} rows for {n} spectra")

    def __len__(self) -> int:
        return len(self.targetid)

    def __getitem__(self, rows: Rows) -> Spectra:
        """The spectra at ``rows`` (a slice, a boolean mask or indices), as a new container."""
        rows = rows if isinstance(rows, slice) else np.asarray(rows)
        return replace(
            self,
            flux=self.flux[rows],
            ivar=self.ivar[rows],
            targetid=self.targetid[rows],
            z=self.z[rows],
            columns={name: values[rows] for name, values in self.columns.items()},
        )

    @cached_property
    def snr(self) -> np.ndarray:
        """Median flux·√ivar per pixel (:func:`~qad_assets.science.spectra.snr.spectrum_snr`), float64 (N,)."""
        return spectrum_snr(self.flux, self.ivar, self.wave)

    def with_columns(self, **columns: np.ndarray) -> Spectra:
        return replace(self, columns={**self.columns, **columns})

    @staticmethod
    def concat(parts: Sequence[Spectra]) -> Spectra:
        """The spectra of ``parts`` one after the other (same grid, same columns; meta of the first)."""
        first = parts[0]
        return replace(
            first,
            flux=np.concatenate([p.flux for p in parts]),
            ivar=np.concatenate([p.ivar for p in parts]),
            targetid=np.concatenate([p.targetid for p in parts]),
            z=np.concatenate([p.z for p in parts]),
            columns={name: np.concatenate([p.columns[name] for p in parts]) for name in first.columns},
        )

    @classmethod
    def empty(cls, wave: np.ndarray) -> Spectra:
        npix = len(wave)
        return cls(
            wave,
            np.empty((0, npix), np.float32),
            np.empty((0, npix), np.float32),
            np.empty(0, np.int64),
            np.empty(0, np.float64),
        )

    @classmethod
    def from_table(cls, table: pa.Table | pa.RecordBatch, wave: np.ndarray, columns: Sequence[str] = ()) -> Spectra:
        """From a product table with TARGETID, Z and fixed-size-list ``flux``/``ivar`` (zero-copy where it
        can be), plus the named per-spectrum ``columns``.
        """
        return cls(
            wave=wave,
            flux=list_to_numpy(table.column("flux"), np.float32),
            ivar=list_to_numpy(table.column("ivar"), np.float32),
            targetid=table.column("TARGETID").to_numpy().astype(np.int64, copy=False),
            z=table.column("Z").to_numpy().astype(np.float64, copy=False),
            columns={name: table.column(name).to_numpy(zero_copy_only=False) for name in columns},
        )


def list_to_numpy(column: pa.ChunkedArray | pa.Array, dtype: type | None = None) -> np.ndarray:
    """A fixed-size-list column as an ``(N, width)`` numpy array, zero-copy for a single float chunk."""
    if isinstance(column, pa.ChunkedArray):  # combine_chunks copies even a single chunk
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
    return values if dtype is None else values.astype(dtype, copy=False)


def numpy_to_list(values: np.ndarray) -> pa.FixedSizeListArray:
    """``(N, width)`` numpy → a fixed-size-list Arrow array without Python loops (zero-copy for floats)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1)), values.shape[1])
