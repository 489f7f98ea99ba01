"""Why a spectrum scored as it did: the rest-frame region and the observed arm that hold its excess χ²."""

from __future__ import annotations

import numpy as np

from qad_assets.science.spectra.arms import ARM_EDGES, arm_index
from qad_assets.science.spectra.rest_frame import REGION_NAMES, RestFrameGrid, region_codes


def _largest_excess(pixel_chi2: np.ndarray, observed: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Per spectrum, the group whose χ² most exceeds its pixel share of the spectrum's total χ².

    ``excess_g = χ²_g − n_g·χ²/n``: a region that holds many pixels and a region with a few bad ones
    compete on the same footing, and a spectrum's overall misfit level cancels. ``groups`` is (P,) or
    (N, P) with −1 for pixels in no group.
    """
    groups = np.broadcast_to(groups, pixel_chi2.shape)
    chi2_total = pixel_chi2.sum(axis=1, keepdims=True)
    n_total = np.maximum(observed.sum(axis=1, keepdims=True), 1)
    excess = np.stack(
        [
            (np.where(groups == g, pixel_chi2, 0.0)).sum(axis=1)
            - (observed & (groups == g)).sum(axis=1) * chi2_total[:, 0] / n_total[:, 0]
            for g in range(n_groups)
        ],
        axis=1,
    )
    return np.argmax(excess, axis=1)


def explain(pixel_chi2: np.ndarray, observed: np.ndarray, z: np.ndarray, grid: RestFrameGrid) -> dict[str, np.ndarray]:
    """``top_region`` (+ its raw share of χ²) and ``worst_arm`` of each spectrum; '' when nothing is observed."""
    codes = region_codes(grid)
    region_ids = np.asarray(sorted(REGION_NAMES))
    region_of_pixel = np.searchsorted(region_ids, codes)
    top = _largest_excess(pixel_chi2, observed, region_of_pixel, region_ids.size)
    chi2_total = pixel_chi2.sum(axis=1)
    top_chi2 = np.where(region_of_pixel[None, :] == top[:, None], pixel_chi2, 0.0).sum(axis=1)
    arm = _largest_excess(pixel_chi2, observed, arm_index(grid, z), len(ARM_EDGES))
    has_data = observed.any(axis=1)
    names = np.asarray([REGION_NAMES[c] for c in region_ids])
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(chi2_total > 0, top_chi2 / chi2_total, np.nan)
    return {
        "top_region": np.where(has_data, names[top], ""),
        "top_region_share": np.where(has_data, share, np.nan),
        "worst_arm": np.where(has_data, np.asarray(list(ARM_EDGES))[arm], ""),
    }
