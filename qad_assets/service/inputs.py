"""Request bodies → rest-frame spectra for the scorer, and scores → response rows.

Both bodies go through the batch pipeline's own functions: JSON spectra through
``observed_spectra`` (ingestion's pixel rules, the batch resampling), an uploaded coadd through
``read_spectra_file`` and ``normalized_table`` exactly as ``raw_spectra`` and ``normalized_spectra``
read a coadd from the archive. Every problem is an ``HTTPException`` with a 4xx status that says what
is wrong.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
from fastapi import HTTPException
from pydantic import ValidationError

from qad_assets.errors import SpectrumError
from qad_assets.science.io.redshifts import QsoCatalog
from qad_assets.science.io.spectra_file import read_spectra_file
from qad_assets.science.model.package import SCORE_COLUMNS
from qad_assets.science.spectra import ledger
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.normalization import normalized_table
from qad_assets.science.spectra.observed import normalize_observed, observed_spectrum
from qad_assets.science.spectra.rest_frame import REST_GRID
from qad_assets.service.registry import LoadedModel
from qad_assets.service.schema import NotScored, ScoreRequest, SpectrumScore

#: Release name given to an uploaded coadd when the form names none.
UPLOAD_RELEASE = "upload"


def split(spectra: Spectra, size: int) -> list[Spectra]:
    """Pieces of at most ``size`` spectra (one batcher item each)."""
    return [spectra[lo : lo + size] for lo in range(0, len(spectra), size)]


def spectra_from_json(body: bytes, *, max_spectra: int, device: str = "cpu") -> Spectra:
    """A ``ScoreRequest`` JSON body, checked spectrum by spectrum and moved to the rest frame.

    Columns: ``index`` (place in the request), ``has_targetid`` (TARGETID is 0 where none was given),
    ``low_coverage``; ``meta["release"]`` the request's release.
    """
    try:
        request = ScoreRequest.model_validate_json(body)
    except ValidationError as err:
        raise _validation_error(err) from None
    if len(request.spectra) > max_spectra:
        raise HTTPException(413, f"{len(request.spectra)} spectra in one request; at most {max_spectra}")
    shared = None if request.wavelength is None else np.asarray(request.wavelength, np.float64)
    observed = []
    for i, s in enumerate(request.spectra):
        wavelength = s.wavelength if s.wavelength is not None else shared
        try:
            if wavelength is None:
                raise SpectrumError(i, ledger.reason("bad_wavelength", "no wavelength, here or in the request"))
            observed.append(observed_spectrum(i, wavelength, s.flux, s.ivar, s.redshift, s.mask))
        except SpectrumError as err:
            raise HTTPException(422, str(err)) from None
    targetid = [s.targetid for s in request.spectra]
    rest = normalize_observed(observed, [t or 0 for t in targetid], device=device)
    return replace(
        rest.with_columns(has_targetid=np.asarray([t is not None for t in targetid]), index=np.arange(len(observed))),
        meta={"release": request.release},
    )


def _validation_error(err: ValidationError) -> HTTPException:
    """400 for a body that is not JSON, else 422 listing each problem as ``spectra[2].flux: ...``."""
    problems = err.errors(include_url=False)
    if any(p["type"] == "json_invalid" for p in problems):
        return HTTPException(400, f"request body is not valid JSON: {problems[0]['msg']}")
    shown = "; ".join(f"{_location(p['loc'])}: {p['msg']}" for p in problems[:5])
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return HTTPException(422, shown + more)


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def spectra_from_coadd(
    coadd: BinaryIO,
    redrock: BinaryIO | None,
    *,
    filename: str,
    release: str | None,
    qso_catalog: QsoCatalog | None,
    device: str = "cpu",
) -> tuple[Spectra, list[NotScored]]:
    """An uploaded DESI coadd (+ its redrock file) read as ``raw_spectra`` reads one: the quasars to
    score, and every other FIBERMAP row with its ledger reason. With a QSO catalogue the catalogue
    selects quasars and gives redshifts, as in the pipeline. ``filename`` only names the file in messages.
    """
    if redrock is None and qso_catalog is None:
        raise HTTPException(422, "an uploaded coadd needs its redrock file (form field 'redrock') for redshifts")
    with tempfile.TemporaryDirectory(prefix="qad-upload-") as tmp:
        paths = {"coadd": Path(tmp) / "coadd.fits", "redrock": Path(tmp) / "redrock.fits"}
        for name, upload in (("coadd", coadd), ("redrock", redrock)):
            if upload is not None:
                upload.seek(0)
                with paths[name].open("wb") as out:
                    shutil.copyfileobj(upload, out)
        result = read_spectra_file(
            paths["coadd"],
            paths["redrock"] if redrock is not None else None,
            release=release or UPLOAD_RELEASE,
            qso_catalog=qso_catalog,
            archive_root=tmp,
        )
    failure = ledger.file_failure_reason(result.ledger)
    if failure is not None:
        shown = Path(filename).name or "the upload"
        raise HTTPException(422, f"{shown} is not a readable DESI coadd + redrock pair: {failure}")
    raw = result.spectra
    rest = normalized_table(raw, device=device)
    rows = result.ledger.to_pydict()
    kept = [r for r, status in zip(rows["row"], rows["status"], strict=True) if status == ledger.KEPT]
    not_scored = [
        NotScored(index=r, targetid=t, status=s, reason=why)
        for r, t, s, why in zip(rows["row"], rows["TARGETID"], rows["status"], rows["reason"], strict=True)
        if s != ledger.KEPT
    ]
    spectra = Spectra.from_table(rest, REST_GRID.wave, columns=["low_coverage"]).with_columns(
        has_targetid=np.ones(raw.num_rows, bool), index=np.asarray(kept, np.int64)
    )
    return replace(spectra, meta={"release": release}), not_scored


@dataclass(frozen=True)
class ScoredPiece:
    """Spectra of one request (a piece of at most one forward pass), the model that scored them, and
    their scores (arrays of ``ModelPackage.score``).
    """

    spectra: Spectra
    model: LoadedModel
    scores: dict[str, np.ndarray]


def response_rows(pieces: list[ScoredPiece]) -> list[SpectrumScore]:
    """One ``SpectrumScore`` per spectrum, in request order; NaN (undefined) becomes null."""
    rows = []
    for piece in pieces:
        spectra, columns = piece.spectra, {key: piece.scores[key].tolist() for key in (*SCORE_COLUMNS, "snr")}
        rows += [
            SpectrumScore(
                index=int(spectra.columns["index"][i]),
                targetid=int(spectra.targetid[i]) if spectra.columns["has_targetid"][i] else None,
                **{key: _json_value(values[i]) for key, values in columns.items()},
                low_coverage=bool(spectra.columns["low_coverage"][i]),
                model_name=piece.model.name,
                model_version=piece.model.version,
            )
            for i in range(len(spectra))
        ]
    return rows


def _json_value(value: float | int | str) -> float | int | str | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value
