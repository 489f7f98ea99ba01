"""The rest-frame grid, and DESI spectra moved onto it: resampled, normalized, described.

Everything downstream of ``raw_spectra`` (features, the VAE, anomaly scores) sees quasars on one
log-λ rest-frame grid, defined here once (:data:`REST_GRID`, rationale in ``docs/rest_frame.md``).

Units: wavelengths are vacuum Å. Resampled flux stays in the observed flux-density unit of the input
(1e-17 erg/s/cm²/Å per *observed* Å), only the abscissa is divided by (1+z): the normalization that
follows divides by a per-spectrum scale anyway, and keeping the unit makes ``flux*scale`` the exact
desispec-resampled observed spectrum.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch

from qad_assets.science.desi_io import BRZ_WAVE

try:  # the fused CPU kernel; without numba the torch path does the same work, slower on CPU
    import numba
except ImportError:  # pragma: no cover - numba is present wherever desispec is
    numba = None

C_KMS = 299792.458

#: Rest-frame vacuum wavelengths (Å) of the broad lines the pipeline uses (Vanden Berk et al. 2001, Table 2).
EMISSION_LINES: dict[str, float] = {
    "LyA": 1215.67,
    "NV": 1240.81,
    "SiIV": 1396.76,
    "CIV": 1549.06,
    "CIII]": 1908.73,
    "MgII": 2798.75,
    "Hbeta": 4862.68,
    "Halpha": 6564.61,
}

#: Lyα: blueward of it, intergalactic H I absorbs the quasar light (the Lyα forest).
LYA_FOREST_MAX = EMISSION_LINES["LyA"]

#: Below this rest wavelength the normalization ignores pixels (Lyα forest and the Lyα peak).
NORM_MIN_WAVE = 1250.0

#: A spectrum with fewer good rest pixels than this (≈ a factor 1.8 in λ at 173 km/s per pixel) is
#: flagged ``low_coverage``: too little of the quasar to model.
MIN_GOOD_REST_PIXELS = 1000

REGION_CONTINUUM = 0
REGION_LYA_FOREST = 1
REGION_LYA_NV = 2
REGION_SIIV = 3
REGION_CIV = 4
REGION_CIII = 5
REGION_MGII = 6
REGION_HBETA = 7
REGION_HALPHA = 8

#: Broad-line windows (rest Å, [lo, hi)) of the per-pixel region code; they do not overlap.
REGION_WINDOWS: dict[int, tuple[float, float]] = {
    REGION_LYA_NV: (LYA_FOREST_MAX, 1290.0),
    REGION_SIIV: (1360.0, 1440.0),
    REGION_CIV: (1500.0, 1600.0),
    REGION_CIII: (1850.0, 1970.0),
    REGION_MGII: (2700.0, 2900.0),
    REGION_HBETA: (4760.0, 4950.0),
    REGION_HALPHA: (6400.0, 6720.0),
}


@dataclass(frozen=True)
class RestFrameGrid:
    """A log10-λ spaced rest-frame grid: pixel ``i`` is centred at ``10**(loglam_start + i*loglam_step)`` Å.

    Log spacing makes every pixel the same velocity width, so a broad line spans the same number of
    pixels at every wavelength and every redshift. Bin edges follow ``desispec.interpolation``: midway
    (in λ) between neighbouring centres, the outer ones mirrored.
    """

    loglam_start: float
    loglam_step: float
    npix: int

    @cached_property
    def wave(self) -> np.ndarray:
        """Pixel centres, rest vacuum Å (read-only)."""
        wave = 10.0 ** (self.loglam_start + self.loglam_step * np.arange(self.npix))
        wave.flags.writeable = False
        return wave

    @cached_property
    def edges(self) -> np.ndarray:
        """``npix + 1`` bin edges, rest Å (read-only)."""
        edges = _bin_edges(self.wave)
        edges.flags.writeable = False
        return edges

    @property
    def velocity_step_kms(self) -> float:
        """Pixel width in km/s: c · ln(10) · Δlog10 λ."""
        return C_KMS * math.log(10.0) * self.loglam_step

    def to_dict(self) -> dict[str, Any]:
        """The grid as plain numbers, for asset metadata and the Parquet schema."""
        return {
            "loglam_start": self.loglam_start,
            "loglam_step": self.loglam_step,
            "npix": self.npix,
            "wave_min": float(self.wave[0]),
            "wave_max": float(self.wave[-1]),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RestFrameGrid:
        return cls(float(d["loglam_start"]), float(d["loglam_step"]), int(d["npix"]))


#: The pipeline's rest-frame grid: 800–8450 Å, Δlog10 λ = 2.5e-4 (172.6 km/s), 4096 pixels.
REST_GRID = RestFrameGrid(loglam_start=math.log10(800.0), loglam_step=2.5e-4, npix=4096)


def _bin_edges(centres: np.ndarray) -> np.ndarray:
    """Edges midway between centres, outer edges mirrored (the ``desispec`` resample convention)."""
    edges = np.empty(centres.size + 1)
    edges[1:-1] = 0.5 * (centres[:-1] + centres[1:])
    edges[0] = 1.5 * centres[0] - 0.5 * centres[1]
    edges[-1] = 1.5 * centres[-1] - 0.5 * centres[-2]
    return edges


# --------------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------------


def resample_to_rest(
    obs_wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    good: np.ndarray,
    z: np.ndarray,
    grid: RestFrameGrid = REST_GRID,
    *,
    device: str | torch.device | None = None,
    backend: Literal["auto", "numba", "torch"] = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Resample spectra ``(N, n_obs)`` on a shared observed grid onto ``grid`` in each one's rest frame.

    Per spectrum this is ``desispec.interpolation.resample_flux(grid.wave*(1+z), obs_wave, flux, ivar)``:
    the input is the piecewise-linear function through ``(obs_wave, flux)``, falling to zero one pixel
    beyond each end; output flux is the ivar-weighted bin average ``∫L[f·ivar] / ∫L[ivar]`` and output
    ivar ``∫L[ivar/Δλ]`` over the bin, so inverse variance adds up like counts when bins merge. Flux
    integrals are conserved; an output pixel without good input gets flux 0 and ivar 0, and nothing
    is extrapolated beyond the observed range. A pixel with ``good`` False, ivar ≤ 0 or a non-finite
    value has no weight at all.

    Both backends evaluate float64 prefix integrals of the three piecewise-linear functions at every
    spectrum's de-redshifted bin edges (O(n_obs + npix) per spectrum). ``numba`` (the CPU default)
    fuses that into one pass; ``torch`` does it with cumsum/searchsorted/gather array ops and is what
    runs on a GPU (``device="cuda"``). Returns float32 ``(N, grid.npix)`` numpy arrays.
    """
    obs_wave = np.asarray(obs_wave, np.float64)
    flux, ivar, good = np.asarray(flux), np.asarray(ivar), np.asarray(good, bool)
    opz = 1.0 + np.asarray(z, np.float64).reshape(-1)
    if flux.ndim != 2 or flux.shape != ivar.shape or flux.shape != good.shape or flux.shape[1] != obs_wave.size:
        raise ValueError(f"flux {flux.shape}, ivar {ivar.shape}, good {good.shape} vs {obs_wave.size} pixels")
    if opz.size != flux.shape[0]:
        raise ValueError(f"{opz.size} redshifts for {flux.shape[0]} spectra")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if backend == "auto":
        backend = "numba" if dev.type == "cpu" and _numba_kernel is not None else "torch"
    if backend == "numba":
        if _numba_kernel is None:
            raise ImportError("backend='numba' needs numba")
        out_flux = np.empty((flux.shape[0], grid.npix), np.float32)
        out_ivar = np.empty_like(out_flux)
        nodes = _padded_nodes(obs_wave)
        _numba_kernel(nodes, 1.0 / np.gradient(obs_wave), flux, ivar, good, opz, grid.edges, out_flux, out_ivar)
        return out_flux, out_ivar
    return _resample_torch(obs_wave, flux, ivar, good, opz, grid, dev)


