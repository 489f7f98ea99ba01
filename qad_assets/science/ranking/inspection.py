"""A simulated inspection: what labelling buys, measured on a release whose truth is known (the demo's).

The simulated astronomer walks down the anomaly ranking and gives ``n_labels`` members of one true class
a label (the first ones met, as a person would), nothing else. What is measured is the queue that
remains: the recall of that class's *unlabelled* members in the first ``top`` places of the unlabelled
spectra, ordered by the plain anomaly score and by the re-ranking's priority. Labels worth having
raise the recall of a class labelled interesting and lower that of a class labelled unwanted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from qad_assets.science.ranking.interest import InterestOptions, rank_candidates


@dataclass(frozen=True)
class InspectionResult:
    """Recall of the class's unlabelled members in the top ``top`` of the queue, before and after."""

    true_class: str
    label: str
    labelled: int
    remaining: int
    top: int
    recall_plain: float
    recall_reranked: float

    @property
    def lift(self) -> float:
        return self.recall_reranked - self.recall_plain


def simulate_inspection(
    candidates: pl.DataFrame,
    truth: Mapping[int, str],
    true_class: str,
    label: str,
    *,
    interest_of: Mapping[str, float],
    n_labels: int = 30,
    top: int = 100,
    options: InterestOptions | None = None,
) -> InspectionResult:
    """Label the ``n_labels`` best-ranked spectra of ``true_class`` (``truth``: TARGETID → class) as
    ``label``, re-rank, and compare the class's recall in the top ``top`` of the queue.
    """
    by_score = candidates.sort("anomaly_score", descending=True, nulls_last=True)
    members = np.array([truth.get(int(t)) == true_class for t in by_score["TARGETID"].to_numpy()])
    labelled = by_score["TARGETID"].to_numpy()[members][:n_labels]
    ranking = rank_candidates(candidates, {int(t): label for t in labelled}, interest_of, options or InterestOptions())
    queue = ranking.filter(pl.col("label") == "")
    is_member = np.array([truth.get(int(t)) == true_class for t in queue["TARGETID"].to_numpy()])
    remaining = int(is_member.sum())
    plain = np.argsort(-np.nan_to_num(queue["anomaly_score"].to_numpy(), nan=-np.inf), kind="stable")[:top]
    reranked = np.argsort(queue["priority_rank"].to_numpy(), kind="stable")[:top]
    return InspectionResult(
        true_class=true_class,
        label=label,
        labelled=len(labelled),
        remaining=remaining,
        top=top,
        recall_plain=float(is_member[plain].sum() / max(remaining, 1)),
        recall_reranked=float(is_member[reranked].sum() / max(remaining, 1)),
    )
