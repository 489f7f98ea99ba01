"""The spectrum plot, in Bokeh (as DESI's prospect): data with its noise, the model, residuals in σ.

Two panels sharing the wavelength axis: the flux (±1σ band, the noise, the reconstruction over it, the
region that drove the score shaded, broad emission lines and bright sky lines marked) and the residual
``(data − model)·√ivar``. Pan and wheel zoom along λ, box zoom, reset and save are Bokeh's own tools.

As in prospect, the figure is built once per page (:func:`spectrum_layout`, embedded with
``Bokeh.embed.embed_item``) and each candidate only swaps the data of its named sources and ranges
(:func:`spectrum_data`): building Bokeh models costs ~0.3 s a figure, swapping data costs nothing.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

import numpy as np
from bokeh.embed import json_item
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, LabelSet, Range1d
from bokeh.plotting import figure

from qad_assets.explorer.spectrum import SpectrumView, smooth
from qad_assets.science.spectra.rest_frame import EMISSION_LINES, LYA_FOREST_MAX, REGION_NAMES, REGION_WINDOWS

Frame = Literal["rest", "observed"]

#: Bright night-sky emission lines and telluric bands (vacuum Å) that leave residuals in sky-subtracted
#: spectra: [O I] 5577, Na D, [O I] 6300/6364, and the O₂ B and A bands.
SKY_LINES: dict[str, float] = {
    "[OI]5577": 5578.9,
    "NaD": 5894.6,
    "[OI]6300": 6302.0,
    "[OI]6364": 6365.5,
    "O2 B": 6880.0,
    "O2 A": 7605.0,
}
#: Rest-frame windows of the ``top_region`` names (``continuum`` has none).
REGION_RANGES: dict[str, tuple[float, float]] = {
    **{REGION_NAMES[code]: window for code, window in REGION_WINDOWS.items()},
    "lya_forest": (0.0, LYA_FOREST_MAX),
}
TOOLS = "xpan,xwheel_zoom,box_zoom,reset,save"
SPECTRUM_COLUMNS = ("wave", "flux", "low", "high", "sigma", "model", "residual")


@cache
def spectrum_layout() -> dict[str, Any]:
    """The empty two-panel figure, serialized for ``Bokeh.embed.embed_item``; its sources and ranges are
    named so that the page can fill them with :func:`spectrum_data`.
    """
    spectrum = ColumnDataSource({name: [] for name in SPECTRUM_COLUMNS}, name="spectrum")
    lines = ColumnDataSource({"x": [], "name": [], "y": []}, name="lines")
    sky = ColumnDataSource({"x": [], "name": [], "y": []}, name="sky")
    region = ColumnDataSource({"x0": [], "x1": []}, name="region")
    x_range = Range1d(3600, 9800, name="x_range")
    top = figure(
        title="select a candidate",  # text from the start, so the layout keeps room for the title
        height=360,
        sizing_mode="stretch_width",
        tools=TOOLS,
        active_scroll="xwheel_zoom",
        x_range=x_range,
        y_range=Range1d(0, 1, name="y_range"),
        y_axis_label="F_λ [1e-17 erg/s/cm²/Å]",
    )
    top.title.name = "title"
    top.vstrip(x0="x0", x1="x1", source=region, fill_color="#ffbf00", fill_alpha=0.25, legend_label="driving region")
    top.varea("wave", "low", "high", source=spectrum, fill_color="#9ecae1", fill_alpha=0.5, legend_label="±1σ")
    top.line("wave", "flux", source=spectrum, color="#08306b", line_width=1, legend_label="data")
    top.line("wave", "sigma", source=spectrum, color="#7f7f7f", line_width=1, legend_label="noise σ")
    top.line("wave", "model", source=spectrum, color="#d62728", line_width=1.5, legend_label="model")
    bottom = figure(
        height=170,
        sizing_mode="stretch_width",
        tools=TOOLS,
        active_scroll="xwheel_zoom",
        x_range=x_range,
        y_range=Range1d(-8, 8),
        y_axis_label="residual [σ]",
    )
    bottom.xaxis.axis_label = "wavelength [Å]"
    bottom.xaxis.name = "x_axis"
    bottom.hspan(y=[-3.0, 0.0, 3.0], line_color="#999999", line_dash="dotted")
    bottom.line("wave", "residual", source=spectrum, color="#08306b", line_width=1)
    bottom.vstrip(x0="x0", x1="x1", source=region, fill_color="#ffbf00", fill_alpha=0.25)
    for fig in (top, bottom):
        fig.vspan(x="x", source=lines, line_color="#2ca02c", line_dash="dashed")
        fig.vspan(x="x", source=sky, line_color="#9467bd", line_dash="dotted")
    top.add_layout(
        LabelSet(x="x", y="y", y_units="screen", text="name", source=lines, text_font_size="9pt", text_color="#2ca02c")
    )
    top.add_layout(
        LabelSet(x="x", y="y", y_units="screen", text="name", source=sky, text_font_size="8pt", text_color="#9467bd")
    )
    top.legend.location = "top_right"
    top.legend.click_policy = "hide"
    return json_item(column(top, bottom, sizing_mode="stretch_width"))


def spectrum_data(view: SpectrumView, *, frame: Frame, smoothing: int, region: str | None) -> dict[str, Any]:
    """What the page puts into the figure's named sources and ranges for one spectrum, in ``frame``
    (rest or observed λ) after ``smoothing`` pixels of inverse-variance smoothing. Arrays are trimmed to
    the observed span; NaN (no data) is sent as null.
    """
    to_frame = 1.0 + view.z if frame == "observed" else 1.0
    observed = view.ivar > 0
    if not observed.any():
        observed = np.ones_like(observed)
    first, last = np.flatnonzero(observed)[[0, -1]]
    cut = slice(first, last + 1)
    flux, ivar = smooth(view.flux.astype(np.float64), view.ivar.astype(np.float64), smoothing)
    flux, ivar, shown = flux[cut], ivar[cut], (ivar[cut] > 0)
    sigma = np.divide(1.0, np.sqrt(ivar), out=np.full_like(ivar, np.nan), where=shown)
    wave = view.wave[cut] * to_frame
    model = view.model[cut].astype(np.float64) if view.model is not None else np.full_like(flux, np.nan)
    columns = {
        "wave": wave,
        "flux": np.where(shown, flux, np.nan),
        "low": np.where(shown, flux - sigma, np.nan),
        "high": np.where(shown, flux + sigma, np.nan),
        "sigma": sigma,
        "model": np.where(shown, model, np.nan),
        "residual": np.where(shown, (flux - model) * np.sqrt(ivar), np.nan),
    }
    high = columns["high"][np.isfinite(columns["high"])]
    low = columns["low"][np.isfinite(columns["low"])]
    fitted = columns["model"][np.isfinite(columns["model"])]
    y_top = float(max(np.percentile(high, 99.5), fitted.max() if fitted.size else 0.0) * 1.1) if high.size else 1.0
    y_bottom = float(min(np.percentile(low, 0.5), 0.0)) if low.size else 0.0
    x_lo, x_hi = float(wave[0]), float(wave[-1])
    lines = {name: rest * to_frame for name, rest in EMISSION_LINES.items()}
    sky = {name: obs if frame == "observed" else obs / (1.0 + view.z) for name, obs in SKY_LINES.items()}
    strip = REGION_RANGES.get(region or "")
    return {
        "spectrum": {name: _json_array(values, 2 if name == "wave" else 4) for name, values in columns.items()},
        "lines": _marks(lines, x_lo, x_hi, rows=(4, 16)),
        "sky": _marks(sky, x_lo, x_hi, rows=(30, 42)),
        "region": {"x0": [max(strip[0] * to_frame, x_lo)], "x1": [strip[1] * to_frame]}
        if strip
        else {"x0": [], "x1": []},
        "x_range": [x_lo, x_hi],
        "y_range": [y_bottom, y_top if y_top > y_bottom else y_bottom + 1.0],
        "x_label": f"{frame} wavelength [Å]",
    }


def _marks(marks: dict[str, float], lo: float, hi: float, rows: tuple[int, int]) -> dict[str, list]:
    """Marks inside [lo, hi], their labels on two alternating heights (screen px): neighbours such as
    Lyα and N V, or [O I] 6300 and 6364, do not print over each other.
    """
    inside = {name: round(x, 2) for name, x in marks.items() if lo <= x <= hi}
    return {"x": list(inside.values()), "name": list(inside), "y": [rows[i % 2] for i in range(len(inside))]}


def _json_array(values: np.ndarray, decimals: int) -> list[float | None]:
    """Rounded (fluxes are float32 to start with, in units of 1e-17), NaN as null for JSON."""
    rounded = np.round(np.asarray(values, np.float64), decimals)
    out = rounded.astype(object)
    out[~np.isfinite(rounded)] = None
    return out.tolist()
