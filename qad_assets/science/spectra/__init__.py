"""Spectra: DESI's arms, row selection, S/N, the rest-frame grid, resampling, normalization, features."""

from qad_assets.science.spectra.arms import ARM_WAVE, ARMS, BRZ_WAVE, merge_arms
from qad_assets.science.spectra.features import spectral_features
from qad_assets.science.spectra.normalization import NORMALIZED_SCHEMA, normalize, normalize_batch, normalized_table
from qad_assets.science.spectra.observed import normalize_observed, observed_spectrum
from qad_assets.science.spectra.resampling import resample_to_rest
from qad_assets.science.spectra.rest_frame import REST_GRID, RestFrameGrid, lya_forest_mask, region_codes
from qad_assets.science.spectra.selection import bad_pixels
from qad_assets.science.spectra.snr import spectrum_snr

__all__ = [
    "ARMS",
    "ARM_WAVE",
    "BRZ_WAVE",
    "NORMALIZED_SCHEMA",
    "REST_GRID",
    "RestFrameGrid",
    "bad_pixels",
    "lya_forest_mask",
    "merge_arms",
    "normalize",
    "normalize_batch",
    "normalize_observed",
    "normalized_table",
    "observed_spectrum",
    "region_codes",
    "resample_to_rest",
    "spectral_features",
    "spectrum_snr",
]
