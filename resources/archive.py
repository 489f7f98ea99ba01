"""The DESI archive the pipeline reads: a local tree, the public DESI site, or a bucket."""

from __future__ import annotations

import dagster as dg

from qad_assets.partitions import SpectraPartition
from qad_assets.science.io.archive import HealpixCoadd, healpix_coadd


class ArchiveResource(dg.ConfigurableResource):
    """A DESI data tree (``QAD_ARCHIVE``) and how quasars are chosen from it.

    ``specprod`` maps a release name to its production folder when they differ (``--release``);
    ``qso_catalog`` restricts selection to a DESI QSO catalogue and, with ``catalog_z``, takes its
    redshifts.
    """

    root: str
    specprod: str | None = None
    qso_catalog: str | None = None
    catalog_z: bool = True

    def coadd_for(self, key: str) -> HealpixCoadd:
        part = SpectraPartition.from_key(key)
        return healpix_coadd(self.root, self.specprod or part.release, part.survey, part.program, part.healpix)
