"""The validation report of a release: one self-contained HTML page, ``metrics.json`` and the figures.

The report is what a user opens to decide whether to trust the anomaly ranking, so it puts the VAE next
to its two baselines (PCA χ², isolation forest) in every table and figure, and shows the evidence
behind the numbers: ROC curves and score distributions of the injection–recovery harness, how the
score trends with S/N and redshift, the top candidates' spectra against their reconstructions, and
where they sit in latent space.

Output is deterministic: the same inputs give the same bytes (no timestamps, PNGs without software
metadata, a fixed matplotlib style), so a rerun of the asset changes nothing and diffs stay meaningful.
Figures are drawn on ``Figure`` objects with the Agg canvas, never through pyplot, so no global backend
or figure registry is touched.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.style
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy.stats import spearmanr
from sklearn.metrics import auc, roc_curve

from qad_assets.science.atomic_files import write_bytes_atomic
from qad_assets.science.rest_frame import (
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

METHODS: tuple[str, ...] = ("vae", "pca_chi2", "isolation_forest")
METHOD_LABELS = {"vae": "VAE", "pca_chi2": "PCA χ²", "isolation_forest": "Isolation forest"}
#: One colour per method in every figure, so a reader learns it once.
METHOD_COLOURS = {"vae": "#1f77b4", "pca_chi2": "#ff7f0e", "isolation_forest": "#2ca02c"}
SCORE_METRICS = {"auroc": "AUROC", "auprc": "AUPRC", "recall_top1pct": "recall@1%"}

#: Gallery panels at most: enough to judge the top of the ranking, small enough for the page.
GALLERY_MAX = 12
#: Rows of the top-candidate table.
TOP_TABLE_ROWS = 50
SUMMARY_TOP_ROWS = 10
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


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote, and the Markdown summary for the Dagster materialization."""

    html: Path
    metrics_json: Path
    figures: dict[str, Path]
    summary_markdown: str


