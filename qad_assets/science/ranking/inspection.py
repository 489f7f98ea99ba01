"""A simulated inspection: what labelling buys, measured on a release whose truth is known (the demo's).

The simulated astronomer walks down the anomaly ranking and gives ``n_labels`` members of one true class
a label (the first ones met, as a person would), nothing else. What is measured is the queue that
remains: the recall of that class's *unlabelled* members in the first ``k`` places of the unlabelled
spectra (for each ``k`` of ``tops``), and their median place, ordered by the plain anomaly score and by
the re-ranking's priority. Labels worth having raise the recall of a class labelled interesting and
lower that of a class labelled unwanted; which ``k`` shows it depends on how many other anomalies
crowd the head of the queue, hence several.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from qad_assets.science.ranking.interest import InterestOptions, rank_candidates


@dataclass(frozen=True)
class InspectionResult:
    """Recall of the class's unlabelled members in the top ``k`` of the queue (``k`` → recall), and their
    median place in it (1 = next to inspect), before and after the re-ranking.
    """

    true_class: str
    label: str
    labelled: int
    remaining: int
    recall_plain: dict[int, float]
    recall_reranked: dict[int, float]
    median_position_plain: float
    median_position_reranked: float

    def lift(self, k: int) -> float:
        return self.recall_reranked[k] - self.recall_plain[k]


def simulate_inspection(
    candidates: pl.DataFrame,
    truth: Mapping[int, str],
    true_class: str,
    label: str,
    *,
    interest_of: Mapping[str, float],
    n_labels: int = 30,
    tops: Sequence[int] = (100, 300),
    options: InterestOptions | None = None,
) -> InspectionResult:
    """Label the ``n_labels`` best-ranked spectra of ``true_class`` (``truth``: TARGETID → class) as
    ``label``, re-rank, and compare the class's recall in the top ``k`` of the queue for each of ``tops``.
    """
    by_score = candidates.sort("anomaly_score", descending=True, nulls_last=True)
    members = np.array([truth.get(int(t)) == true_class for t in by_score["TARGETID"].to_numpy()])
    labelled = by_score["TARGETID"].to_numpy()[members][:n_labels]
    ranking = rank_candidates(candidates, {int(t): label for t in labelled}, interest_of, options or InterestOptions())
    queue = ranking.filter(pl.col("label") == "")
    is_member = np.array([truth.get(int(t)) == true_class for t in queue["TARGETID"].to_numpy()])
    remaining = int(is_member.sum())
    plain = np.argsort(-np.nan_to_num(queue["anomaly_score"].to_numpy(), nan=-np.inf), kind="stable")
    reranked = np.argsort(queue["priority_rank"].to_numpy(), kind="stable")
    return InspectionResult(
        true_class=true_class,
        label=label,
        labelled=len(labelled),
        remaining=remaining,
        recall_plain={k: float(is_member[plain[:k]].sum() / max(remaining, 1)) for k in tops},
        recall_reranked={k: float(is_member[reranked[:k]].sum() / max(remaining, 1)) for k in tops},
        median_position_plain=_median_position(is_member[plain]),
        median_position_reranked=_median_position(is_member[reranked]),
    )


def _median_position(member_in_order: np.ndarray) -> float:
    """Median 1-based place of the members in a queue (NaN without members)."""
    places = np.flatnonzero(member_in_order) + 1
    return float(np.median(places)) if places.size else float("nan")
