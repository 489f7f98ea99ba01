"""Jobs: one per way the lab runs the pipeline."""

from __future__ import annotations

import dagster as dg

pipeline_job = dg.define_asset_job(
    "qad_pipeline",
    selection=dg.AssetSelection.all(),
    description="Every per-partition product of the selected spectra partitions, with their checks.",
)
