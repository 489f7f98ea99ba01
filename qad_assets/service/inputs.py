"""Request bodies → rest-frame spectra for the scorer, and scores → response rows.

Both bodies go through the batch pipeline's own functions: JSON spectra through
``observed_spectra`` (ingestion's pixel rules, the batch resampling), an uploaded coadd through
``read_spectra_file`` and ``normalized_table`` exactly as ``raw_spectra`` and ``normalized_spectra``
read a coadd from the archive. Every problem is an ``HTTPException`` with a 4xx status that says what
is wrong.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, ValidationError

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
from qad_assets.service.schema import NotScored, ScoreRequest, SpectrumIn, SpectrumScore

#: Release name given to an uploaded coadd when the form names none.
UPLOAD_RELEASE = "upload"


def split(spectra: Spectra, size: int) -> list[Spectra]:
    """Pieces of at most ``size`` spectra (one batcher item each)."""
    return [spectra[lo : lo + size] for lo in range(0, len(spectra), size)]


#: Spectra moved to the rest frame per call: the resampling's temporaries stay bounded in a large request.
NORMALIZE_CHUNK = 64
#: What JSON's structure is made of, as far as splitting a request is concerned: escapes, quotes,
#: brackets. Numbers, commas and colons are not matched, so a request of a million numbers is a few
#: dozen matches per spectrum.
_STRUCTURE = re.compile(rb'\\.|["{}\[\]]')


class _Envelope(BaseModel):
    """``ScoreRequest`` without its spectra (they are checked one at a time as ``SpectrumIn``)."""

    model_config = ConfigDict(extra="forbid")

    spectra: list[Any]
    wavelength: list[float] | None = ScoreRequest.model_fields["wavelength"]
    release: str | None = ScoreRequest.model_fields["release"]


def spectra_from_json(body: bytes, *, max_spectra: int, device: str = "cpu") -> Spectra:
    """A ``ScoreRequest`` JSON body, checked spectrum by spectrum and moved to the rest frame.

    Streamed: the body is split into its spectra, and each is validated (``SpectrumIn``, the schema's own
    messages), checked (ingestion's pixel rules) and kept as float32 before the next is parsed, so memory
    is the body plus the request's spectra, not a Python object per number (about six times the body).
    Columns: ``index`` (place in the request), ``has_targetid`` (TARGETID is 0 where none was given),
    ``low_coverage``; ``meta["release"]`` the request's release.
    """
    split = _split_spectra(body)
    if split is None:  # no spectra array to stream (absent, null, not of objects): the schema says why
        spans, envelope = [], _validated(ScoreRequest, body)
    else:
        spans, outside = split
        envelope = _validated(_Envelope, outside)
    if split is not None and not spans:
        raise HTTPException(422, "spectra: List should have at least 1 item")
    count = len(spans) if split is not None else len(envelope.spectra)
    if count > max_spectra:
        raise HTTPException(413, f"{count} spectra in one request; at most {max_spectra}")
    shared = None if envelope.wavelength is None else np.asarray(envelope.wavelength, np.float64)
    observed, targetid = [], []
    for i in range(count):
        if split is not None:
            spectrum = _validated(SpectrumIn, body[spans[i][0] : spans[i][1]], ("spectra", i))
        else:
            spectrum = envelope.spectra[i]
        wavelength = np.asarray(spectrum.wavelength, np.float64) if spectrum.wavelength is not None else shared
        try:
            if wavelength is None:
                raise SpectrumError(i, ledger.reason("bad_wavelength", "no wavelength, here or in the request"))
            observed.append(
                observed_spectrum(i, wavelength, spectrum.flux, spectrum.ivar, spectrum.redshift, spectrum.mask)
            )
        except SpectrumError as err:
            raise HTTPException(422, str(err)) from None
        targetid.append(spectrum.targetid)
        del spectrum
    ids = [t or 0 for t in targetid]
    chunks = range(0, len(observed), NORMALIZE_CHUNK)
    rest = Spectra.concat(
        [
            normalize_observed(observed[i : i + NORMALIZE_CHUNK], ids[i : i + NORMALIZE_CHUNK], device=device)
            for i in chunks
        ]
    )
    return replace(
        rest.with_columns(has_targetid=np.asarray([t is not None for t in targetid]), index=np.arange(len(observed))),
        meta={"release": envelope.release},
    )


def _validated(model: type[BaseModel], text: bytes, prefix: tuple[int | str, ...] = ()) -> Any:
    try:
        return model.model_validate_json(text)
    except ValidationError as err:
        raise _validation_error(err, prefix) from None


def _split_spectra(body: bytes) -> tuple[list[tuple[int, int]], bytes] | None:
    """The byte spans of the objects in the top-level ``spectra`` array, and the body with that array
    emptied; None when there is no such array of objects to split (the schema then reads the whole body).

    Only structure is scanned (quotes, escapes, brackets); what lies between is left to the validators,
    so a body that is not JSON fails there with the schema's own message.
    """
    depth, in_string, string_start = 0, False, 0
    key = b""
    array_open = array_close = -1
    spans: list[tuple[int, int]] = []
    element_start = -1
    for match in _STRUCTURE.finditer(body):
        token, at = match.group(), match.start()
        if in_string:
            if token == b'"':
                in_string = False
                if depth == 1 and body[at + 1 :].lstrip()[:1] == b":":
                    key = body[string_start + 1 : at]
            continue
        if token == b'"':
            in_string, string_start = True, at
        elif token in (b"{", b"["):
            depth += 1
            if depth == 2 and token == b"[" and key == b"spectra" and array_open < 0:
                if body[:at].rstrip()[-1:] != b":":
                    return None
                array_open = at
            elif depth == 3 and array_open >= 0 and array_close < 0:
                if token != b"{":
                    return None  # an element that is not an object
                element_start = at
        elif token in (b"}", b"]"):
            if depth == 3 and element_start >= 0 and array_close < 0:
                spans.append((element_start, at + 1))
                element_start = -1
            elif depth == 2 and token == b"]" and array_open >= 0 and array_close < 0:
                array_close = at
            depth -= 1
        elif token.startswith(b"\\"):
            return None  # an escape outside a string: not JSON
    if array_open < 0 or array_close < 0:
        return None
    between = bytearray(body[array_open + 1 : array_close])
    for lo, hi in reversed(spans):
        del between[lo - array_open - 1 : hi - array_open - 1]
    if between.replace(b",", b"").strip():  # something besides objects in the array: let the schema say what
        return None
    return spans, body[: array_open + 1] + body[array_close:]


def _validation_error(err: ValidationError, prefix: tuple[int | str, ...] = ()) -> HTTPException:
    """400 for a body that is not JSON, else 422 listing each problem as ``spectra[2].flux: ...``."""
    problems = err.errors(include_url=False)
    if any(p["type"] == "json_invalid" for p in problems):
        return HTTPException(400, f"request body is not valid JSON: {problems[0]['msg']}")
    shown = "; ".join(f"{_location((*prefix, *p['loc']))}: {p['msg']}" for p in problems[:5])
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
    # the per-spectrum columns scoring reads besides the spectra, as score_partition reads them
    columns = [name for name in ("low_coverage", "scale", "spike_pull") if name in rest.column_names]
    spectra = Spectra.from_table(rest, REST_GRID.wave, columns=columns).with_columns(
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
