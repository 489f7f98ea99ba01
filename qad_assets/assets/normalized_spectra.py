"""``normalized_spectra``: quasars in the rest frame on one log-λ grid, normalized, ivar and coverage kept."""

from functools import partial

import dagster as dg

from qad_assets.assets.fan_out import (
    arrow_table_schema,
    check_result,
    check_specs,
    run_partition_steps,
    stage_metadata,
)
from qad_assets.assets.raw_spectra import PARTITION_RETRY, SPECTRA_BACKFILL, raw_spectra
from qad_assets.partitions import spectra_partitions
from qad_assets.science.io.parquet_store import read_table, row_count, schema_matches
from qad_assets.science.partition_steps import NORMALIZED_MEDIAN_BAND, StepSummary, normalize_partition
from qad_assets.science.spectra import ledger
from qad_assets.science.spectra.normalization import NORMALIZED_SCHEMA
from qad_assets.science.spectra.rest_frame import REST_GRID
from resources.gpu import GpuResource
from resources.k8s import K8S_GPU_TAGS
from resources.ray import RayResource
from resources.storage import StorageResource

#: Above this fraction of low-coverage spectra in a run the coverage check warns.
LOW_COVERAGE_WARN_FRACTION = 0.05

CHECKS = {
    "matches_raw_spectra": (True, "schema is NORMALIZED_SCHEMA and rows equal raw_spectra's kept rows"),
    "finite_values": (True, "no NaN or inf in flux, ivar or scale"),
    "median_flux_in_band": (False, f"per-spectrum median normalized flux within {NORMALIZED_MEDIAN_BAND}"),
    "coverage": (False, f"at most {LOW_COVERAGE_WARN_FRACTION:.0%} of spectra flagged low_coverage (flagged, kept)"),
}


@dg.asset(
    partitions_def=spectra_partitions,
    deps=[raw_spectra],
    backfill_policy=SPECTRA_BACKFILL,
    retry_policy=PARTITION_RETRY,
    check_specs=check_specs("normalized_spectra", CHECKS),
    automation_condition=dg.AutomationCondition.eager(),
    op_tags=K8S_GPU_TAGS,
    kinds={"parquet", "ray", "torch"},
    group_name="spectra",
    code_version="1",
)
def normalized_spectra(
    context: dg.AssetExecutionContext, storage: StorageResource, ray: RayResource, gpu: GpuResource
) -> dg.MaterializeResult:
    """De-redshifted onto the rest-frame grid (flux-conserving), divided by a robust per-spectrum scale.

    The Lyα forest (rest < 1216 Å) is kept; its pixels are told apart by the grid's region codes.
    """
    device_choice = gpu.choice()
    device = str(device_choice.torch_device())

    def step_for(key: str):
        return partial(
            normalize_partition,
            storage.partition_file("raw_spectra", key),
            out=storage.partition_file("normalized_spectra", key),
            device=device,
        )

    summaries = run_partition_steps(context, ray, step_for, num_gpus=1 if device == "cuda" else 0)
    return dg.MaterializeResult(
        metadata={
            **stage_metadata(summaries),
            "dagster/column_schema": arrow_table_schema(NORMALIZED_SCHEMA),
            "rest_frame_grid": dg.MetadataValue.json(REST_GRID.to_dict()),
            **device_choice.describe(),
        },
        check_results=normalized_checks(storage, summaries),
    )


def normalized_checks(storage: StorageResource, summaries: dict[str, StepSummary]) -> list[dg.AssetCheckResult]:
    """The four checks of the run's partitions, from the written files and the step statistics."""
    mismatched = {}
    for key in summaries:
        written = storage.partition_file("normalized_spectra", key)
        kept = ledger.counts(read_table(storage.ledger_file("raw_spectra", key)))[ledger.KEPT]
        rows = row_count(written)
        if rows != kept or not schema_matches(written, NORMALIZED_SCHEMA):
            mismatched[key] = {"rows": rows, "raw_kept": kept, "schema_ok": schema_matches(written, NORMALIZED_SCHEMA)}
    total = sum(s.kept for s in summaries.values())

    def stat(name: str) -> dict[str, int]:
        return {k: int(s.stats[name]) for k, s in summaries.items() if s.stats.get(name)}

    nonfinite = {k: int(s.stats["nonfinite_values"] + s.stats["nonfinite_scale"]) for k, s in summaries.items()}
    nonfinite = {k: v for k, v in nonfinite.items() if v}
    outside = stat("median_outside_band")
    low = stat("low_coverage")
    low_fraction = sum(low.values()) / max(total, 1)

    def result(name: str, passed: bool, **metadata: object) -> dg.AssetCheckResult:
        return check_result("normalized_spectra", CHECKS, name, passed, metadata)

    return [
        result("matches_raw_spectra", not mismatched, mismatched=dg.MetadataValue.json(mismatched), rows=total),
        result("finite_values", not nonfinite, partitions_with_nonfinite=dg.MetadataValue.json(nonfinite)),
        result(
            "median_flux_in_band",
            not outside,
            spectra_outside_band=sum(outside.values()),
            band=str(NORMALIZED_MEDIAN_BAND),
        ),
        result(
            "coverage",
            low_fraction <= LOW_COVERAGE_WARN_FRACTION,
            low_coverage_spectra=sum(low.values()),
            low_coverage_fraction=round(low_fraction, 4),
            warn_above=LOW_COVERAGE_WARN_FRACTION,
        ),
    ]
