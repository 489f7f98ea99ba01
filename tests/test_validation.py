"""Pieces of the release validation: cross-match of candidates, JSON-safe metrics, seed stability."""

import json
import math

import numpy as np
import pyarrow as pa

from qad_assets.science.validation.harness import crossmatch, json_safe, seed_stability


def candidates() -> pa.Table:
    return pa.table(
        {
            "TARGETID": pa.array([39627866878511337, 39627866878514741, 39633300968442591], pa.int64()),
            "rank": pa.array([1, 2, 3], pa.int64()),
            "TARGET_RA": [150.0, 150.1, 210.0],
            "TARGET_DEC": [2.0, 2.1, -5.0],
        }
    )


def test_crossmatch_by_targetid() -> None:
    catalogue = pa.table({"TARGETID": pa.array([39627866878514741, 1], pa.int64())})
    assert crossmatch(candidates(), catalogue)["known"].to_pylist() == [False, True, False]


def test_crossmatch_by_sky_position_within_the_radius() -> None:
    arcsec = 1 / 3600
    catalogue = pa.table({"RA": [150.0 + 0.5 * arcsec, 210.0 + 5 * arcsec], "DEC": [2.0, -5.0]})
    assert crossmatch(candidates(), catalogue, radius_arcsec=1.5)["known"].to_pylist() == [True, False, False]


def test_metrics_become_strict_json() -> None:
    metrics = {"auroc": float("nan"), "n": np.int64(3), "per_bin": {"0≤snr<1": [np.float32(0.5), math.inf]}}
    safe = json_safe(metrics)
    assert json.loads(json.dumps(safe, allow_nan=False)) == {"auroc": None, "n": 3, "per_bin": {"0≤snr<1": [0.5, None]}}


def test_seed_stability_counts_the_shared_top_candidates() -> None:
    a = np.arange(200, dtype=float)
    b = a.copy()
    b[[199, 198]] = [0.0, -1.0]  # two of the top 1 % (2 spectra) replaced by others
    assert seed_stability(a, a)["jaccard"] == 1.0
    assert seed_stability(a, b) == {"top_fraction": 0.01, "jaccard": 0.0, "n_top": 2}
