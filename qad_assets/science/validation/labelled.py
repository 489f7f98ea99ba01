"""Astronomers' labels as real truth: how the anomaly ranking does on the candidates people looked at.

Injections say whether the detector finds what we planted; labels say whether what it ranks first is
worth a person's time. Among the labelled candidates, ordered by anomaly score, the precision in the top
``k`` is the fraction of them that are not ``normal``, and per label the fraction that carry it. Labelled
candidates are the ones people chose to look at (mostly high-ranked), so these are precisions of the
ranking's head as inspected, not of a random sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

NORMAL = "normal"


def labelled_truth(
    targetid: np.ndarray, score: np.ndarray, labels: Mapping[int, str], ks: Sequence[int] = (10, 50, 100)
) -> dict[str, Any]:
    """Counts per label and, for each ``k``, the precision of the top ``min(k, labelled)`` labelled
    candidates by ``score``: ``anomalous`` (any label but normal) and per label.
    """
    present = np.array([int(t) in labels for t in targetid], bool)
    ordered = np.argsort(-np.nan_to_num(np.asarray(score, np.float64)[present], nan=-np.inf), kind="stable")
    ranked = [labels[int(t)] for t in np.asarray(targetid)[present][ordered]]
    classes = sorted(set(ranked))
    precision = {}
    for k in ks:
        head = ranked[: min(k, len(ranked))]
        if not head:
            continue
        precision[str(k)] = {
            "k_used": len(head),
            "anomalous": sum(label != NORMAL for label in head) / len(head),
            **{label: head.count(label) / len(head) for label in classes},
        }
    return {
        "labelled": len(ranked),
        "counts": {label: ranked.count(label) for label in classes},
        "precision_at_k": precision,
    }
