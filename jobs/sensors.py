"""Release discovery: new HEALPix coadds in the archive become partitions, and runs for them."""

import dagster as dg

from jobs.jobs import spectra_job
from qad_assets.config import NAME_PATTERN
from qad_assets.partitions import (
    archive_partition_keys,
    range_tags,
    release_of,
    release_partitions,
    spectra_partitions,
)
from qad_assets.science.io.archive import list_specprods
from resources.archive import ArchiveResource


@dg.sensor(job=spectra_job, minimum_interval_seconds=3600, default_status=dg.DefaultSensorStatus.STOPPED)
def new_release_partitions(context: dg.SensorEvaluationContext, archive: ArchiveResource) -> dg.SensorResult:
    """Scan the archive; add the release × HEALPix partitions not seen before (and their releases) and
    request one run over the new keys, which were appended together and so form one partition range.
    """
    specprods = [archive.specprod] if archive.specprod else list_specprods(archive.root)
    if invalid := [name for name in specprods if NAME_PATTERN.fullmatch(name) is None]:
        context.log.warning(f"skipping productions whose names cannot be release names: {invalid}")
    specprods = [name for name in specprods if name not in invalid]
    found = [key for specprod in specprods for key in archive_partition_keys(archive.root, specprod)]
    known = set(context.instance.get_dynamic_partitions(spectra_partitions.name))
    new = [key for key in found if key not in known]
    if not new:
        return dg.SensorResult(skip_reason=f"no new coadds among {len(found)} in {archive.root}")
    known_releases = set(context.instance.get_dynamic_partitions(release_partitions.name))
    releases = sorted({release_of(key) for key in new} - known_releases)
    return dg.SensorResult(
        dynamic_partitions_requests=[
            spectra_partitions.build_add_request(new),
            release_partitions.build_add_request(releases),
        ],
        run_requests=[
            dg.RunRequest(
                run_key=f"{new[0]}..{new[-1]}",
                tags=range_tags(new[0], new[-1]),
            )
        ],
    )
