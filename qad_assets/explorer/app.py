"""The explorer's web application: FastAPI over a storage root's releases and the label database.

One process serves the page (plain HTML, a little JS for keys and fetches, BokehJS from the installed
bokeh package) and a JSON API. Every request that could read much is answered from the release's
in-memory catalogue (:mod:`.catalog`); a spectrum is one row of one partition file. Handlers are plain
functions, run in the server's thread pool. Bad input gets a 4xx with ``{"detail": ...}`` and changes
nothing: an unknown release or TARGETID 404, a label outside the vocabulary or an oversized note 422, a
stale relabel 409 (with the label that won).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import uvicorn
from bokeh.resources import Resources
from bokeh.util.paths import bokehjs_path
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt

from qad_assets.errors import UserError
from qad_assets.explorer.catalog import (
    MAX_PAGE,
    QueryError,
    ReleaseCatalog,
    TableQuery,
    json_rows,
    source_fingerprint,
)
from qad_assets.explorer.export import MEDIA_TYPES, SUFFIX, export_bytes, legacy_viewer_url
from qad_assets.explorer.plots import spectrum_data, spectrum_layout
from qad_assets.explorer.spectrum import SpectrumSource
from qad_assets.labels.store import LabelError, LabelEvent, LabelStore, StaleLabelError
from qad_assets.labels.vocabulary import LABELS, MAX_AUTHOR_CHARS, MAX_NOTE_CHARS, default_interest
from qad_assets.science.ranking.interest import InterestOptions

STATIC = Path(__file__).parent / "static"
_RELEASE = re.compile(r"^[a-z0-9]+$")
_DIGITS = re.compile(r"[0-9]{1,20}")
#: How often a release's product files are checked for a rescoring (a stat per file).
REFRESH_S = 30.0
NEIGHBOURS = 8
MAX_SMOOTHING = 51
#: What a text field holding a lone surrogate (valid JSON, ``"\\ud800"``, but no character) is told.
_UNICODE_MSG = "not valid Unicode text: it holds a lone surrogate (\\ud800-\\udfff), which is no character"


def _digits_to_int(value: object) -> object:
    """A TARGETID given as a string of digits, as the page sends it (beyond 2**53 a JSON number loses
    digits in JavaScript), as the integer it spells; anything else is left for the strict check.
    """
    return int(value) if isinstance(value, str) and _DIGITS.fullmatch(value) else value


#: A TARGETID in a request: an integer or a string of digits, never a float, which above 2**53 would be
#: rounded to a neighbouring target's TARGETID.
TargetId = Annotated[StrictInt, BeforeValidator(_digits_to_int), Field(gt=0)]


class LabelRequest(BaseModel):
    """A label for one candidate; ``replaces`` is the revision the labeller saw (0: none)."""

    model_config = ConfigDict(extra="forbid")

    targetid: TargetId
    label: str = Field(max_length=32)
    note: str = Field(default="", max_length=MAX_NOTE_CHARS)
    author: str = Field(min_length=1, max_length=MAX_AUTHOR_CHARS)
    replaces: int = Field(default=0, ge=0)


def scored_releases(storage: Path) -> list[str]:
    """Releases with scored spectra under ``storage``."""
    root = Path(storage) / "anomaly_scores"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.parquet"))) if root.is_dir() else []


class Explorer:
    """What the application serves: the storage root's releases (catalogues and spectra, opened on first
    use and reopened when their products change) and the label database.
    """

    def __init__(self, storage: Path, labels: LabelStore) -> None:
        self.storage = Path(storage)
        self.labels = labels
        self._lock = threading.Lock()
        self._catalogs: dict[str, tuple[ReleaseCatalog, float]] = {}
        self._sources: dict[str, SpectrumSource] = {}

    def releases(self) -> list[str]:
        """Releases with scored spectra."""
        return scored_releases(self.storage)

    def catalog(self, release: str) -> ReleaseCatalog:
        """The release's catalogue; 404 if the storage root has no such scored release."""
        if not _RELEASE.match(release) or release not in self.releases():
            known = ", ".join(self.releases()) or "none"
            raise HTTPException(404, f"no scored release {release!r} under {self.storage} (releases: {known})")
        with self._lock:
            now = time.monotonic()
            if release in self._catalogs:
                catalog, checked = self._catalogs[release]
                if now - checked < REFRESH_S:
                    return catalog
                if catalog.fingerprint == source_fingerprint(self.storage, release):
                    self._catalogs[release] = (catalog, now)
                    return catalog
            catalog = ReleaseCatalog.open(self.storage, release)
            self._catalogs[release] = (catalog, now)
            self._sources.pop(release, None)  # rescored: maybe by a retrained model too
            return catalog

    def source(self, release: str) -> SpectrumSource:
        with self._lock:
            return self._sources.setdefault(release, SpectrumSource(self.storage, release))

    def position(self, catalog: ReleaseCatalog, targetid: int) -> int:
        position = catalog.position(targetid)
        if position is None:
            raise HTTPException(404, f"release {catalog.release!r} has no scored spectrum with TARGETID {targetid}")
        return position


