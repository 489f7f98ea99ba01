"""``raw_spectra``: DESI healpix coadd + redrock files → quasar spectra on the brz grid, in Parquet."""

from functools import partial

import dagster as dg

from qad_assets.assets.fan_out import (
    ACCOUNTING_CHECKS,
    accounting_checks,
    arrow_table_schema,
    check_specs,
    run_partition_steps,
    stage_metadata,
)
from qad_assets.partitions import SpectraPartition, spectra_partitions
from qad_assets.science.io.spectra_file import RAW_SPECTRA_SCHEMA
from qad_assets.science.partition_steps import ingest_healpix_coadd
from resources.archive import ArchiveResource
from resources.k8s import K8S_CPU_TAGS
from resources.ray import RayResource
from resources.storage import StorageResource

SPECTRA_BACKFILL = dg.BackfillPolicy.multi_run(max_partitions_per_run=256)
PARTITION_RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)


@dg.asset(
    partitions_def=spectra_partitions,
    backfill_policy=SPECTRA_BACKFILL,
    retry_policy=PARTITION_RETRY,
    check_specs=check_specs("raw_spectra", ACCOUNTING_CHECKS),
    op_tags=K8S_CPU_TAGS,
    kinds={"parquet", "ray"},
    group_name="spectra",
    code_version="1",
)
def raw_spectra(
    context: dg.AssetExecutionContext, storage: StorageResource, archive: ArchiveResource, ray: RayResource
) -> dg.MaterializeResult:
    """Quasar spectra of one HEALPix coadd each, arms merged on the 7781-pixel brz grid.

    Every FIBERMAP row is kept, filtered (not a good quasar target) or quarantined (bad data); the
    ledger beside each file says which and why.
    """

    def step_for(key: str):
        return partial(
            ingest_healpix_coadd,
            archive.coadd_for(key),
            release=SpectraPartition.from_key(key).release,
            out=storage.partition_file("raw_spectra", key),
            ledger_out=storage.ledger_file("raw_spectra", key),
            qso_catalog=archive.qso_catalog,
            catalog_z=archive.catalog_z,
            archive_root=archive.root,
        )

    summaries = run_partition_steps(context, ray, step_for)
    return dg.MaterializeResult(
        metadata={**stage_metadata(summaries), "dagster/column_schema": arrow_table_schema(RAW_SPECTRA_SCHEMA)},
        check_results=accounting_checks("raw_spectra", summaries),
    )
