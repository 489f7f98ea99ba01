"""The report page (self-contained HTML, figures inline) and its Markdown summary for the Dagster UI."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from qad_assets.science.validation.evaluation import METHODS
from qad_assets.science.validation.report.figures import GALLERY_MAX, METHOD_LABELS

SCORE_METRICS = {"auroc": "AUROC", "auprc": "AUPRC", "recall_top1pct": "recall@1%"}
#: Rows of the top-candidate table.
TOP_TABLE_ROWS = 50
SUMMARY_TOP_ROWS = 10


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
        _component_section("injection-components", (metrics["injection"] or {}).get("per_component")),
        _real_section(metrics.get("real_injection")),
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
        ("per_subclass", "Per subclass", "subclass"),
        ("per_strength", "Per injected strength (all classes)", "strength"),
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


def _component_section(table_id: str, per_component: Mapping[str, Mapping[str, Any]] | None) -> str:
    """AUROC of each of the detector's standardised components per injected class: which sees what."""
    if not per_component:
        return ""
    names = list(dict.fromkeys(name for row in per_component.values() for name in row))
    header = "<tr><th class='text'>class</th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
    rows = []
    for cls, row in per_component.items():
        best = _best(row.values())
        rows.append(f"<tr><td class='text'>{_e(cls)}</td>" + "".join(_cell(row.get(n), best) for n in names) + "</tr>")
    return (
        "<h3>Which score component sees which class</h3>\n<p class='note'>AUROC of each standardised component "
        "of the detector alone, injected spectra of a class against the untouched hosts; the best per row "
        "in bold.</p>\n" + f"<table id='{table_id}'>{header}" + "".join(rows) + "</table>"
    )


def _pm(value: Any, error: Any) -> str:
    return f"{_fmt(value)} ± {_fmt(error, '.2f')}" if value is not None else "—"


def _real_section(real: Mapping[str, Any] | None) -> str:
    """Injection into the packaged real DESI quasars: per class with uncertainties, and the hosts' own scores."""
    if not real:
        return ""
    parts = [
        "<h2>Injection into real DESI quasars</h2>",
        f"<p class='note'>Every class injected at every strength {_e(real['draws'])} times into each of the "
        f"{_e(real['n_hosts'])} real EDR quasars packaged with the harness ({_e(real['n_injected'])} injected "
        "spectra): their real noise and lines, the detector of this release. AUROC against the "
        f"{_e(real['n_hosts'])} uninjected real spectra, ± its Hanley–McNeil standard error (few normals: "
        "wide; 0 at a perfect separation, read it with the counts); <i>paired</i>: the fraction of injected "
        "spectra scoring above their own uninjected host, ± binomial error.</p>",
    ]
    heads = ["class", "n"] + [f"{METHOD_LABELS[m]} AUROC" for m in METHODS] + ["VAE paired"]
    header = "<tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>"
    rows = []
    for name, block in [("overall", real["overall"]), *real["per_class"].items(), *real["per_strength"].items()]:
        cells = [_e(block["vae"]["n"])]
        cells += [_pm(block[m]["auroc"], block[m]["auroc_se"]) for m in METHODS]
        cells.append(_pm(block["vae"]["paired"], block["vae"]["paired_se"]))
        rows.append(f"<tr><td class='text'>{_e(name)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("<table id='real-injection'>" + header + "".join(rows) + "</table>")
    host_rows = "".join(
        f"<tr><td>{_e(h['TARGETID'])}</td><td>{_fmt(h['z'], '.3f')}</td><td>{_fmt(h['snr'], '.2f')}</td>"
        f"<td>{_fmt(h['anomaly_score'], '.3g')}</td><td>{_fmt(h['p_value'], '.3f')}</td>"
        f"<td class='text'>{_e(h['top_component'])}</td></tr>"
        for h in real["hosts"]
    )
    parts.append(
        "<p class='note'>The real quasars themselves, as this release's detector scores them (a low p-value "
        "means the model finds a real quasar unusual: the negatives of the table above).</p>"
        "<table id='real-hosts'><tr><th>TARGETID</th><th>z</th><th>S/N</th><th>score</th><th>p-value</th>"
        f"<th class='text'>top component</th></tr>{host_rows}</table>"
    )
    parts.append(_component_section("real-injection-components", real.get("per_component")))
    return "\n".join(parts)


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
    real = metrics.get("real_injection")
    if real:
        vae = real["overall"]["vae"]
        lines.append(
            f"Real DESI quasars ({real['n_hosts']} hosts, {real['n_injected']} injections): VAE AUROC "
            f"{_fmt(vae['auroc'])} ± {_fmt(vae['auroc_se'], '.2f')}, paired {_fmt(vae['paired'])}."
        )
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