def write_report(
    out_dir: Path,
    *,
    release: str,
    model_version: str,
    metrics: dict[str, Any],
    scores: pa.Table,
    injections: pa.Table,
    gallery: Gallery,
    latent_2d: np.ndarray,
    crossmatch: pa.Table | None = None,
) -> ReportFiles:
    """Write ``report.html``, ``metrics.json`` and ``figures/*.png`` under ``out_dir``, each atomically."""
    if len(latent_2d) != scores.num_rows:
        raise ValueError(f"latent_2d has {len(latent_2d)} rows for {scores.num_rows} scores")
    out_dir = Path(out_dir)
    top = top_candidates(scores, crossmatch)
    pngs = render_figures(scores, injections, gallery, latent_2d)
    figures = {name: write_bytes_atomic(out_dir / "figures" / f"{name}.png", png) for name, png in pngs.items()}
    manifest = {**metrics, "figures": [f"figures/{name}.png" for name in pngs]}
    metrics_json = write_bytes_atomic(
        out_dir / "metrics.json", (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode()
    )
    page = report_html(release, model_version, metrics, top, pngs, len(gallery), crossmatch)
    html_path = write_bytes_atomic(out_dir / "report.html", page.encode())
    summary = summary_markdown(release, model_version, metrics, top)
    return ReportFiles(html=html_path, metrics_json=metrics_json, figures=figures, summary_markdown=summary)


# --------------------------------------------------------------------------------------------------
# The candidate table
# --------------------------------------------------------------------------------------------------


def top_candidates(scores: pa.Table, crossmatch: pa.Table | None, n: int = TOP_TABLE_ROWS) -> list[dict[str, Any]]:
    """The ``n`` best-ranked rows as dicts, with ``known`` (True/False, None without a cross-match)."""
    order = pc.sort_indices(scores, sort_keys=[("rank", "ascending"), ("TARGETID", "ascending")])
    columns = ["rank", "TARGETID", "Z", "anomaly_score", "p_value", "top_region", "worst_arm"]
    rows = scores.take(order[:n]).select(columns).to_pylist()
    known = _known_by_targetid(crossmatch)
    for row in rows:
        row["known"] = known.get(row["TARGETID"]) if crossmatch is not None else None
    return rows


def _known_by_targetid(crossmatch: pa.Table | None) -> dict[int, bool]:
    if crossmatch is None:
        return {}
    return dict(zip(crossmatch["TARGETID"].to_pylist(), crossmatch["known"].to_pylist(), strict=True))


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


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

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #555; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
td.best { font-weight: bold; background: #e4f1e4; }
.verdict { border: 2px solid; border-radius: 6px; padding: 0.6em 1em; margin: 1em 0; }
.verdict.pass { border-color: #2e7d32; background: #eef7ee; }
.verdict.fail { border-color: #c62828; background: #fdeeee; }
.verdict li.pass::marker { content: "✓  "; color: #2e7d32; }
.verdict li.fail::marker { content: "✗  "; color: #c62828; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: 0.9em; }
"""


def report_html(
    release: str,
    model_version: str,
    metrics: Mapping[str, Any],
    top: list[dict[str, Any]],
    pngs: Mapping[str, bytes],
    n_gallery: int,
    crossmatch: pa.Table | None,
) -> str:
    """The whole page, sections in reading order: verdict, numbers, figures, candidates, extras."""
    sections = [
        _header(release, model_version, metrics),
        _verdict(metrics.get("checks")),
        _evaluation_section("Injection–recovery", "injection", metrics["injection"]),
    ]
    if metrics.get("truth"):
        sections.append(_evaluation_section("Truth-labelled sample", "truth", metrics["truth"]))
    sections += [
        _spearman_section(metrics.get("snr_spearman_normals")),
        _figures_section(pngs, n_gallery),
        _candidate_section(top, crossmatch is not None),
    ]
    if metrics.get("seed_stability"):
        sections.append(_stability_section(metrics["seed_stability"]))
    if metrics.get("crossmatch") or crossmatch is not None:
        sections.append(_crossmatch_section(metrics.get("crossmatch"), crossmatch))
    title = f"desi-qad validation report: {release}, model {model_version}"
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(s for s in sections if s) + "\n</body>\n</html>\n"
    )


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any, spec: str = ".3f") -> str:
    """A number for a table cell; a dash for a missing or non-finite value (e.g. a class with no spectra)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec)


def _header(release: str, model_version: str, metrics: Mapping[str, Any]) -> str:
    facts = [f"Release <b>{_e(release)}</b>", f"model <b>{_e(model_version)}</b>"]
    if metrics.get("date"):
        facts.append(f"date {_e(metrics['date'])}")
    facts.append(f"{_e(metrics.get('n_scored', '?'))} spectra scored")
    facts.append(f"{_e(metrics.get('n_heldout_normal', '?'))} held-out normal spectra")
    return f"<h1>Anomalous-quasar validation report</h1>\n<p class='meta'>{' · '.join(facts)}</p>"


def _verdict(checks: Mapping[str, Mapping[str, Any]] | None) -> str:
    """Pass/fail of the release's checks, first thing on the page: a failed one is the first thing to read."""
    if not checks:
        return ""
    failed = [name for name, check in checks.items() if not check["passed"]]
    headline = f"All {len(checks)} checks passed" if not failed else f"{len(failed)} of {len(checks)} checks failed"
    items = "".join(
        f"<li class='{'pass' if c['passed'] else 'fail'}'><b>{_e(name)}</b>: "
        f"{'passed' if c['passed'] else 'FAILED'}. {_e(c.get('detail', ''))}</li>"
        for name, c in checks.items()
    )
    return f"<div class='verdict {'fail' if failed else 'pass'}' id='verdict'><b>{headline}</b><ul>{items}</ul></div>"


def _evaluation_section(title: str, prefix: str, block: Mapping[str, Any]) -> str:
    """Headline table and the per-class, per-S/N and per-z breakdowns of one labelled evaluation."""
    parts = [f"<h2>{_e(title)}</h2>", _method_table(f"{prefix}-overall", block["overall"])]
    parts.append(
        "<p class='note'>AUROC and AUPRC: how well the score separates anomalous from normal spectra "
        "(0.5 and the anomalous fraction are chance); recall@1%: fraction of anomalous spectra ranked in the "
        "top 1% of scores. Best method per column or row in bold.</p>"
    )
    for key, heading, first in [
        ("per_class", "Per anomaly class", "class"),
        ("per_snr_bin", "Per S/N bin", "S/N bin"),
        ("per_z_bin", "Per redshift bin", "z bin"),
    ]:
        if block.get(key):
            parts.append(f"<h3>{heading}</h3>")
            parts.append(_binned_table(f"{prefix}-{key.replace('_', '-')}", first, block[key]))
    return "\n".join(parts)


def _best(values: Iterable[Any]) -> float:
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return max(finite) if finite else math.nan


def _cell(value: Any, best: float) -> str:
    is_best = isinstance(value, int | float) and value == best
    return f"<td class='best'>{_fmt(value)}</td>" if is_best else f"<td>{_fmt(value)}</td>"


def _method_table(table_id: str, by_method: Mapping[str, Mapping[str, Any]]) -> str:
    """Methods as rows, metrics as columns; the best method per metric highlighted."""
    best = {m: _best(by_method.get(method, {}).get(m) for method in METHODS) for m in SCORE_METRICS}
    header = "<tr><th class='text'>method</th>" + "".join(f"<th>{label}</th>" for label in SCORE_METRICS.values())
    rows = [
        f"<tr><td class='text'>{METHOD_LABELS[method]}</td>"
        + "".join(_cell(by_method.get(method, {}).get(m), best[m]) for m in SCORE_METRICS)
        + "</tr>"
        for method in METHODS
    ]
    return f"<table id='{table_id}'>{header}</tr>" + "".join(rows) + "</table>"


def _binned_table(table_id: str, first: str, bins: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """One row per bin; for each metric the three methods side by side, the best of the row highlighted."""
    group = "".join(f"<th colspan='{len(METHODS)}'>{label}</th>" for label in SCORE_METRICS.values())
    names = "".join(f"<th>{METHOD_LABELS[method]}</th>" for method in METHODS) * len(SCORE_METRICS)
    header = f"<tr><th class='text' rowspan='2'>{_e(first)}</th>{group}</tr><tr>{names}</tr>"
    rows = []
    for name, by_method in bins.items():
        cells = []
        for m in SCORE_METRICS:
            values = [by_method.get(method, {}).get(m) for method in METHODS]
            cells += [_cell(v, _best(values)) for v in values]
        rows.append(f"<tr><td class='text'>{_e(name)}</td>{''.join(cells)}</tr>")
    return f"<table id='{table_id}'>{header}" + "".join(rows) + "</table>"


def _spearman_section(rho: Mapping[str, float] | None) -> str:
    if not rho:
        return ""
    cells = "".join(
        f"<tr><td class='text'>{METHOD_LABELS.get(m, _e(m))}</td><td>{_fmt(v)}</td></tr>" for m, v in rho.items()
    )
    return (
        "<h2>Score vs S/N on normal spectra</h2>\n<p>Spearman rank correlation between each method's score and "
        "S/N on held-out normal quasars. A score that tracks S/N ranks noisy or bright spectra, not unusual "
        "quasars; |ρ| near 0 is the goal.</p>\n"
        f"<table id='snr-spearman'><tr><th class='text'>method</th><th>Spearman ρ</th></tr>{cells}</table>"
    )


FIGURE_CAPTIONS = {
    "roc": "ROC curves of the injection–recovery harness. Left: every method, all injected classes against the "
    "unmodified controls. Right: the VAE per injected class. The dotted diagonal is chance.",
    "score_histograms": "Score distributions of the normal controls (grey) and the injected spectra, per method "
    "(counts on a log scale). The less the two overlap, the cleaner the separation.",
    "score_vs_snr_z": "VAE anomaly score of every scored spectrum against S/N and redshift, with the running "
    "median. A flat median means the score does not simply follow data quality or redshift coverage.",
    "gallery": "The top candidates (up to {n}): normalized spectrum (grey) and VAE reconstruction (blue) above, "
    "residual in units of the pixel noise below. Dotted lines mark the broad emission lines; the shaded band "
    "is the region that contributes most to the score.",
    "latent_map": "2-D projection of the VAE latent space, coloured by anomaly score; the top candidates are "
    "circled and numbered by rank.",
}


def _figures_section(pngs: Mapping[str, bytes], n_gallery: int) -> str:
    parts = ["<h2>Figures</h2>"]
    for name, png in pngs.items():
        caption = FIGURE_CAPTIONS[name].format(n=min(n_gallery, GALLERY_MAX))
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<figure id='fig-{name}'><img src='data:image/png;base64,{data}' alt='{_e(name)}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return "\n".join(parts)


def _candidate_section(top: list[dict[str, Any]], crossmatched: bool) -> str:
    heads = ["rank", "TARGETID", "z", "score", "p-value", "top region", "worst arm"] + (
        ["catalogue"] if crossmatched else []
    )
    header = "".join(f"<th>{h}</th>" for h in heads)
    rows = [_candidate_row(row, crossmatched) for row in top]
    return (
        f"<h2>Top {len(top)} candidates</h2>\n<p class='note'>Ranked by VAE anomaly score; p-value against the "
        "held-out normal spectra.</p>\n"
        f"<table id='candidates'><tr>{header}</tr>" + "".join(rows) + "</table>"
    )


def _candidate_row(row: Mapping[str, Any], crossmatched: bool) -> str:
    cells = [
        _e(row["rank"]),
        _e(row["TARGETID"]),
        _fmt(row["Z"], ".4f"),
        _fmt(row["anomaly_score"], ".4g"),
        _fmt(row["p_value"], ".2e"),
    ]
    text = [_e(row["top_region"]), _e(row["worst_arm"])]
    if crossmatched:
        text.append({True: "known", False: "new", None: "—"}[row["known"]])
    return (
        "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "".join(f"<td class='text'>{t}</td>" for t in text) + "</tr>"
    )


def _stability_section(stability: Mapping[str, Any]) -> str:
    fraction = float(stability["top_fraction"])
    return (
        "<h2>Seed stability</h2>\n"
        f"<p id='seed-stability'>Retrained with different random seeds, the top {_fmt(100 * fraction, '.3g')}% "
        f"({_e(stability['n_top'])} spectra) overlap with Jaccard index <b>{_fmt(stability['jaccard'])}</b> "
        "(1 = identical candidate lists).</p>"
    )


def _crossmatch_section(summary: Mapping[str, Any] | None, table: pa.Table | None) -> str:
    parts = ["<h2>Cross-match with known objects</h2>"]
    if summary:
        parts.append(
            f"<p id='crossmatch-summary'>Of the top {_e(summary['n_top'])} candidates, {_e(summary['n_known'])} "
            f"are in {_e(summary['catalog'])} and {_e(summary['n_new'])} are new.</p>"
        )
    if table is not None:
        known = table.filter(pc.equal(table["known"], True)).slice(0, TOP_TABLE_ROWS)
        header = "".join(f"<th>{_e(name)}</th>" for name in known.column_names)
        rows = [
            "<tr>" + "".join(f"<td>{_e(_fmt_any(v))}</td>" for v in r.values()) + "</tr>" for r in known.to_pylist()
        ]
        parts.append(f"<table id='crossmatch'><tr>{header}</tr>" + "".join(rows) + "</table>")
    return "\n".join(parts)


def _fmt_any(value: Any) -> str:
    return _fmt(value, ".4g") if isinstance(value, float) else ("—" if value is None else str(value))


# --------------------------------------------------------------------------------------------------
# Markdown summary for the Dagster materialization
# --------------------------------------------------------------------------------------------------


def summary_markdown(release: str, model_version: str, metrics: Mapping[str, Any], top: list[dict[str, Any]]) -> str:
    """Headline numbers and the top 10, short enough for the Dagster UI's asset page."""
    overall = metrics["injection"]["overall"]
    rho = metrics.get("snr_spearman_normals") or {}
    lines = [
        f"**{release}**, model `{model_version}`: {metrics.get('n_scored', '?')} spectra scored, "
        f"{len(top)} candidates in the report table.",
        "",
        "| method | AUROC | AUPRC | recall@1% | \\|ρ(score, S/N)\\| |",
        "|---|---|---|---|---|",
    ]
    for method in METHODS:
        m = overall.get(method, {})
        abs_rho = abs(rho[method]) if rho.get(method) is not None else None
        lines.append(
            f"| {METHOD_LABELS[method]} | {_fmt(m.get('auroc'))} | {_fmt(m.get('auprc'))} | "
            f"{_fmt(m.get('recall_top1pct'))} | {_fmt(abs_rho)} |"
        )
    lines.append("")
    if metrics.get("seed_stability"):
        s = metrics["seed_stability"]
        lines.append(f"Seed stability: Jaccard {_fmt(s['jaccard'])} over the top {s['n_top']} spectra.")
    if metrics.get("checks"):
        passed = sum(bool(c["passed"]) for c in metrics["checks"].values())
        lines.append(f"Checks: {passed}/{len(metrics['checks'])} passed.")
    lines += ["", "| rank | TARGETID | z | score | p-value | top region |", "|---|---|---|---|---|---|"]
    for row in top[:SUMMARY_TOP_ROWS]:
        lines.append(
            f"| {row['rank']} | {row['TARGETID']} | {_fmt(row['Z'], '.4f')} | {_fmt(row['anomaly_score'], '.4g')} "
            f"| {_fmt(row['p_value'], '.2e')} | {row['top_region']} |"
        )
    return "\n".join(lines) + "\n"
