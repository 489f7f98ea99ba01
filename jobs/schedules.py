"""The nightly schedule: materialize every spectra partition that is new or missing a product."""

import dagster as dg

from jobs.jobs import spectra_job
from qad_assets.partitions import contiguous_ranges, range_tags, spectra_partitions

SPECTRA_ASSETS = ("raw_spectra", "normalized_spectra", "spectral_features")


@dg.schedule(
    cron_schedule="0 3 * * *",
    job=spectra_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
def nightly_pipeline(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    """At 03:00 UTC: one run per contiguous range of partitions lacking any per-partition product.

    Downstream per-release products follow through their automation conditions.
    """
    instance = context.instance
    order = instance.get_dynamic_partitions(spectra_partitions.name)
    done = set(order)
    for asset in SPECTRA_ASSETS:
        done &= instance.get_materialized_partitions(dg.AssetKey(asset))
    todo = [key for key in order if key not in done]
    if not todo:
        return dg.SkipReason(f"all {len(order)} spectra partitions are materialized")
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [
        dg.RunRequest(run_key=f"nightly-{day}-{first}..{last}", tags=range_tags(first, last))
        for first, last in contiguous_ranges(order, todo)
    ]
