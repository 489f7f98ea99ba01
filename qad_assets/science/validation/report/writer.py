"""The validation report of a release: one self-contained HTML page, ``metrics.json`` and the figures.

The report is what a user opens to decide whether to trust the anomaly ranking, so it puts the VAE next
to its two baselines (PCA χ², isolation forest) in every table and figure, and shows the evidence
behind the numbers: ROC curves and score distributions of the injection–recovery harness, how the
score trends with S/N and redshift, the top candidates' spectra against their reconstructions, and
where they sit in latent space.

Output is deterministic: the same inputs give the same bytes (no timestamps, PNGs without software
metadata, a fixed matplotlib style), so a rerun of the asset changes nothing and diffs stay meaningful.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from qad_assets.science.io.atomic_files import write_bytes_atomic
from qad_assets.science.validation.report.figures import Gallery, render_figures
from qad_assets.science.validation.report.html import TOP_TABLE_ROWS, report_html, summary_markdown


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
