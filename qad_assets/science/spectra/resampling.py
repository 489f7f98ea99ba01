"""Flux-conserving resampling of observed spectra onto the rest-frame grid (``desispec.interpolation``).

Batch form of ``desispec.interpolation.resample_flux``: a fused numba kernel on CPU, the same integrals
as torch array ops on a GPU. Vectorized over spectra; plain numpy/torch, no Dagster.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import numpy as np
import torch

from qad_assets.science.spectra.rest_frame import REST_GRID, RestFrameGrid

try:  # the fused CPU kernel; without numba the torch path does the same work, slower on CPU
    import numba
except ImportError:  # pragma: no cover - numba is present wherever desispec is
    numba = None


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