def table_query(
    sort: str = "rank",
    descending: bool = False,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    score_min: float | None = None,
    score_max: float | None = None,
    p_min: float | None = None,
    p_max: float | None = None,
    z_min: float | None = None,
    z_max: float | None = None,
    region: str | None = None,
    component: str | None = None,
    labelled: bool | None = None,
    label: str | None = None,
    bal: bool | None = None,
) -> TableQuery:
    """The table's filters, order and page from the query string."""
    return TableQuery(
        sort, descending, offset, limit, score_min, score_max, p_min, p_max, z_min, z_max,
        region or None, component or None, labelled, label or None, bal,
    )  # fmt: skip


TableQueryParam = Annotated[TableQuery, Depends(table_query)]


def create_app(storage: Path, labels: LabelStore, *, default_release: str | None = None) -> FastAPI:
    """The explorer over ``storage``'s releases, labels in ``labels``; the page opens ``default_release``
    (else the first release).
    """
    explorer = Explorer(storage, labels)
    app = FastAPI(title="desi-qad candidate explorer", docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.state.explorer = explorer
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/bokeh/static", StaticFiles(directory=bokehjs_path()), name="bokeh")
    bokeh_scripts = "\n".join(
        f'<script src="{url}"></script>' for url in Resources(mode="server", root_url="/bokeh/").js_files
    )
    page = (STATIC / "index.html").read_text().replace("<!--bokeh-->", bokeh_scripts)

    @app.exception_handler(QueryError)
    def _bad_query(_request: Any, err: QueryError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    def _bad_request(_request: Any, err: RequestValidationError) -> JSONResponse:
        errors = [{**e, "msg": _UNICODE_MSG} if e["type"] == "string_unicode" else e for e in err.errors()]
        return JSONResponse({"detail": _encodable(jsonable_encoder(errors))}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        release = default_release or next(iter(explorer.releases()), "")
        return page.replace("{{release}}", release)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/releases")
    def releases() -> dict[str, Any]:
        return {"releases": explorer.releases(), "default": default_release}

    @app.get("/api/vocabulary")
    def vocabulary() -> dict[str, Any]:
        return {
            "labels": [{"code": label.code, "title": label.title, "key": label.key} for label in LABELS],
            "max_note": MAX_NOTE_CHARS,
        }

    @app.get("/api/plot-layout")
    def plot_layout() -> dict[str, Any]:
        return spectrum_layout()

    @app.get("/api/releases/{release}")
    def summary(release: str) -> dict[str, Any]:
        catalog = explorer.catalog(release)
        return {
            "release": release,
            "candidates": len(catalog),
            "columns": catalog.columns,
            "options": catalog.options(),
            "ranked": "priority_rank" in catalog.frame.columns,
            "labelled": len(explorer.labels.current(release)),
        }

    @app.get("/api/releases/{release}/candidates")
    def candidates(release: str, query: TableQueryParam) -> dict[str, Any]:
        catalog = explorer.catalog(release)
        return catalog.page(explorer.labels.current(release), query)

    @app.get("/api/releases/{release}/candidates/{targetid}")
    def candidate(release: str, targetid: int) -> dict[str, Any]:
        catalog = explorer.catalog(release)
        position = explorer.position(catalog, targetid)
        history = explorer.labels.history(release, targetid)
        row = json_rows(catalog.frame.slice(position, 1).drop("partition", "row"))[0]
        nearest, distance = catalog.neighbours(position, NEIGHBOURS)
        current = {str(e.targetid): e.label for e in explorer.labels.current(release)}
        neighbours = json_rows(catalog.frame[nearest].select("TARGETID", "Z", "anomaly_score", "rank"))
        for item, d in zip(neighbours, distance.tolist(), strict=True):
            item.update(distance=round(d, 3), label=current.get(item["TARGETID"]))
        return {
            "candidate": row,
            "label": _event_json(history[-1]) if history else None,
            "history": [_event_json(e) for e in history],
            "neighbours": neighbours,
            "legacy_viewer": legacy_viewer_url(row.get("RA"), row.get("DEC")),
        }

    @app.get("/api/releases/{release}/candidates/{targetid}/spectrum")
    def spectrum(
        release: str,
        targetid: int,
        frame: Literal["rest", "observed"] = "rest",
        smooth: Annotated[int, Query(ge=0, le=MAX_SMOOTHING)] = 0,
    ) -> dict[str, Any]:
        catalog = explorer.catalog(release)
        row = catalog.frame.row(explorer.position(catalog, targetid), named=True)
        source = explorer.source(release)
        try:
            view = source.read(row["partition"], row["row"], targetid)
        except (LookupError, FileNotFoundError) as err:
            raise HTTPException(409, str(err)) from None
        data = spectrum_data(view, frame=frame, smoothing=smooth, region=row.get("top_region"))
        driver = " · ".join(str(row[c]) for c in ("top_component", "top_region") if row.get(c))
        model = f"model v{view.model_version}" if view.model is not None else f"no model: {view.no_model}"
        score = f"z={row['Z']:.4f}  score={row['anomaly_score']:.2f}"
        data["title"] = f"TARGETID {targetid}  {score}  driven by {driver or '—'}  ({model})"
        data["no_model"] = view.no_model
        return data

    @app.post("/api/releases/{release}/rerank")
    def rerank(release: str) -> dict[str, Any]:
        catalog = explorer.catalog(release)
        start = time.perf_counter()
        learned = catalog.rerank(explorer.labels.current(release), default_interest(), InterestOptions())
        return {"labels": learned, "candidates": len(catalog), "seconds": round(time.perf_counter() - start, 2)}

    @app.get("/api/releases/{release}/labels/{targetid}")
    def label_history(release: str, targetid: int) -> dict[str, Any]:
        explorer.position(explorer.catalog(release), targetid)
        return {"history": [_event_json(e) for e in explorer.labels.history(release, targetid)]}

    @app.post("/api/releases/{release}/labels", status_code=201)
    def add_label(release: str, request: LabelRequest) -> dict[str, Any]:
        explorer.position(explorer.catalog(release), request.targetid)
        try:
            event = explorer.labels.add(
                release,
                request.targetid,
                request.label,
                author=request.author,
                note=request.note,
                replaces=request.replaces,
            )
        except StaleLabelError as err:
            current = _event_json(err.current) if err.current else None
            return JSONResponse({"detail": str(err), "current": current}, status_code=409)
        except LabelError as err:
            raise HTTPException(422, str(err)) from None
        return _event_json(event)

    @app.get("/api/releases/{release}/export")
    def export(
        release: str,
        query: TableQueryParam,
        format: Literal["csv", "fits", "votable"] = "votable",  # noqa: A002 - the query parameter's name
        scope: Literal["view", "labelled"] = "view",
    ) -> Response:
        catalog = explorer.catalog(release)
        labels = explorer.labels.current(release)
        if scope == "labelled":
            query = TableQuery(sort=query.sort, descending=query.descending, labelled=True)
        view = catalog.select(labels, query)
        name = f"qad-{release}-{scope}.{SUFFIX[format]}"
        return Response(
            export_bytes(view, format),
            media_type=MEDIA_TYPES[format],
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return app


def serve(storage: Path, *, host: str, port: int, release: str | None, labels_url: str | None) -> None:
    """Run the explorer until interrupted (``qad explore``). A storage root without a scored release, or
    a ``release`` that has no scores, is refused before the server starts and before the label database
    is opened (a typo creates nothing).
    """
    known = scored_releases(storage)
    if release is not None and release not in known:
        names = ", ".join(known) or "none"
        raise UserError(f"--release {release}: no scored release of that name under {storage} (releases: {names})")
    if not known:
        raise UserError(
            f"--storage {storage}: no scored release there (no anomaly_scores/<release>/*.parquet); "
            "run `qad demo` or `qad run` on it first"
        )
    labels = LabelStore.for_storage(storage, labels_url)
    app = create_app(storage, labels, default_release=release)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        labels.close()


def _encodable(value: Any) -> Any:
    """Validation errors echo the input: a lone surrogate in it (``"\\ud800"`` is valid JSON) cannot be
    encoded as UTF-8, and the answer would be a 500; such characters are spelled as escapes instead.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    return value


def _event_json(event: LabelEvent) -> dict[str, Any]:
    """A label as the page reads it: TARGETID as a string (see ``catalog.json_rows``)."""
    return {**event.to_dict(), "targetid": str(event.targetid)}
