"""Rest-frame spectra normalized by a robust per-spectrum scale, and the ``normalized_spectra`` table.

Resampled flux stays in the observed flux-density unit of the input (1e-17 erg/s/cm²/Å per *observed*
Å): the normalization divides by a per-spectrum scale anyway, and keeping the unit makes
``flux*scale`` the exact desispec-resampled observed spectrum.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from qad_assets.science.spectra.arms import BRZ_WAVE
from qad_assets.science.spectra.resampling import resample_to_rest
from qad_assets.science.spectra.rest_frame import MIN_GOOD_REST_PIXELS, NORM_MIN_WAVE, REST_GRID, RestFrameGrid


def normalize(
    flux: np.ndarray,
    ivar: np.ndarray,
    grid: RestFrameGrid = REST_GRID,
    *,
    min_wave: float = NORM_MIN_WAVE,
    min_pixels: int = 50,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Divide each rest-frame spectrum by a robust scale: ``(flux/scale, ivar·scale², scale)``.

    The scale is the median flux over good pixels redward of ``min_wave`` (1250 Å: no Lyα forest, no
    Lyα peak), which every redshift covers (z = 5 still reaches 1637 Å rest), unlike any fixed
    continuum window. Fallbacks, in order: the median over all good pixels when fewer than
    ``min_pixels`` are redward; the median of ``|flux|`` when the median is not positive (noise-
    dominated); 1 when nothing is good. ``scale`` (float64) undoes it: ``flux·scale``, ``ivar/scale²``.
    """
    good = ivar > 0
    select = good & (grid.wave >= min_wave)
    few = select.sum(axis=1) < min_pixels
    select[few] = good[few]
    scale = masked_median(flux, select)
    bad = ~(scale > 0)
    if bad.any():
        scale[bad] = masked_median(np.abs(flux[bad]), select[bad])
    scale[~(scale > 0)] = 1.0
    inverse = (1.0 / scale).astype(np.float32)[:, None]
    return flux * inverse, ivar * (scale**2).astype(np.float32)[:, None], scale


