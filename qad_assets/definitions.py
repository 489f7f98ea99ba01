"""The desi-qad code location: it assembles, it does not compute."""

from __future__ import annotations

import dagster as dg

from jobs.jobs import spectra_job, train_job
from jobs.schedules import nightly_pipeline
from jobs.sensors import new_release_partitions
from qad_assets.assets.normalized_spectra import normalized_spectra
from qad_assets.assets.raw_spectra import raw_spectra
from qad_assets.assets.spectral_features import spectral_features
from qad_assets.assets.vae_model import vae_model
from resources import resources_from_env

defs = dg.Definitions(
    assets=[raw_spectra, normalized_spectra, spectral_features, vae_model],
    jobs=[spectra_job, train_job],
    schedules=[nightly_pipeline],
    sensors=[new_release_partitions],
    resources=resources_from_env(),
)
