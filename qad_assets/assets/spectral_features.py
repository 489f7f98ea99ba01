"""``spectral_features``: per-quasar S/N, continuum slope, broad-line and BAL measurements."""

from functools import partial

import dagster as dg

from qad_assets.assets.fan_out import run_partition_steps, stage_metadata
from qad_assets.assets.normalized_spectra import normalized_spectra
from qad_assets.assets.raw_spectra import PARTITION_RETRY, SPECTRA_BACKFILL
from qad_assets.partitions import spectra_partitions
from qad_assets.science.partition_steps import feature_partition
from resources.gpu import GpuResource
from resources.k8s import K8S_GPU_TAGS
from resources.ray import RayResource
from resources.storage import StorageResource


@dg.asset(
    partitions_def=spectra_partitions,
    deps=[normalized_spectra],
    backfill_policy=SPECTRA_BACKFILL,
    retry_policy=PARTITION_RETRY,
    automation_condition=dg.AutomationCondition.eager(),
    op_tags=K8S_GPU_TAGS,
    kinds={"parquet", "ray", "polars"},
    group_name="spectra",
    code_version="1",
)
def spectral_features(
    context: dg.AssetExecutionContext, storage: StorageResource, ray: RayResource, gpu: GpuResource
) -> dg.MaterializeResult:
    """One feature row per quasar: median S/N (overall and per arm), continuum slope α_λ, EW / FWHM /
    velocity offset of the covered broad lines, and the DESI BAL finder's BI and AI for CIV and SiIV.

    Built with polars; with a GPU and cuDF installed, the frame is a cuDF frame (same numbers).
    """
    backend = gpu.choice().dataframe_backend()

    def step_for(key: str):
        return partial(
            feature_partition,
            storage.partition_file("normalized_spectra", key),
            out=storage.partition_file("spectral_features", key),
            backend=backend,
        )

    summaries = run_partition_steps(context, ray, step_for)
    return dg.MaterializeResult(metadata={**stage_metadata(summaries), "dataframe_backend": backend})