def _padded_nodes(obs_wave: np.ndarray) -> np.ndarray:
    """The observed grid plus one mirrored node at each end, where the input function returns to zero."""
    return np.concatenate([[2 * obs_wave[0] - obs_wave[1]], obs_wave, [2 * obs_wave[-1] - obs_wave[-2]]])


def _resample_kernel(
    x: np.ndarray,
    inv_dx: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    good: np.ndarray,
    opz: np.ndarray,
    rest_edges: np.ndarray,
    out_flux: np.ndarray,
    out_ivar: np.ndarray,
) -> None:  # pragma: no cover - compiled by numba; checked against desispec and the torch path
    """One spectrum at a time: node values, trapezoid prefix sums, then one forward walk over the edges.

    ``F(t) = C_k + y_k·s + (y_{k+1} − y_k)·s²/(2 h_k)`` is the exact integral of the piecewise-linear
    function up to ``t`` in segment ``k`` (``s = t − x_k``); a bin integral is ``F(right) − F(left)``.
    """
    n_nodes = x.size
    n_edges = rest_edges.size
    y = np.zeros((3, n_nodes))
    prefix = np.zeros((3, n_nodes))
    at_edge = np.zeros((3, n_edges))
    for row in range(flux.shape[0]):
        for i in range(n_nodes - 2):
            w = np.float64(ivar[row, i])
            f = np.float64(flux[row, i])
            usable = good[row, i] and w > 0.0 and np.isfinite(w) and np.isfinite(f)
            y[0, i + 1] = f * w if usable else 0.0
            y[1, i + 1] = w if usable else 0.0
            y[2, i + 1] = w * inv_dx[i] if usable else 0.0
        for q in range(3):
            total = 0.0
            for k in range(n_nodes - 1):
                total += 0.5 * (x[k + 1] - x[k]) * (y[q, k] + y[q, k + 1])
                prefix[q, k + 1] = total
        k = 0
        for j in range(n_edges):
            t = rest_edges[j] * opz[row]
            if t <= x[0]:
                for q in range(3):
                    at_edge[q, j] = 0.0
            elif t >= x[n_nodes - 1]:
                for q in range(3):
                    at_edge[q, j] = prefix[q, n_nodes - 1]
            else:
                while x[k + 1] <= t:
                    k += 1
                s = t - x[k]
                s2h = s * s / (2.0 * (x[k + 1] - x[k]))
                for q in range(3):
                    at_edge[q, j] = prefix[q, k] + y[q, k] * s + (y[q, k + 1] - y[q, k]) * s2h
        for j in range(n_edges - 1):
            b = at_edge[1, j + 1] - at_edge[1, j]
            if b > 0.0:
                out_flux[row, j] = (at_edge[0, j + 1] - at_edge[0, j]) / b
                out_ivar[row, j] = at_edge[2, j + 1] - at_edge[2, j]
            else:
                out_flux[row, j] = 0.0
                out_ivar[row, j] = 0.0


