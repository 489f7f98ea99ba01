"""The rest-frame grid: one log-λ grid for every quasar, its emission lines and its regions.

Everything downstream of ``raw_spectra`` (features, the VAE, anomaly scores) sees quasars on one
log-λ rest-frame grid, defined here once (:data:`REST_GRID`, rationale in ``docs/rest_frame.md``).

Units: wavelengths are vacuum Å. Resampling onto the grid is :mod:`.resampling`, normalization
:mod:`.normalization`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

C_KMS = 299792.458

#: Rest-frame vacuum wavelengths (Å) of the broad lines the pipeline uses (Vanden Berk et al. 2001, Table 2).
EMISSION_LINES: dict[str, float] = {
    "LyA": 1215.67,
    "NV": 1240.81,
    "SiIV": 1396.76,
    "CIV": 1549.06,
    "CIII]": 1908.73,
    "MgII": 2798.75,
    "Hbeta": 4862.68,
    "Halpha": 6564.61,
}

#: Lyα: blueward of it, intergalactic H I absorbs the quasar light (the Lyα forest).
LYA_FOREST_MAX = EMISSION_LINES["LyA"]

#: Below this rest wavelength the normalization ignores pixels (Lyα forest and the Lyα peak).
NORM_MIN_WAVE = 1250.0

#: A spectrum with fewer good rest pixels than this (≈ a factor 1.8 in λ at 173 km/s per pixel) is
#: flagged ``low_coverage``: too little of the quasar to model.
MIN_GOOD_REST_PIXELS = 1000

REGION_CONTINUUM = 0
REGION_LYA_FOREST = 1
REGION_LYA_NV = 2
REGION_SIIV = 3
REGION_CIV = 4
REGION_CIII = 5
REGION_MGII = 6
REGION_HBETA = 7
REGION_HALPHA = 8

#: Broad-line windows (rest Å, [lo, hi)) of the per-pixel region code; they do not overlap.
REGION_WINDOWS: dict[int, tuple[float, float]] = {
    REGION_LYA_NV: (LYA_FOREST_MAX, 1290.0),
    REGION_SIIV: (1360.0, 1440.0),
    REGION_CIV: (1500.0, 1600.0),
    REGION_CIII: (1850.0, 1970.0),
    REGION_MGII: (2700.0, 2900.0),
    REGION_HBETA: (4760.0, 4950.0),
    REGION_HALPHA: (6400.0, 6720.0),
}


@dataclass(frozen=True)
class RestFrameGrid:
    """A log10-λ spaced rest-frame grid: pixel ``i`` is centred at ``10**(loglam_start + i*loglam_step)`` Å.

    Log spacing makes every pixel the same velocity width, so a broad line spans the same number of
    pixels at every wavelength and every redshift. Bin edges follow ``desispec.interpolation``: midway
    (in λ) between neighbouring centres, the outer ones mirrored.
    """

    loglam_start: float
    loglam_step: float
    npix: int

    @cached_property
    def wave(self) -> np.ndarray:
        """Pixel centres, rest vacuum Å (read-only)."""
        wave = 10.0 ** (self.loglam_start + self.loglam_step * np.arange(self.npix))
        wave.flags.writeable = False
        return wave

    @cached_property
    def edges(self) -> np.ndarray:
        """``npix + 1`` bin edges, rest Å (read-only)."""
        edges = _bin_edges(self.wave)
        edges.flags.writeable = False
        return edges

    @property
    def velocity_step_kms(self) -> float:
        """Pixel width in km/s: c · ln(10) · Δlog10 λ."""
        return C_KMS * math.log(10.0) * self.loglam_step

    def to_dict(self) -> dict[str, Any]:
        """The grid as plain numbers, for asset metadata and the Parquet schema."""
        return {
            "loglam_start": self.loglam_start,
            "loglam_step": self.loglam_step,
            "npix": self.npix,
            "wave_min": float(self.wave[0]),
            "wave_max": float(self.wave[-1]),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RestFrameGrid:
        return cls(float(d["loglam_start"]), float(d["loglam_step"]), int(d["npix"]))


#: The pipeline's rest-frame grid: 800–8450 Å, Δlog10 λ = 2.5e-4 (172.6 km/s), 4096 pixels.
REST_GRID = RestFrameGrid(loglam_start=math.log10(800.0), loglam_step=2.5e-4, npix=4096)


def _bin_edges(centres: np.ndarray) -> np.ndarray:
    """Edges midway between centres, outer edges mirrored (the ``desispec`` resample convention)."""
    edges = np.empty(centres.size + 1)
    edges[1:-1] = 0.5 * (centres[:-1] + centres[1:])
    edges[0] = 1.5 * centres[0] - 0.5 * centres[1]
    edges[-1] = 1.5 * centres[-1] - 0.5 * centres[-2]
    return edges


def lya_forest_mask(grid: RestFrameGrid = REST_GRID) -> np.ndarray:
    """True blueward of Lyα (1215.67 Å), where intergalactic H I absorption makes the flux not intrinsic."""
    return grid.wave < LYA_FOREST_MAX


def region_codes(grid: RestFrameGrid = REST_GRID) -> np.ndarray:
    """int8 code per pixel: a broad-line window, else ``REGION_LYA_FOREST`` below Lyα, else continuum."""
    codes = np.full(grid.npix, REGION_CONTINUUM, np.int8)
    codes[lya_forest_mask(grid)] = REGION_LYA_FOREST
    for code, (lo, hi) in REGION_WINDOWS.items():
        codes[(grid.wave >= lo) & (grid.wave < hi)] = code
    return codes


#: Region names of the ``rest_frame`` region codes, as ``top_region`` reports them.
REGION_NAMES: dict[int, str] = {
    REGION_CONTINUUM: "continuum",
    REGION_LYA_FOREST: "lya_forest",
    REGION_LYA_NV: "lya_nv",
    REGION_SIIV: "siiv",
    REGION_CIV: "civ",
    REGION_CIII: "ciii",
    REGION_MGII: "mgii",
    REGION_HBETA: "hbeta",
    REGION_HALPHA: "halpha",
}


def grid_fingerprint(grid: Any) -> str:
    """SHA-256 of the grid's float64 wavelengths (an array, an object with ``.wave``, or a hash)."""
    if isinstance(grid, str):
        return grid
    wave = np.ascontiguousarray(getattr(grid, "wave", grid), dtype="<f8")
    return hashlib.sha256(wave.tobytes()).hexdigest()
