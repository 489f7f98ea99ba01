"""The validation report of a release: one self-contained HTML page, ``metrics.json`` and the figures."""

from qad_assets.science.validation.report.figures import Gallery, render_figures
from qad_assets.science.validation.report.html import report_html, summary_markdown
from qad_assets.science.validation.report.writer import ReportFiles, top_candidates, write_report

__all__ = [
    "Gallery",
    "ReportFiles",
    "render_figures",
    "report_html",
    "summary_markdown",
    "top_candidates",
    "write_report",
]
