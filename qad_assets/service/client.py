"""Request bodies for ``POST /score`` from spectra already in the pipeline's own format.

For notebooks and scripts: ``requests.post(url + "/score", json=score_request(raw_table))`` scores
rows of a ``raw_spectra`` table (DESI's merged brz arrays) with the service's champion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from qad_assets.science.spectra.arms import BRZ_WAVE
from qad_assets.science.spectra.container import list_to_numpy


def score_request(raw_spectra: pa.Table, rows: Sequence[int] | None = None, *, release: str | None = None) -> dict:
    """A ``ScoreRequest`` body for ``rows`` (default all) of a ``raw_spectra`` table: the shared brz
    wavelength grid once, and per spectrum flux, ivar, the mask (1 where not ``good``), Z and TARGETID.
    """
    flux, ivar, good = (list_to_numpy(raw_spectra[c]) for c in ("flux", "ivar", "good"))
    z, targetid = raw_spectra["Z"].to_pylist(), raw_spectra["TARGETID"].to_pylist()
    spectra = [
        {
            "flux": flux[i].tolist(),
            "ivar": ivar[i].tolist(),
            "mask": (~good[i]).astype(np.int64).tolist(),
            "redshift": z[i],
            "targetid": targetid[i],
        }
        for i in (range(raw_spectra.num_rows) if rows is None else rows)
    ]
    return {"release": release, "wavelength": BRZ_WAVE.tolist(), "spectra": spectra}
