"""How well anomaly scores find labelled anomalies: detection metrics, per-group tables, stability.

Plain numpy/scikit-learn, no Dagster. The metrics dict of :func:`metrics_report` is what the
validation report renders::

    {"overall": {method: {"auroc", "auprc", "recall_top1pct"}},
     "per_class": {cls: {method: {...}}}, "per_snr_bin": {label: {...}}, "per_z_bin": {label: {...}}}

A metric that cannot be computed (a group without positives or without negatives) is NaN, so the
table keeps its shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, roc_auc_score

Metrics = dict[str, float]
MethodMetrics = dict[str, Metrics]

#: The methods the report compares, in its column order.
METHODS = ("vae", "pca_chi2", "isolation_forest")

#: Fraction of the evaluated set that counts as "flagged" for ``recall_top1pct``.
TOP_FRACTION = 0.01

#: Default bins: per-pixel S/N edges (DESI quasars are mostly S/N 0.5–10 per rest pixel) and redshift edges.
SNR_EDGES = (0.0, 1.0, 2.0, 5.0, math.inf)
Z_EDGES = (0.0, 1.0, 2.0, 3.0, math.inf)


def detection_metrics(labels: np.ndarray, scores: np.ndarray, *, top_fraction: float = TOP_FRACTION) -> Metrics:
    """AUROC, average precision and the recall among the top ``top_fraction`` of scores.

    ``labels`` is True for an anomaly; higher scores are more anomalous. The top set holds
    ``ceil(top_fraction·N)`` spectra (at least one), the number a follow-up programme would inspect;
    recall is the fraction of all anomalies that land in it. NaN scores rank lowest.
    """
    labels = np.asarray(labels, bool)
    scores = np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf, posinf=np.finfo(np.float64).max)
    scores = np.maximum(scores, np.finfo(np.float64).min)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        return {"auroc": math.nan, "auprc": math.nan, "recall_top1pct": math.nan}
    n_top = max(1, math.ceil(top_fraction * labels.size))
    top = np.argsort(-scores, kind="stable")[:n_top]
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc": float(average_precision_score(labels, scores)),
        "recall_top1pct": float(labels[top].sum() / n_pos),
    }


def metrics_by(
    group_labels: np.ndarray, labels: np.ndarray, scores_by_method: Mapping[str, np.ndarray]
) -> dict[str, MethodMetrics]:
    """:func:`detection_metrics` per group and method: ``{group: {method: metrics}}``.

    A group's set is its own rows plus every row whose group label is empty (``""`` or None): the
    shared background. Grouping by anomaly class gives normals an empty label, so each class is
    judged against all normals; grouping by S/N or redshift bin labels every row, so each bin is
    judged on its own anomalies and normals.
    """
    groups = np.asarray(["" if g is None else str(g) for g in group_labels])
    labels = np.asarray(labels, bool)
    background = groups == ""
    out: dict[str, MethodMetrics] = {}
    for group in sorted(set(groups[~background])):
        rows = background | (groups == group)
        out[group] = {
            method: detection_metrics(labels[rows], np.asarray(scores)[rows])
            for method, scores in scores_by_method.items()
        }
    return out


def bin_labels(values: np.ndarray, edges: Sequence[float], name: str) -> np.ndarray:
    """A label ``"lo≤name<hi"`` per value for the bins between ``edges`` (NaN values get ``"name=nan"``)."""
    values = np.asarray(values, np.float64)
    names = [f"{_edge(lo)}≤{name}<{_edge(hi)}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(names) - 1)
    return np.where(np.isfinite(values), np.asarray(names)[index], f"{name}=nan")


def _edge(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def metrics_report(
    labels: np.ndarray,
    anomaly_class: np.ndarray,
    snr: np.ndarray,
    z: np.ndarray,
    scores_by_method: Mapping[str, np.ndarray],
    *,
    snr_edges: Sequence[float] = SNR_EDGES,
    z_edges: Sequence[float] = Z_EDGES,
) -> dict[str, dict]:
    """The report's metrics dict: overall, per anomaly class, per S/N bin and per redshift bin.

    ``anomaly_class`` is empty (or None) for normal rows.
    """
    labels = np.asarray(labels, bool)
    return {
        "overall": {m: detection_metrics(labels, s) for m, s in scores_by_method.items()},
        "per_class": metrics_by(anomaly_class, labels, scores_by_method),
        "per_snr_bin": metrics_by(bin_labels(snr, snr_edges, "snr"), labels, scores_by_method),
        "per_z_bin": metrics_by(bin_labels(z, z_edges, "z"), labels, scores_by_method),
    }


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation over the rows where both are finite (NaN if fewer than 3)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 3:
        return math.nan
    return float(spearmanr(a[both], b[both]).statistic)


def top_jaccard(scores_a: np.ndarray, scores_b: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Jaccard index of the top ``fraction`` of two scorings of the same spectra: do they flag the same ones?"""
    scores_a, scores_b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    if scores_a.shape != scores_b.shape:
        raise ValueError(f"score arrays differ in shape: {scores_a.shape} vs {scores_b.shape}")
    n_top = max(1, math.ceil(fraction * scores_a.size))
    top_a = set(np.argsort(-np.nan_to_num(scores_a, nan=-np.inf), kind="stable")[:n_top].tolist())
    top_b = set(np.argsort(-np.nan_to_num(scores_b, nan=-np.inf), kind="stable")[:n_top].tolist())
    return len(top_a & top_b) / len(top_a | top_b)


def auroc_standard_error(auroc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUROC from ``n_pos`` anomalies and ``n_neg`` normals (Hanley & McNeil 1982):
    with few of either it is wide, whatever the AUROC. NaN when the AUROC is."""
    if not np.isfinite(auroc) or n_pos < 1 or n_neg < 1:
        return math.nan
    q1, q2 = auroc / (2.0 - auroc), 2.0 * auroc**2 / (1.0 + auroc)
    variance = (auroc * (1 - auroc) + (n_pos - 1) * (q1 - auroc**2) + (n_neg - 1) * (q2 - auroc**2)) / (n_pos * n_neg)
    return float(math.sqrt(max(variance, 0.0)))


def binomial_standard_error(fraction: float, n: int) -> float:
    """√(p(1 − p)/n) of a fraction measured on ``n`` trials (NaN for none)."""
    if n < 1 or not np.isfinite(fraction):
        return math.nan
    return float(math.sqrt(fraction * (1.0 - fraction) / n))


def component_auroc(
    group_labels: np.ndarray, labels: np.ndarray, components: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """AUROC of every score component per group (``{group: {component: auroc}}``), groups as in
    :func:`metrics_by`: which component sees which kind of anomaly. An unmeasured (NaN) component value
    counts as typical (0), as the detector's combination counts it."""
    filled = {name: np.nan_to_num(np.asarray(v, np.float64), nan=0.0) for name, v in components.items()}
    by = metrics_by(group_labels, labels, filled)
    return {group: {name: m["auroc"] for name, m in methods.items()} for group, methods in by.items()}
