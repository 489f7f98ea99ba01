"""Rest-frame spectra normalized by a robust per-spectrum scale, and the ``normalized_spectra`` table.

Resampled flux stays in the observed flux-density unit of the input (1e-17 erg/s/cm²/Å per *observed*
Å): the normalization divides by a per-spectrum scale anyway, and keeping the unit makes
``flux*scale`` the exact desispec-resampled observed spectrum.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import torch

from qad_assets.science.spectra.arms import BRZ_WAVE
from qad_assets.science.spectra.artifacts import spike_pull
from qad_assets.science.spectra.container import Spectra, numpy_to_list
from qad_assets.science.spectra.resampling import resample_to_rest
from qad_assets.science.spectra.rest_frame import MIN_GOOD_REST_PIXELS, NORM_MIN_WAVE, REST_GRID, RestFrameGrid
from qad_assets.science.spectra.snr import masked_median


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


#: Per-spectrum columns :func:`normalize_batch` adds: what the scale was and where each spectrum has data.
NORMALIZATION_COLUMNS: dict[str, type] = {
    "scale": np.float64,  # observed-unit flux density that became 1
    "coverage_min": np.float32,  # rest Å of the first pixel with data (NaN if none)
    "coverage_max": np.float32,  # rest Å of the last pixel with data (NaN if none)
    "good_fraction": np.float32,  # fraction of the observed pixels that were good
    "low_coverage": np.bool_,  # fewer than MIN_GOOD_REST_PIXELS good rest pixels
    "spike_pull": np.float32,  # largest isolated one- or two-pixel spike, in σ (observed frame)
}

#: Spectra per step of :func:`normalize_batch` on a CPU: work arrays stay cache-sized and reuse memory.
CPU_BATCH_ROWS = 256


def normalize_batch(
    observed: Spectra, grid: RestFrameGrid = REST_GRID, *, device: str | torch.device | None = None
) -> Spectra:
    """Observed spectra → rest frame on ``grid`` → normalized, with the :data:`NORMALIZATION_COLUMNS`
    added to the input's columns. A pixel has data where ivar > 0 (ingestion zeroes the others).
    """
    n = len(observed)
    rest = Spectra(
        wave=grid.wave,
        flux=np.empty((n, grid.npix), np.float32),
        ivar=np.empty((n, grid.npix), np.float32),
        targetid=observed.targetid,
        z=observed.z,
        columns={**observed.columns, **{name: np.empty(n, kind) for name, kind in NORMALIZATION_COLUMNS.items()}},
        meta=observed.meta,
    )
    on_cpu = device is None or torch.device(device).type == "cpu"
    step = CPU_BATCH_ROWS if on_cpu else max(n, 1)
    for lo in range(0, n, step):
        _normalize_rows(observed[lo : lo + step], rest, slice(lo, lo + step), grid, device)
    return rest


def _normalize_rows(
    observed: Spectra, rest: Spectra, rows: slice, grid: RestFrameGrid, device: str | torch.device | None
) -> None:
    """Fill ``rest[rows]``: resample, normalize, and measure where each spectrum has data."""
    good = observed.ivar > 0
    rest_flux, rest_ivar = resample_to_rest(
        observed.wave, observed.flux, observed.ivar, good, observed.z, grid, device=device
    )
    column = rest.columns
    rest.flux[rows], rest.ivar[rows], column["scale"][rows] = normalize(rest_flux, rest_ivar, grid)
    covered = rest_ivar > 0
    n_covered = covered.sum(axis=1)
    none = n_covered == 0
    wave = grid.wave.astype(np.float32)
    first = np.argmax(covered, axis=1)
    last = grid.npix - 1 - np.argmax(covered[:, ::-1], axis=1)
    column["coverage_min"][rows] = np.where(none, np.nan, wave[first])
    column["coverage_max"][rows] = np.where(none, np.nan, wave[last])
    column["good_fraction"][rows] = good.mean(axis=1)
    column["low_coverage"][rows] = n_covered < MIN_GOOD_REST_PIXELS
    column["spike_pull"][rows] = spike_pull(observed.flux, observed.ivar)


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
            ("spike_pull", pa.float32()),
            ("snr_b", pa.float32()),
            ("snr_r", pa.float32()),
            ("snr_z", pa.float32()),
            ("flux", spectrum),
            ("ivar", spectrum),
        ],
        metadata={GRID_METADATA_KEY: json.dumps(grid.to_dict()).encode()},
    )


NORMALIZED_SCHEMA = normalized_schema(REST_GRID)


def normalized_table(
    raw: pa.Table, grid: RestFrameGrid = REST_GRID, *, device: str | torch.device | None = None
) -> pa.Table:
    """A ``raw_spectra`` table (TARGETID, Z, snr_*, brz flux/ivar lists) → ``normalized_spectra``."""
    rest = normalize_batch(Spectra.from_table(raw, BRZ_WAVE), grid, device=device)
    columns = {
        "TARGETID": raw["TARGETID"],
        "Z": raw["Z"],
        **rest.columns,
        **{name: raw[name] for name in ("snr_b", "snr_r", "snr_z")},
        "flux": numpy_to_list(rest.flux),
        "ivar": numpy_to_list(rest.ivar),
    }
    schema = normalized_schema(grid)
    return pa.Table.from_arrays([_as_column(columns[f.name], f.type) for f in schema], schema=schema)


def _as_column(values: pa.ChunkedArray | pa.Array | np.ndarray, type_: pa.DataType) -> pa.ChunkedArray:
    if isinstance(values, np.ndarray):
        values = pa.array(values, type_)
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values], type_)
    return values.cast(type_)
