"""Real DESI quasars as injection hosts: their real noise, their real lines, whatever release is validated.

``data/real_quasars.parquet`` holds the ``raw_spectra`` rows (observed ``brz`` flux, ivar, good; redshift
from the EDR quasar catalogue) of the seven quasars of the project's real test coadds (EDR ``fuji``:
healpix 9144 of sv3/dark and SV1 tile 80693 petal 1; z = 1.94–3.04), read with the pipeline's own
reader; provenance in ``data/README.md``. Seven hosts are few: every class is injected into each at
every strength several times, and the figures carry their uncertainties (the seven uninjected spectra
are the only real normals; their real noise is kept, never redrawn).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import polars as pl

from qad_assets.science.spectra.arms import BRZ_WAVE
from qad_assets.science.spectra.container import Spectra

REAL_QUASARS = "data/real_quasars.parquet"


@cache
def _table():
    with resources.files("qad_assets.science.validation").joinpath(REAL_QUASARS).open("rb") as handle:
        return pl.read_parquet(handle, columns=["TARGETID", "Z", "flux", "ivar"]).to_arrow()


def real_quasars() -> Spectra:
    """The packaged real quasars as observed spectra on DESI's ``brz`` grid (TARGETID, catalogue Z)."""
    return Spectra.from_table(_table(), BRZ_WAVE)
