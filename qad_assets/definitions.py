"""The desi-qad code location: it assembles, it does not compute."""

from __future__ import annotations

import dagster as dg

from jobs.jobs import pipeline_job
from qad_assets.assets.raw_spectra import raw_spectra
from resources import resources_from_env

defs = dg.Definitions(
    assets=[raw_spectra],
    jobs=[pipeline_job],
    resources=resources_from_env(),
)
