"""The desi-qad code location: it assembles, it does not compute."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from jobs.jobs import rank_job, report_job, score_job, score_with_champion_job, spectra_job, train_job
from jobs.schedules import nightly_pipeline
from jobs.sensors import new_release_partitions
from qad_assets.assets.anomaly_scores import anomaly_scores
from qad_assets.assets.candidate_ranking import candidate_ranking
from qad_assets.assets.normalized_spectra import normalized_spectra
from qad_assets.assets.raw_spectra import raw_spectra
from qad_assets.assets.spectral_features import spectral_features
from qad_assets.assets.vae_model import vae_model
from qad_assets.assets.validation_report import validation_report
from resources import resources_from_env


def build_definitions(resources: Mapping[str, Any]) -> dg.Definitions:
    """The code location with these resources: the CLI passes its own, built from a run's settings."""
    return dg.Definitions(
        assets=[
            raw_spectra,
            normalized_spectra,
            spectral_features,
            vae_model,
            anomaly_scores,
            validation_report,
            candidate_ranking,
        ],
        jobs=[spectra_job, train_job, score_job, score_with_champion_job, report_job, rank_job],
        schedules=[nightly_pipeline],
        sensors=[new_release_partitions],
        resources=resources,
    )


defs = build_definitions(resources_from_env())
