"""The candidate table and the re-ranking by labels, on synthetic releases (seconds, no pipeline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from explorer_release import SyntheticRelease, write_release

from qad_assets.errors import UserError
from qad_assets.labels.vocabulary import default_interest
from qad_assets.science.ranking.candidates import interest_features, read_candidates
from qad_assets.science.ranking.inspection import simulate_inspection
from qad_assets.science.ranking.interest import (
    InterestOptions,
    priority_rank,
    rank_candidates,
    rerank,
    score_percentile,
)
from qad_assets.science.validation.labelled import labelled_truth


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRelease:
    return write_release(tmp_path_factory.mktemp("synthetic"), partitions=4, rows=150)


def test_candidates_join_every_product_and_take_optional_columns_where_present(synthetic: SyntheticRelease) -> None:
    candidates = read_candidates(synthetic.storage, synthetic.release)
    assert candidates["TARGETID"].to_list() == synthetic.targetids.tolist()
    assert {"RA", "DEC", "civ_bi", "alpha_lambda", "partition", "row", "latent", "top_component"} <= set(
        candidates.columns
    )
    first = candidates.filter(pl.col("partition") == candidates["partition"][0])
    assert first["top_component"].null_count() == 0  # the partition scored by the newer run
    assert candidates["top_component"].null_count() == len(candidates) - len(first)
    assert candidates.group_by("partition").agg(pl.col("row").max())["row"].to_list() == [149] * 4
    assert interest_features(candidates).shape == (600, 12 + 5)
    with pytest.raises(UserError, match="no anomaly_scores"):
        read_candidates(synthetic.storage, "missing")


def test_score_percentile_and_priority_rank() -> None:
    percentile = score_percentile(np.array([0.5, np.nan, 3.0, -1.0]))
    assert percentile.tolist() == [0.75, 0.0, 1.0, 0.5]
    ranks = priority_rank(np.array([0.1, 0.9, 0.5, 0.7]), np.array([True, False, True, True]))
    assert ranks.tolist() == [3, 0, 2, 1]


def test_without_labels_the_order_is_the_scores() -> None:
    score = np.random.default_rng(0).normal(size=50)
    result = rerank(score, np.zeros((50, 3)), np.array([], np.int64), np.array([]))
    assert np.array_equal(np.argsort(-result.priority), np.argsort(-score))
    assert np.all(result.interest == 0.5)


def recall_top(order: np.ndarray, members: np.ndarray, top: int) -> float:
    return float(members[order[:top]].sum() / members.sum())


def test_labels_lift_spectra_like_the_wanted_and_sink_those_like_the_unwanted() -> None:
    """Two clusters in feature space, one wanted and one not, both mildly anomalous: ten labels of each
    move the rest of each cluster up and down the unlabelled queue.
    """
    rng = np.random.default_rng(1)
    n = 2000
    features = rng.normal(size=(n, 20))
    wanted, unwanted = np.zeros(n, bool), np.zeros(n, bool)
    wanted[:60], unwanted[60:120] = True, True
    features[wanted, 0] += 3.0
    features[unwanted, 1] += 3.0
    features[rng.random((n, 20)) < 0.05] = np.nan  # features not measurable everywhere
    score = rng.normal(size=n) + 1.0 * (wanted | unwanted)
    labelled = np.concatenate([np.flatnonzero(wanted)[:10], np.flatnonzero(unwanted)[:10]])
    interest = np.repeat([1.0, 0.0], 10)
    result = rerank(score, features, labelled, interest, InterestOptions(seed=0))
    queue = np.setdiff1d(np.arange(n), labelled)
    plain = queue[np.argsort(-score[queue], kind="stable")]
    reranked = queue[np.argsort(-result.priority[queue], kind="stable")]
    assert recall_top(reranked, wanted, 100) > recall_top(plain, wanted, 100) + 0.3
    assert recall_top(reranked, unwanted, 100) < recall_top(plain, unwanted, 100)
    assert result.interest[wanted].mean() > 0.6 > 0.4 > result.interest[unwanted].mean()
    assert abs(np.median(result.interest[~(wanted | unwanted)]) - 0.5) < 0.1  # elsewhere: no opinion


def test_rank_candidates_ranks_only_the_unlabelled(synthetic: SyntheticRelease) -> None:
    candidates = read_candidates(synthetic.storage, synthetic.release)
    labels = {int(t): "bal" for t in synthetic.groups["troughs"][:10]}
    labels[int(synthetic.groups["spikes"][0])] = "artifact"
    ranking = rank_candidates(candidates, labels, default_interest(), InterestOptions(trees=50))
    labelled = ranking.filter(pl.col("label") != "")
    assert len(labelled) == 11 and (labelled["priority_rank"] == 0).all()
    queue = ranking.filter(pl.col("label") == "")["priority_rank"].sort().to_list()
    assert queue == list(range(1, len(ranking) - 10))


def test_simulated_inspection_reports_recall_before_and_after(synthetic: SyntheticRelease, tmp_path: Path) -> None:
    candidates = read_candidates(synthetic.storage, synthetic.release)
    truth = {int(t): name for name, ids in synthetic.groups.items() for t in ids}
    wanted = simulate_inspection(
        candidates, truth, "troughs", "bal", interest_of=default_interest(), n_labels=30, tops=(60,)
    )
    assert (wanted.labelled, wanted.remaining) == (30, len(synthetic.groups["troughs"]) - 30)
    assert wanted.recall_reranked[60] > wanted.recall_plain[60]
    unwanted = simulate_inspection(
        candidates, truth, "spikes", "artifact", interest_of=default_interest(), n_labels=30, tops=(60,)
    )
    assert unwanted.recall_reranked[60] < unwanted.recall_plain[60]
    assert unwanted.median_position_reranked > unwanted.median_position_plain


def test_labels_as_truth_give_the_precision_of_the_ranked_head() -> None:
    targetid = np.arange(1, 9)
    score = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, np.nan])
    labels = {1: "bal", 2: "normal", 4: "artifact", 5: "bal", 8: "star", 99: "bal"}  # 99: not in the release
    truth = labelled_truth(targetid, score, labels, ks=(2, 10))
    assert truth["labelled"] == 5 and truth["counts"] == {"artifact": 1, "bal": 2, "normal": 1, "star": 1}
    assert truth["precision_at_k"]["2"] == {
        "k_used": 2,
        "anomalous": 0.5,
        "artifact": 0.0,
        "bal": 0.5,
        "normal": 0.5,
        "star": 0.0,
    }
    assert truth["precision_at_k"]["10"]["k_used"] == 5 and truth["precision_at_k"]["10"]["anomalous"] == 0.8
    assert labelled_truth(targetid, score, {})["precision_at_k"] == {}
