"""The per-spectrum specification of :mod:`.features`: each feature computed one spectrum at a time with
plain loops, the rows assembled with pandas.

Not used by the pipeline: it is what the vectorised features are tested against
(``tests/test_spectral_features.py``) and benchmarked against (``benchmarks/bench_normalize_features.py``),
so that both compare with one definition. Needs pandas (the ``dev`` extra) when called.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from qad_assets.science.spectra.container import list_to_numpy
from qad_assets.science.spectra.features import (
    AI_MIN_WIDTH,
    BAL_LINES,
    BAL_MAX_ITER,
    BAL_VMAX_AI,
    BAL_VMAX_BI,
    BAL_VMIN,
    BI_MIN_WIDTH,
    CONTINUUM_WINDOWS,
    LINES,
    MIN_BAND_GOOD,
    MIN_PEAK_SNR,
    MIN_SLOPE_SPAN,
    MIN_WINDOW_GOOD,
    SMOOTH_PIXELS,
    pca_eigenvectors,
)
from qad_assets.science.spectra.rest_frame import C_KMS, REST_GRID

if TYPE_CHECKING:
    import pandas as pd


def ref_band_median(wave, flux, good, lo, hi) -> float:
    sel = (wave >= lo) & (wave < hi)
    if good[sel].mean() < MIN_BAND_GOOD:
        return math.nan
    return float(np.median(flux[sel][good[sel]]))


def ref_slope(wave, flux, good) -> float:
    points = []
    for lo, hi in CONTINUUM_WINDOWS:
        m = ref_band_median(wave, flux, good, lo, hi)
        if m > 0:
            points.append((math.log(0.5 * (lo + hi)), math.log(m)))
    if len(points) < 2 or max(p[0] for p in points) - min(p[0] for p in points) < math.log(MIN_SLOPE_SPAN):
        return math.nan
    x, y = np.array(points).T
    return float(np.polyfit(x, y, 1)[0])


def ref_line(wave, flux, ivar, line) -> tuple[float, float, float]:
    good = ivar > 0
    blue = ref_band_median(wave, flux, good, *line.blue)
    red = ref_band_median(wave, flux, good, *line.red)
    sel = (wave >= line.window[0]) & (wave < line.window[1])
    w, f, g, iv = wave[sel], flux[sel], good[sel], ivar[sel]
    xb, xr = sum(line.blue) / 2, sum(line.red) / 2
    cont = blue + (red - blue) * (w - xb) / (xr - xb)
    if not (g.mean() >= MIN_WINDOW_GOOD and np.all(cont > 0)):
        return math.nan, math.nan, math.nan
    widths = np.diff(REST_GRID.edges)[sel]
    ew = np.mean((f / cont - 1)[g] * widths[g]) / np.mean(widths[g]) * widths.sum()
    p = f - cont
    half = SMOOTH_PIXELS // 2
    smooth, noise = np.zeros(len(p)), np.full(len(p), np.inf)
    for i in range(len(p)):
        neighbours = [j for j in range(i - half, i + half + 1) if 0 <= j < len(p) and g[j]]
        if neighbours:
            smooth[i] = np.mean(p[neighbours])
            noise[i] = math.sqrt(np.sum(1 / iv[neighbours])) / len(neighbours)
    top = int(np.argmax(smooth))
    if top in (0, len(p) - 1) or smooth[top] <= MIN_PEAK_SNR * noise[top]:
        return ew, math.nan, math.nan
    a, b, c = smooth[top - 1], smooth[top], smooth[top + 1]
    shift = min(max(0.5 * (a - c) / (a - 2 * b + c), -0.5), 0.5) if a - 2 * b + c < 0 else 0.0
    left = top
    while left >= 0 and smooth[left] >= b / 2:
        left -= 1
    right = top
    while right < len(p) and smooth[right] >= b / 2:
        right += 1
    if left < 0 or right >= len(p):
        return ew, math.nan, math.nan
    x_left = left + (b / 2 - smooth[left]) / (smooth[left + 1] - smooth[left])
    x_right = right - (b / 2 - smooth[right]) / (smooth[right - 1] - smooth[right])
    dlnl = math.log(w[1] / w[0])
    fwhm = C_KMS * dlnl * (x_right - x_left)
    voff = C_KMS * (math.log(w[0]) + dlnl * (top + shift) - math.log(line.ref))
    return ew, fwhm, voff


def ref_window(wave, flux, ivar, model, ref, vmax):
    """Velocities, flux/model and σ/model in a BAL window; masked pixels take the last good value."""
    v = C_KMS * (wave - ref) / ref
    sel = np.flatnonzero((v >= BAL_VMIN) & (v < vmax))
    good = ivar[sel] > 0
    nf, sig = np.empty(len(sel)), np.empty(len(sel))
    last = int(np.argmax(good))
    for k in range(len(sel)):
        if good[k]:
            last = k
        j = sel[last]
        with np.errstate(divide="ignore"):
            nf[k], sig[k] = (flux[j] / model[j], 1 / np.sqrt(ivar[j]) / model[j]) if model[j] > 0 else (np.nan,) * 2
    return sel, v[sel], nf, sig, good


def ref_troughs(nf, sig, v, min_width, ai) -> list[tuple[int, int]]:
    """baltools determine_trough_BI / determine_trough_AI, as a loop."""
    expr = (1 - nf / 0.9) - 0.5 * sig
    if np.median(nf) < np.median(sig):
        return []
    found, vel, start, n = [], 0.0, 0, len(nf)
    for i in range(n):
        if expr[i] > 0:
            if vel == 0:
                start, vel = i, 1e-9
            else:
                vel += v[i] - v[i - 1]
            if i == n - 1 and v[i] - v[start] > min_width:
                found.append((start, i))
            continue
        bridge = (
            i < n - 2 and expr[i + 1] > 0 and i >= 1 and expr[i - 1] > 0 and (not ai or (i >= 2 and expr[i - 2] > 0))
        )
        if bridge and vel != 0:
            vel += v[i] - v[i - 1]
            continue
        if vel != 0 and v[i - 1] - v[start] > min_width:
            end = i - 1
            mean_flux = np.mean(nf[start:end])
            mean_sig = np.mean(sig[start:end]) / math.sqrt(end - start)
            if not ai or 1 - (mean_flux + 3 * mean_sig) / 0.9 > 0:
                found.append((start, end))
        vel = 0.0
    return found


def ref_index(v, nf, troughs, min_width) -> float:
    """baltools calculate_Index summed over troughs."""
    total = 0.0
    for start, end in troughs:
        value, vrange = 0.0, 0.0
        for i in range(start, end - 1):
            vrange += v[i + 1] - v[i]
            if vrange >= min_width:
                value += (v[i + 1] - v[i]) * (1 - nf[i + 1] / 0.9)
        total += max(value, 0.0)
    return total


def ref_bal(wave, flux, ivar) -> dict[str, float]:
    cols, design = pca_eigenvectors(REST_GRID)
    weight = np.where(ivar[cols] > 0, ivar[cols], 0.0)
    keep = np.ones(design.shape[0], bool)
    model = np.zeros(len(wave))
    for _ in range(BAL_MAX_ITER):
        root = np.sqrt(weight * keep)
        coeffs = np.linalg.lstsq(design * root[:, None], flux[cols] * root, rcond=None)[0]
        model[cols] = design @ coeffs
        mask = np.zeros(design.shape[0], bool)
        for ref in BAL_LINES.values():
            sel, v, nf, sig, _ = ref_window(wave, flux, ivar, model, ref, BAL_VMAX_AI)
            for start, end in ref_troughs(nf, sig, v, AI_MIN_WIDTH, ai=True):
                mask[sel[start] - cols.start : sel[end] - cols.start] = True
        if np.array_equal(~mask, keep):
            break
        keep = ~mask
    fit_ok = (weight > 0).sum() >= 50
    good_idx = np.flatnonzero(ivar > 0)
    out = {}
    for name, ref in BAL_LINES.items():
        for kind, vmax, width, ai in (
            ("bi", BAL_VMAX_BI, BI_MIN_WIDTH, False),
            ("ai", BAL_VMAX_AI, AI_MIN_WIDTH, True),
        ):
            sel, v, nf, sig, good = ref_window(wave, flux, ivar, model, ref, vmax)
            covered = (
                fit_ok
                and good_idx.size > 0
                and good_idx[0] <= sel[0]
                and good_idx[-1] >= sel[-1]
                and good.mean() >= MIN_WINDOW_GOOD
                and np.all(model[sel] > 0)
            )
            out[f"{name}_{kind}"] = ref_index(v, nf, ref_troughs(nf, sig, v, width, ai), width) if covered else math.nan
    return out


def reference_features(table: pa.Table) -> pd.DataFrame:
    """Every feature of every spectrum of a ``normalized_spectra`` table, one spectrum at a time."""
    import pandas as pd  # the dev extra: tests and benchmarks call this, the pipeline never does

    wave = REST_GRID.wave
    flux_all, ivar_all = list_to_numpy(table["flux"]), list_to_numpy(table["ivar"])
    rows = []
    for i in range(table.num_rows):
        flux, ivar = flux_all[i].astype(np.float64), ivar_all[i].astype(np.float64)
        good = ivar > 0
        row = {
            "TARGETID": table["TARGETID"][i].as_py(),
            "snr_rest": float(np.median(flux[good] * np.sqrt(ivar[good]))),
            "alpha_lambda": ref_slope(wave, flux, good),
        }
        for name, line in LINES.items():
            row[f"{name}_ew"], row[f"{name}_fwhm"], row[f"{name}_voff"] = ref_line(wave, flux, ivar, line)
        row |= ref_bal(wave, flux, ivar)
        rows.append(row)
    return pd.DataFrame(rows)
