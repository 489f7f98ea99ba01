"""The train/validation split of a release: by a stable hash of TARGETID, never by file order.

Training holds out the validation rows, the scorer calibrates on them, the baselines and the validation
harness use the same ones: so every part of the pipeline agrees on which spectra a model has seen,
whatever the partitioning, worker count or machine (no Python ``hash()``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Split = Literal["train", "val"]


def splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer of int64 values: a fast, well-mixed, platform-stable uint64 hash."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def select_rows(
    targetid: np.ndarray, split: Split, val_fraction: float, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """Rows of ``split`` owned by ``rank``: top 53 hash bits pick the split, low bits the rank."""
    h = splitmix64(targetid)
    is_val = split_position(h) < val_fraction
    in_split = is_val if split == "val" else ~is_val
    return in_split & (h % np.uint64(world_size) == np.uint64(rank))


def split_position(hashes: np.ndarray) -> np.ndarray:
    """Where each row falls in [0, 1) (the top 53 bits of its ``splitmix64`` hash): a row is held out
    when this is below ``val_fraction``. Exposed so that a fraction can be chosen for given rows."""
    return (hashes >> np.uint64(11)).astype(np.float64) * 2.0**-53
