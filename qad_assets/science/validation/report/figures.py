"""The report's figures: ROC curves, score distributions, S/N and redshift trends, the gallery, the latent map.

Figures are drawn on ``Figure`` objects with the Agg canvas, never through pyplot, so no global backend
or figure registry is touched; PNGs carry no software metadata, so the same inputs give the same bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.style
import numpy as np
import pyarrow as pa
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy.stats import spearmanr
from sklearn.metrics import auc, roc_curve

from qad_assets.science.spectra.rest_frame import (
    EMISSION_LINES,
    LYA_FOREST_MAX,
    REGION_CIII,
    REGION_CIV,
    REGION_HALPHA,
    REGION_HBETA,
    REGION_LYA_NV,
    REGION_MGII,
    REGION_SIIV,
    REGION_WINDOWS,
)
from qad_assets.science.validation.evaluation import METHODS

METHOD_LABELS = {"vae": "VAE", "pca_chi2": "PCA χ²", "isolation_forest": "Isolation forest"}
#: One colour per method in every figure, so a reader learns it once.
METHOD_COLOURS = {"vae": "#1f77b4", "pca_chi2": "#ff7f0e", "isolation_forest": "#2ca02c"}

#: Gallery panels at most: enough to judge the top of the ranking, small enough for the page.
GALLERY_MAX = 12
FIG_DPI = 80
REGION_SHADE, REGION_ALPHA = "gold", 0.3
#: No "Software" tag (it carries the matplotlib version), so PNG bytes depend on the data only.
PNG_METADATA = {"Software": None}
FIG_STYLE = {"font.size": 9, "axes.titlesize": 9, "legend.fontsize": 8, "svg.hashsalt": "desi-qad"}

#: Region names a score row may carry in ``top_region`` (compared lower-case, letters and digits only)
#: → the rest-frame window (Å) shaded in the gallery. The continuum has no single window.
REGION_NAME_WINDOWS: dict[str, tuple[float, float]] = {
    "lyaforest": (0.0, LYA_FOREST_MAX),
    "lyanv": REGION_WINDOWS[REGION_LYA_NV],
    "siiv": REGION_WINDOWS[REGION_SIIV],
    "civ": REGION_WINDOWS[REGION_CIV],
    "ciii": REGION_WINDOWS[REGION_CIII],
    "mgii": REGION_WINDOWS[REGION_MGII],
    "hbeta": REGION_WINDOWS[REGION_HBETA],
    "halpha": REGION_WINDOWS[REGION_HALPHA],
}


@dataclass(frozen=True)
class Gallery:
    """The top candidates' spectra on the rest-frame grid, best first, with the model's reconstruction."""

    wave: np.ndarray  # (P,) rest Å
    flux: np.ndarray  # (k, P) normalized flux
    ivar: np.ndarray  # (k, P) its inverse variance; 0 where no data
    model: np.ndarray  # (k, P) the VAE reconstruction
    targetid: np.ndarray  # (k,) int64
    z: np.ndarray  # (k,)
    anomaly_score: np.ndarray  # (k,)
    top_region: Sequence[str]  # (k,) region that contributes most to the score

    def __post_init__(self) -> None:
        k, p = len(self.targetid), len(self.wave)
        for name in ("flux", "ivar", "model"):
            if np.shape(getattr(self, name)) != (k, p):
                raise ValueError(f"Gallery.{name} has shape {np.shape(getattr(self, name))}, expected {(k, p)}")
        for name in ("z", "anomaly_score", "top_region"):
            if len(getattr(self, name)) != k:
                raise ValueError(f"Gallery.{name} has {len(getattr(self, name))} entries for {k} candidates")

    def __len__(self) -> int:
        return len(self.targetid)


def render_figures(scores: pa.Table, injections: pa.Table, gallery: Gallery, latent_2d: np.ndarray) -> dict[str, bytes]:
    """Every figure as PNG bytes, in page order; the gallery is left out when it has no candidates."""
    with matplotlib.style.context(["default", FIG_STYLE]):
        figures = {
            "roc": roc_figure(injections),
            "score_histograms": histogram_figure(injections),
            "score_vs_snr_z": trend_figure(scores),
        }
        if len(gallery):
            figures["gallery"] = gallery_figure(gallery, _rank_by_targetid(scores))
        figures["latent_map"] = latent_figure(latent_2d, scores, gallery)
        return {name: _png_bytes(fig) for name, fig in figures.items()}


def _png_bytes(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIG_DPI, metadata=PNG_METADATA)
    return buffer.getvalue()


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy(zero_copy_only=False)


def _rank_by_targetid(scores: pa.Table) -> dict[int, int]:
    return dict(zip(scores["TARGETID"].to_pylist(), scores["rank"].to_pylist(), strict=True))


def roc_figure(injections: pa.Table) -> Figure:
    """ROC curves: every method on all injections, and the VAE per injected class, against the controls."""
    label = _column(injections, "label").astype(bool)
    classes = _column(injections, "class").astype(str)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    overall, per_class = fig.subplots(1, 2)
    for method in METHODS:
        _roc_line(overall, label, _column(injections, f"score_{method}"), METHOD_LABELS[method], METHOD_COLOURS[method])
    overall.set_title("All injected classes vs normal controls")
    vae = _column(injections, "score_vae")
    palette = matplotlib.colormaps["Dark2"].colors
    for i, cls in enumerate(sorted(set(classes[label]))):
        keep = ~label | (classes == cls)
        _roc_line(per_class, label[keep], vae[keep], cls, palette[i % len(palette)])
    per_class.set_title("VAE, per injected class")
    for ax in (overall, per_class):
        ax.plot([0, 1], [0, 1], ls=":", color="0.5", lw=1, label="chance")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False-positive rate (normal controls flagged)")
        ax.set_ylabel("True-positive rate (injections recovered)")
        ax.legend(loc="lower right")
    return fig


def _roc_line(ax: Axes, label: np.ndarray, score: np.ndarray, name: str, colour: Any) -> None:
    """One ROC curve with its AUROC in the legend; nothing when only one of the two labels is present."""
    finite = np.isfinite(score)
    if len(set(label[finite])) < 2:
        return
    fpr, tpr, _ = roc_curve(label[finite], score[finite])
    ax.plot(fpr, tpr, color=colour, lw=1.5, label=f"{name} (AUROC {auc(fpr, tpr):.3f})")


def histogram_figure(injections: pa.Table) -> Figure:
    """Per method, score distributions of the normal controls and the injected spectra (log counts)."""
    label = _column(injections, "label").astype(bool)
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    for ax, method in zip(fig.subplots(1, len(METHODS)), METHODS, strict=True):
        score = _column(injections, f"score_{method}").astype(float)
        finite = np.isfinite(score)
        bins, log_x = _histogram_bins(score[finite])
        ax.hist(score[finite & ~label], bins=bins, histtype="stepfilled", color="0.75", label="normal controls")
        ax.hist(
            score[finite & label], bins=bins, histtype="step", lw=1.5, color=METHOD_COLOURS[method], label="injected"
        )
        ax.set_yscale("log")
        ax.set_ylim(top=ax.get_ylim()[1] * 10)  # a decade of headroom keeps the legend off the bars
        if log_x:
            ax.set_xscale("log")
        ax.set(title=METHOD_LABELS[method], xlabel=f"{METHOD_LABELS[method]} score", ylabel="Spectra per bin")
        ax.legend(loc="upper right")
    return fig


def _histogram_bins(values: np.ndarray, n: int = 40) -> tuple[np.ndarray, bool]:
    """Log-spaced bins for positive scores spanning over two decades (χ²-like tails), else linear."""
    if values.size == 0:
        return np.linspace(0, 1, n + 1), False
    lo, hi = float(values.min()), float(values.max())
    if lo > 0 and hi / lo > 100:
        return np.geomspace(lo, hi, n + 1), True
    return np.linspace(lo, hi if hi > lo else lo + 1, n + 1), False


def trend_figure(scores: pa.Table) -> Figure:
    """VAE score against S/N and redshift, with running medians: a good score does not track either."""
    score = _column(scores, "anomaly_score").astype(float)
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    for ax, (column, xlabel) in zip(fig.subplots(1, 2), [("snr", "S/N"), ("Z", "Redshift z")], strict=True):
        x = _column(scores, column).astype(float)
        finite = np.isfinite(x) & np.isfinite(score)
        ax.scatter(x[finite], score[finite], s=3, alpha=0.4, lw=0, color=METHOD_COLOURS["vae"], rasterized=True)
        ax.plot(*_running_median(x[finite], score[finite]), color="k", lw=1.5, label="running median")
        if finite.any() and score[finite].min() > 0:
            ax.set_yscale("log")
        if column == "snr" and finite.any() and x[finite].min() > 0:
            ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel="VAE anomaly score")
        ax.set_title(f"Score vs {xlabel}: Spearman ρ = {_spearman(x[finite], score[finite]):.3f}")
        ax.legend(loc="upper right")
    return fig


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(spearmanr(x, y).statistic) if x.size >= 3 else math.nan


def _running_median(x: np.ndarray, y: np.ndarray, n_bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Medians of ``y`` in quantile bins of ``x`` (equal counts, so sparse tails do not dominate)."""
    if x.size < 2 * n_bins:
        return np.array([]), np.array([])
    edges = np.quantile(x, np.linspace(0, 1, n_bins + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)
    filled = [b for b in range(n_bins) if np.any(which == b)]
    return (
        np.array([np.median(x[which == b]) for b in filled]),
        np.array([np.median(y[which == b]) for b in filled]),
    )


def gallery_figure(gallery: Gallery, rank_by_targetid: Mapping[int, int]) -> Figure:
    """One panel per top candidate (at most :data:`GALLERY_MAX`): spectrum and model above, residual/σ below."""
    k = min(len(gallery), GALLERY_MAX)
    ncols = 1 if k == 1 else 2
    nrows = math.ceil(k / ncols)
    fig = Figure(figsize=(6.2 * ncols, 3.1 * nrows + 0.4), layout="constrained")
    panels = fig.subfigures(nrows, ncols, squeeze=False).ravel()
    for i, panel in enumerate(panels[:k]):
        _gallery_panel(panel, gallery, i, rank_by_targetid.get(int(gallery.targetid[i])))
    fig.legend(handles=_gallery_legend(), loc="outside upper center", ncols=4, frameon=False)
    return fig


def _gallery_legend() -> list[Artist]:
    """One legend for all panels: per-panel legends would cover the emission-line labels."""
    return [
        Line2D([], [], color="0.55", lw=1, label="data"),
        Line2D([], [], color=METHOD_COLOURS["vae"], lw=1.5, label="VAE reconstruction"),
        Line2D([], [], color="0.4", ls=":", lw=1, label="broad emission line"),
        Patch(color=REGION_SHADE, alpha=REGION_ALPHA, lw=0, label="region driving the score"),
    ]


def _gallery_panel(panel: SubFigure, gallery: Gallery, i: int, rank: int | None) -> None:
    """Data (grey), VAE reconstruction, residual in units of σ; emission lines marked, top region shaded."""
    wave = np.asarray(gallery.wave, float)
    good = np.asarray(gallery.ivar[i]) > 0
    flux = np.where(good, gallery.flux[i], np.nan)
    model = np.asarray(gallery.model[i], float)
    pull = np.where(good, (flux - model) * np.sqrt(np.where(good, gallery.ivar[i], 0.0)), np.nan)
    spectrum_ax, pull_ax = panel.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
    spectrum_ax.plot(wave, flux, color="0.55", lw=0.5)
    spectrum_ax.plot(wave, np.where(good, model, np.nan), color=METHOD_COLOURS["vae"], lw=1)
    pull_ax.plot(wave, pull, color="0.3", lw=0.5)
    pull_ax.axhline(0, color=METHOD_COLOURS["vae"], lw=0.8)
    lo, hi = (wave[good].min(), wave[good].max()) if good.any() else (wave.min(), wave.max())
    spectrum_ax.set_xlim(lo, hi)
    bottom, top = _robust_limits(np.concatenate([flux[good], model[good]]))
    spectrum_ax.set_ylim(bottom, top + 0.2 * (top - bottom))  # headroom for the line labels
    pull_limit = max(_robust_limits(np.abs(pull[good]))[1] if good.any() else 0.0, 5.0)
    pull_ax.set_ylim(-pull_limit, pull_limit)
    region = str(gallery.top_region[i])
    for ax in (spectrum_ax, pull_ax):
        _shade_region(ax, region)
    _mark_lines(spectrum_ax, pull_ax, lo, hi)
    prefix = f"#{rank}  " if rank is not None else ""
    spectrum_ax.set_title(
        f"{prefix}TARGETID {int(gallery.targetid[i])}  z = {float(gallery.z[i]):.3f}  "
        f"score = {float(gallery.anomaly_score[i]):.4g}  region: {region}",
        loc="left",
    )
    spectrum_ax.set_ylabel("Normalized flux")
    pull_ax.set(xlabel="Rest wavelength (Å)", ylabel="Residual / σ")


def _robust_limits(values: np.ndarray) -> tuple[float, float]:
    """0.5–99.5 percentile range with a margin: a few cosmic-ray or sky pixels do not flatten the plot."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [0.5, 99.5])
    pad = 0.1 * (hi - lo) if hi > lo else 1.0
    return float(lo - pad), float(hi + pad)


def _shade_region(ax: Axes, region: str) -> None:
    window = region_window(region)
    if window is not None:
        ax.axvspan(*window, color=REGION_SHADE, alpha=REGION_ALPHA, lw=0)


def region_window(region: str) -> tuple[float, float] | None:
    """Rest window (Å) of a ``top_region`` name such as ``CIV``, ``CIII]`` or ``lya_forest``; None if unknown."""
    key = "".join(ch for ch in region.lower() if ch.isalnum())
    return REGION_NAME_WINDOWS.get(key)


def _mark_lines(spectrum_ax: Axes, pull_ax: Axes, lo: float, hi: float) -> None:
    """Dotted line at each broad emission line in range, labelled at the top; close labels are staggered."""
    previous = -math.inf
    level = 0
    for name, rest in sorted(EMISSION_LINES.items(), key=lambda item: item[1]):
        if not lo <= rest <= hi:
            continue
        level = (level + 1) % 2 if rest - previous < 0.06 * (hi - lo) else 0
        previous = rest
        for ax in (spectrum_ax, pull_ax):
            ax.axvline(rest, color="0.4", ls=":", lw=0.8)
        spectrum_ax.text(
            rest, 0.97 - 0.09 * level, f" {name}", transform=spectrum_ax.get_xaxis_transform(), fontsize=7, va="top"
        )


def latent_figure(latent_2d: np.ndarray, scores: pa.Table, gallery: Gallery) -> Figure:
    """The scored spectra in the 2-D latent projection, coloured by score; gallery candidates circled."""
    xy = np.asarray(latent_2d, float)
    score = _column(scores, "anomaly_score").astype(float)
    order = np.argsort(score, kind="stable")  # most anomalous drawn last, on top
    positive = score[np.isfinite(score)]
    norm = LogNorm() if positive.size and positive.min() > 0 else Normalize()
    fig = Figure(figsize=(6.5, 5.2), layout="constrained")
    ax = fig.subplots()
    points = ax.scatter(xy[order, 0], xy[order, 1], c=score[order], s=4, lw=0, cmap="viridis", norm=norm)
    fig.colorbar(points, ax=ax, label="VAE anomaly score")
    row_by_targetid = {t: i for i, t in enumerate(scores["TARGETID"].to_pylist())}
    rank_by_targetid = _rank_by_targetid(scores)
    marked = [int(t) for t in gallery.targetid[:GALLERY_MAX] if int(t) in row_by_targetid]
    rows = [row_by_targetid[t] for t in marked]
    ax.scatter(xy[rows, 0], xy[rows, 1], s=60, facecolors="none", edgecolors="red", lw=1.2, label="top candidates")
    for t, row in zip(marked, rows, strict=True):
        ax.annotate(str(rank_by_targetid[t]), xy[row], xytext=(4, 4), textcoords="offset points", color="red")
    ax.set(xlabel="Latent projection 1", ylabel="Latent projection 2", title="Latent space of the scored spectra")
    if marked:
        ax.legend(loc="upper right")
    return fig


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------