_numba_kernel = numba.njit(nogil=True)(_resample_kernel) if numba is not None else None


def _resample_torch(
    obs_wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    good: np.ndarray,
    opz: np.ndarray,
    grid: RestFrameGrid,
    dev: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """The same integrals as array ops: cumsum over nodes, searchsorted + gather at the edges.

    Chunks of spectra bound the float64 work arrays: large on a GPU, cache-sized on a CPU.
    """
    chunk = 2048 if dev.type == "cuda" else 16
    as_t = partial(torch.as_tensor, dtype=torch.float64, device=dev)
    x = as_t(_padded_nodes(obs_wave))
    h = x[1:] - x[:-1]
    inv_dx = as_t(1.0 / np.gradient(obs_wave))
    rest_edges = as_t(np.array(grid.edges))
    out_flux = np.empty((flux.shape[0], grid.npix), np.float32)
    out_ivar = np.empty_like(out_flux)
    for lo in range(0, flux.shape[0], chunk):
        rows = slice(lo, lo + chunk)
        f = torch.tensor(flux[rows], device=dev).double()  # a copy: Arrow-backed input is read-only
        w = torch.tensor(ivar[rows], device=dev).double()
        usable = torch.tensor(good[rows], device=dev) & (w > 0) & torch.isfinite(w) & torch.isfinite(f)
        w = torch.where(usable, w, 0.0)
        pad = torch.zeros((3, w.shape[0], 1), dtype=torch.float64, device=dev)
        y = torch.cat([pad, torch.stack([torch.where(usable, f * w, 0.0), w, w * inv_dx]), pad], dim=2)
        prefix = torch.cumsum(0.5 * (y[..., 1:] + y[..., :-1]) * h, dim=-1)
        prefix = torch.cat([torch.zeros_like(prefix[..., :1]), prefix], dim=-1)
        t = rest_edges[None, :] * as_t(opz[rows])[:, None]
        k = (torch.searchsorted(x, t, right=True) - 1).clamp_(0, h.numel() - 1)
        s = torch.minimum((t - x[k]).clamp_(min=0.0), h[k])
        kk = k.expand(3, -1, -1)
        yk = torch.gather(y, 2, kk)
        slope = torch.gather(y, 2, kk + 1) - yk
        at_edge = torch.gather(prefix, 2, kk) + s * (yk + slope * (s / (2.0 * h[k])))
        a, b, c = at_edge[..., 1:] - at_edge[..., :-1]
        covered = b > 0
        out_flux[rows] = torch.where(covered, a / torch.where(covered, b, 1.0), 0.0).float().cpu().numpy()
        out_ivar[rows] = torch.where(covered, c, 0.0).float().cpu().numpy()
    return out_flux, out_ivar


# --------------------------------------------------------------------------------------------------
# Normalization
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Regions on the grid
# --------------------------------------------------------------------------------------------------


def lya_forest_mask(grid: RestFrameGrid = REST_GRID) -> np.ndarray:
    """True blueward of Lyα (1215.67 Å), where intergalactic H I absorption makes the flux not intrinsic."""
    return grid.wave < LYA_FOREST_MAX


def region_codes(grid: RestFrameGrid = REST_GRID) -> np.ndarray:
    """int8 code per pixel: a broad-line window, else ``REGION_LYA_FOREST`` below Lyα, else continuum."""
    codes = np.full(grid.npix, REGION_CONTINUUM, np.int8)
    codes[lya_forest_mask(grid)] = REGION_LYA_FOREST
    for code, (lo, hi) in REGION_WINDOWS.items():
        codes[(grid.wave >= lo) & (grid.wave < hi)] = code
    return codes


# --------------------------------------------------------------------------------------------------
# The batch the asset normalizes, and its Parquet table
# --------------------------------------------------------------------------------------------------


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