def masked_median(values: np.ndarray, select: np.ndarray) -> np.ndarray:
    """Row medians (float64) of ``values[select]``, NaN for empty rows: one sort with NaN sorted last."""
    ordered = np.sort(np.where(select, values, np.nan), axis=1)
    count = select.sum(axis=1)
    rows = np.arange(values.shape[0])
    low = ordered[rows, np.maximum(count - 1, 0) // 2].astype(np.float64)
    high = ordered[rows, np.minimum(count // 2, values.shape[1] - 1)].astype(np.float64)
    return np.where(count > 0, 0.5 * (low + high), np.nan)


@dataclass(frozen=True)
class NormalizedBatch:
    """Rest-frame, normalized spectra of one partition, with what the scale and coverage were."""

    flux: np.ndarray  # (N, npix) float32, flux / scale
    ivar: np.ndarray  # (N, npix) float32, ivar · scale²; 0 where no good data
    scale: np.ndarray  # (N,) float64, observed-unit flux density that became 1
    coverage_min: np.ndarray  # (N,) float32, rest Å of the first pixel with data (NaN if none)
    coverage_max: np.ndarray  # (N,) float32, rest Å of the last pixel with data (NaN if none)
    good_fraction: np.ndarray  # (N,) float32, fraction of the observed pixels that were good
    low_coverage: np.ndarray  # (N,) bool, fewer than MIN_GOOD_REST_PIXELS good rest pixels

    @classmethod
    def empty(cls, n: int, npix: int) -> NormalizedBatch:
        """Uninitialised arrays for ``n`` spectra, to be filled a slice at a time."""
        return cls(
            flux=np.empty((n, npix), np.float32),
            ivar=np.empty((n, npix), np.float32),
            scale=np.empty(n),
            coverage_min=np.empty(n, np.float32),
            coverage_max=np.empty(n, np.float32),
            good_fraction=np.empty(n, np.float32),
            low_coverage=np.empty(n, bool),
        )


#: Spectra per step of :func:`normalize_batch` on a CPU: work arrays stay cache-sized and reuse memory.
CPU_BATCH_ROWS = 256


def normalize_batch(
    flux: np.ndarray,
    ivar: np.ndarray,
    good: np.ndarray,
    z: np.ndarray,
    grid: RestFrameGrid = REST_GRID,
    *,
    obs_wave: np.ndarray = BRZ_WAVE,
    device: str | torch.device | None = None,
) -> NormalizedBatch:
    """Observed ``brz`` spectra → rest frame → normalized, plus per-spectrum coverage figures."""
    n = len(z)
    batch = NormalizedBatch.empty(n, grid.npix)
    on_cpu = device is None or torch.device(device).type == "cpu"
    step = CPU_BATCH_ROWS if on_cpu else max(n, 1)
    for lo in range(0, n, step):
        rows = slice(lo, lo + step)
        _normalize_rows(batch, rows, flux[rows], ivar[rows], good[rows], z[rows], grid, obs_wave, device)
    return batch


def _normalize_rows(
    batch: NormalizedBatch,
    rows: slice,
    flux: np.ndarray,
    ivar: np.ndarray,
    good: np.ndarray,
    z: np.ndarray,
    grid: RestFrameGrid,
    obs_wave: np.ndarray,
    device: str | torch.device | None,
) -> None:
    """Fill ``batch[rows]``: resample, normalize, and measure where each spectrum has data."""
    rest_flux, rest_ivar = resample_to_rest(obs_wave, flux, ivar, good, z, grid, device=device)
    batch.flux[rows], batch.ivar[rows], batch.scale[rows] = normalize(rest_flux, rest_ivar, grid)
    covered = rest_ivar > 0
    n_covered = covered.sum(axis=1)
    none = n_covered == 0
    wave = grid.wave.astype(np.float32)
    first = np.argmax(covered, axis=1)
    last = grid.npix - 1 - np.argmax(covered[:, ::-1], axis=1)
    batch.coverage_min[rows] = np.where(none, np.nan, wave[first])
    batch.coverage_max[rows] = np.where(none, np.nan, wave[last])
    batch.good_fraction[rows] = np.asarray(good, bool).mean(axis=1)
    batch.low_coverage[rows] = n_covered < MIN_GOOD_REST_PIXELS


GRID_METADATA_KEY = b"rest_frame_grid"


def normalized_schema(grid: RestFrameGrid = REST_GRID) -> pa.Schema:
    """Schema of the ``normalized_spectra`` Parquet on ``grid`` (the grid rides in the schema metadata)."""
    spectrum = pa.list_(pa.float32(), grid.npix)
    return pa.schema(
        [
            ("TARGETID", pa.int64()),
            ("Z", pa.float64()),
            ("scale", pa.float64()),
            ("coverage_min", pa.float32()),
            ("coverage_max", pa.float32()),
            ("good_fraction", pa.float32()),
            ("low_coverage", pa.bool_()),
            ("snr_b", pa.float32()),
            ("snr_r", pa.float32()),
            ("snr_z", pa.float32()),
            ("flux", spectrum),
            ("ivar", spectrum),
        ],
        metadata={GRID_METADATA_KEY: json.dumps(grid.to_dict()).encode()},
    )


NORMALIZED_SCHEMA = normalized_schema(REST_GRID)


def spectra_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column as an ``(N, width)`` numpy array, zero-copy for float columns."""
    array = (
        (column.chunk(0) if column.num_chunks == 1 else column.combine_chunks())  # combine_chunks copies even one
        if isinstance(column, pa.ChunkedArray)
        else column
    )
    width = array.type.list_size
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), width)


def normalized_table(
    raw: pa.Table, grid: RestFrameGrid = REST_GRID, *, device: str | torch.device | None = None
) -> pa.Table:
    """A ``raw_spectra`` table (TARGETID, Z, snr_*, brz flux/ivar/good lists) → ``normalized_spectra``."""
    batch = normalize_batch(
        spectra_to_numpy(raw["flux"]),
        spectra_to_numpy(raw["ivar"]),
        spectra_to_numpy(raw["good"]),
        raw["Z"].to_numpy(),
        grid,
        device=device,
    )

    def spectra(values: np.ndarray) -> pa.FixedSizeListArray:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), grid.npix)

    schema = normalized_schema(grid)
    columns = [
        raw["TARGETID"],
        raw["Z"],
        batch.scale,
        batch.coverage_min,
        batch.coverage_max,
        batch.good_fraction,
        batch.low_coverage,
        raw["snr_b"],
        raw["snr_r"],
        raw["snr_z"],
        spectra(batch.flux),
        spectra(batch.ivar),
    ]
    return pa.Table.from_arrays([_as_column(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema)


def _as_column(values: pa.ChunkedArray | pa.Array | np.ndarray, type_: pa.DataType) -> pa.ChunkedArray:
    if isinstance(values, np.ndarray):
        values = pa.array(values, type_)
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values], type_)
    return values.cast(type_)
