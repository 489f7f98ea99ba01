"""The desi-qad code location: it assembles, it does not compute."""

from __future__ import annotations

import dagster as dg

from jobs.jobs import pipeline_job
from qad_assets.assets.normalized_spectra import normalized_spectra
from qad_assets.assets.raw_spectra import raw_spectra
from qad_assets.assets.spectral_features import spectral_features
from resources import resources_from_env

defs = dg.Definitions(
    assets=[raw_spectra, normalized_spectra, spectral_features],
    jobs=[pipeline_job],
    resources=resources_from_env(),
)
