"""Re-ranking by what the labels teach: a model of user interest, mixed with the anomaly score.

After Astronomaly (Lochner & Bassett 2021): a random forest regresses the interest of labelled spectra
(1 = wanted, 0 = not, from the label vocabulary) over their latent vectors and physical features, and
modulates the anomaly score where it has learned something, leaving it alone where it has not. Two
choices differ from Astronomaly's ``NeighbourScore`` so that positive labels alone can lift spectra (it
only damps the uninteresting):

* the forest also sees a random sample of unlabelled spectra at the neutral interest 1/2, weighted to
  match the labels in total, so far from anything labelled it predicts 1/2 and the anomaly order
  stands (exploration), while near labelled spectra it predicts their interest (exploitation);
* the modulation is additive on the anomaly score's percentile ``s`` in (0, 1]:

      priority = s + exploitation · (2·interest − 1) + exploration · spread

  where ``spread`` is the standard deviation of the trees' predictions: an upper-confidence bonus that
  sends the astronomer to spectra whose interest the labels do not settle yet.

With ``exploitation = 1`` a spectrum the forest is sure is wanted moves up by the whole percentile range;
with ``0`` the order is the anomaly score's. Plain numpy and scikit-learn, vectorized over spectra.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl
from sklearn.ensemble import RandomForestRegressor

from qad_assets.science.ranking.candidates import interest_features

NEUTRAL = 0.5


@dataclass(frozen=True)
class InterestOptions:
    """How much the labels move the ranking (``exploitation``), how much uncertainty is rewarded
    (``exploration``), how many unlabelled spectra anchor the neutral interest, and the forest.
    """

    exploitation: float = 1.0
    exploration: float = 0.25
    background: int = 1000
    trees: int = 200
    min_samples_leaf: int = 2
    seed: int = 0


@dataclass(frozen=True)
class Reranking:
    """Per spectrum: ``priority`` (higher = look first), predicted ``interest`` (0..1, 1/2 = neutral) and its
    ``spread`` across trees.
    """

    priority: np.ndarray
    interest: np.ndarray
    spread: np.ndarray


def score_percentile(score: np.ndarray) -> np.ndarray:
    """Rank-based percentile of the anomaly score in (0, 1], 1 = most anomalous; NaN scores get 0."""
    n = len(score)
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")
    percentile = np.empty(n)
    percentile[order] = 1.0 - np.arange(n) / max(n, 1)
    return np.where(np.isfinite(score), percentile, 0.0)


def rerank(
    score: np.ndarray,
    features: np.ndarray,
    labelled: np.ndarray,
    interest: np.ndarray,
    options: InterestOptions = InterestOptions(),
) -> Reranking:
    """Priorities of all ``N`` spectra from their anomaly ``score`` (N,), ``features`` (N, F; NaN allowed)
    and the ``interest`` (M,) of the spectra at indices ``labelled`` (M,). Without labels: the score's order.
    """
    n = len(score)
    percentile = score_percentile(np.asarray(score, np.float64))
    labelled = np.asarray(labelled, np.int64)
    if labelled.size == 0:
        return Reranking(percentile, np.full(n, NEUTRAL), np.zeros(n))
    rng = np.random.default_rng(options.seed)
    unlabelled = np.setdiff1d(np.arange(n), labelled)
    background = rng.choice(unlabelled, min(options.background, unlabelled.size), replace=False)
    rows = np.concatenate([labelled, background])
    target = np.concatenate([np.asarray(interest, np.float64), np.full(background.size, NEUTRAL)])
    weight = np.concatenate([np.ones(labelled.size), np.full(background.size, labelled.size / max(background.size, 1))])
    forest = RandomForestRegressor(
        n_estimators=options.trees,
        min_samples_leaf=options.min_samples_leaf,
        max_features="sqrt",
        random_state=options.seed,
        n_jobs=1,
    ).fit(features[rows], target, sample_weight=weight)
    mean, spread = _tree_moments(forest, features)
    priority = percentile + options.exploitation * (2.0 * mean - 1.0) + options.exploration * spread
    return Reranking(priority, mean, spread)


def _tree_moments(forest: RandomForestRegressor, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the trees' predictions, accumulated tree by tree (memory O(N))."""
    total = np.zeros(len(features))
    squares = np.zeros(len(features))
    for tree in forest.estimators_:
        prediction = tree.predict(features)
        total += prediction
        squares += prediction**2
    mean = total / len(forest.estimators_)
    return mean, np.sqrt(np.maximum(squares / len(forest.estimators_) - mean**2, 0.0))


def priority_rank(priority: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """1-based rank by priority among ``eligible`` spectra (the unlabelled), 0 for the others."""
    order = np.argsort(-np.where(eligible, priority, -np.inf), kind="stable")
    ranks = np.zeros(len(priority), np.int64)
    ranks[order[: int(eligible.sum())]] = np.arange(1, int(eligible.sum()) + 1)
    return ranks


def rank_candidates(
    candidates: pl.DataFrame,
    labels: Mapping[int, str],
    interest_of: Mapping[str, float],
    options: InterestOptions = InterestOptions(),
) -> pl.DataFrame:
    """The ``candidate_ranking`` table: per candidate (``read_candidates``' rows), its ``label`` (TARGETID →
    label code; codes without an interest value are shown but not learned from), ``interest``,
    ``interest_spread``, ``priority`` and ``priority_rank`` (1 = look next; 0 for labelled candidates).
    """
    targetid = candidates["TARGETID"].to_numpy()
    label = np.array([labels.get(int(t), "") for t in targetid], dtype=object)
    learned = np.array([code in interest_of for code in label])
    result = rerank(
        candidates["anomaly_score"].to_numpy(),
        interest_features(candidates),
        np.flatnonzero(learned),
        np.array([interest_of[code] for code in label[learned]], np.float64),
        options,
    )
    return candidates.select("TARGETID", "partition", "row", "anomaly_score", "rank").with_columns(
        pl.Series("label", label.astype(str)),
        pl.Series("interest", result.interest),
        pl.Series("interest_spread", result.spread),
        pl.Series("priority", result.priority),
        pl.Series("priority_rank", priority_rank(result.priority, label == "")),
    )
