"""``qad serve``: score spectra over HTTP with the registry's ``champion``, as a Ray Serve application.

A request is parsed and moved to the rest frame in a worker thread, then queued for the model:
``serve.batch`` merges the queued requests into one forward pass of up to ``MAX_BATCH_SPECTRA``
spectra, on the GPU when there is one. A ``shadow_fraction`` of requests is scored again by the
``challenger`` in the background (both scores logged; the response, which does not wait for it,
carries the champion's). Aliases are followed by polling the registry every ``poll_seconds`` and on
``POST /reload``. API reference: ``docs/serving.md`` and ``/docs`` on a running service.

Clients reach it through the front door (:mod:`qad_assets.service.front`): Serve's own HTTP proxy listens
on a loopback port, and only whole requests, taken at a bounded pace, reach a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import random
import socket
import threading
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from fastapi import FastAPI, HTTPException, Request
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from qad_assets.errors import UserError
from qad_assets.science.device import DeviceChoice
from qad_assets.science.io.redshifts import read_qso_catalog
from qad_assets.science.model.registry import CHALLENGER, CHAMPION
from qad_assets.science.spectra.arms import BRZ_WAVE
from qad_assets.science.spectra.container import Spectra
from qad_assets.science.spectra.observed import normalize_observed, observed_spectrum
from qad_assets.service.front import FrontDoor, FrontLimits
from qad_assets.service.inputs import (
    ScoredPiece,
    response_rows,
    spectra_from_coadd,
    spectra_from_json,
    split,
)
from qad_assets.service.registry import LoadedModel, RegistryModels
from qad_assets.service.schema import ErrorResponse, ScoreRequest, ScoreResponse
from qad_assets.service.settings import ServiceSettings
from qad_assets.service.shadow import ShadowLog

log = logging.getLogger("qad.service")
#: The front door of the service this process started (``start``), stopped by ``stop``.
_front: FrontDoor | None = None

APP_NAME = "qad-scoring"
#: Spectra per forward pass. The batcher fills a pass from queued requests for up to BATCH_WAIT_S.
MAX_BATCH_SPECTRA = 256
BATCH_WAIT_S = 0.005
#: Requests one replica holds at once (in flight + queued for a batch).
MAX_ONGOING_REQUESTS = 256
#: Uploads parsed at once per replica (each holds its body, up to max_upload_bytes, in memory).
MAX_CONCURRENT_UPLOADS = 2
#: JSON bodies above LARGE_JSON_BYTES parsed at once per replica (each costs about three times its size
#: while it is parsed; smaller ones are not counted).
MAX_CONCURRENT_LARGE_JSON = 2
LARGE_JSON_BYTES = 2**20
#: Seconds a request body may take to reach the replica. The front door (service/front.py) already holds
#: every body until it is whole, at a bounded rate, so this only guards a replica reached another way.
BODY_TIMEOUT_S = 600.0
#: Shadow scorings in flight per replica; beyond this a request is not shadowed (counted as skipped).
MAX_SHADOW_IN_FLIGHT = 32

DESCRIPTION = """Scores DESI quasar spectra with the VAE registered as `champion`, exactly as the nightly
`anomaly_scores` asset scores them. `POST /score` takes JSON spectra or a multipart upload of a DESI coadd
(`coadd`, `redrock` files; optional `release` field)."""


class ScoringApi(FastAPI):
    """The service's FastAPI app; its OpenAPI schema also describes the JSON body of ``/score``."""

    def openapi(self) -> dict[str, Any]:
        """FastAPI's schema plus ``ScoreRequest``, which ``/score`` parses itself (it takes JSON or a file)."""
        if self.openapi_schema is None:
            schema = super().openapi()
            request = ScoreRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request.pop("$defs", {}))
            components["ScoreRequest"] = request
        return self.openapi_schema


app = ScoringApi(title="desi-qad scoring service", version="1", description=DESCRIPTION)

ERROR_MEANINGS = {
    400: "body is not valid JSON, or a malformed multipart body",
    413: "body larger than max_json_bytes / max_upload_bytes, or more spectra than max_spectra",
    415: "neither application/json nor multipart/form-data",
    422: "a spectrum or file that cannot be scored, and why",
    408: "the request head or body did not arrive in time (docs/serving.md, Front door)",
    503: "no champion model in the registry (yet); for /reload, the registry could not be read",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, all with an ``ErrorResponse`` body."""
    return {code: {"model": ErrorResponse, "description": ERROR_MEANINGS[code]} for code in codes}


def _spectra_in(items: list[Spectra]) -> int:
    """The batcher's size of a batch: spectra, not requests."""
    return sum(len(item) for item in items)


_UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["coadd"],
    "properties": {
        "coadd": {"type": "string", "format": "binary", "description": "DESI coadd FITS file"},
        "redrock": {"type": "string", "format": "binary", "description": "its redrock FITS file (redshifts)"},
        "release": {"type": "string", "description": "DESI release of the file (as ScoreRequest.release)"},
    },
}


def release_memory() -> None:
    """Hand freed memory back to the system after a large request (Arrow's pool, then the C heap). Defined
    before ``ScoringService``: Serve serializes the class when it is decorated."""
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def score_together(model: LoadedModel, items: list[Spectra]) -> list[ScoredPiece]:
    """One forward pass for the spectra of several requests; each gets its own rows back. Spectra with a
    TARGETID from the model's training release are scored as the batch scores that release.
    """

    release = model.scoring.training_release
    seen = np.concatenate(
        [item.columns["has_targetid"] & (release is not None and item.meta.get("release") == release) for item in items]
    )
    scores = model.scoring.score(Spectra.concat(items), from_training_release=seen)
    out, start = [], 0
    for item in items:
        rows = slice(start, start + len(item))
        out.append(ScoredPiece(item, model, {key: value[rows] for key, value in scores.items()}))
        start += len(item)
    return out


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
@serve.ingress(app)
class ScoringService:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.device = str(DeviceChoice(settings.device).torch_device())
        self.catalog = read_qso_catalog(settings.qso_catalog) if settings.qso_catalog else None  # fail at start
        aliases = (CHAMPION, CHALLENGER) if settings.shadow_fraction > 0 else (CHAMPION,)
        self.models = RegistryModels(settings.registry(), aliases=aliases, device=self.device)
        self.models.refresh()
        self._warm_up()
        self.shadow = ShadowLog(settings.shadow_folder())
        self._sample = random.Random(settings.seed)
        self._shadows_in_flight: set[asyncio.Task] = set()
        self._uploads = asyncio.Semaphore(MAX_CONCURRENT_UPLOADS)
        self._large_json = asyncio.Semaphore(MAX_CONCURRENT_LARGE_JSON)
        if settings.poll_seconds > 0:
            threading.Thread(target=self._poll_registry, name="registry-poll", daemon=True).start()

    def _warm_up(self) -> None:
        """Compile the resampling kernel and touch the model now, not in the first request."""
        flat = np.ones(BRZ_WAVE.size)
        rest = normalize_observed([observed_spectrum(0, BRZ_WAVE, flat, flat, 2.0)], device=self.device)
        if (champion := self.models.get(CHAMPION)) is not None:
            champion.scoring.score(rest)

    def _poll_registry(self) -> None:
        while True:
            time.sleep(self.settings.poll_seconds)
            try:
                self.models.refresh()
            except Exception:  # a registry hiccup must not stop polling; the next poll retries
                log.exception("registry poll failed")

    @app.get("/health", responses=_errors(503))
    def health(self) -> dict[str, str]:
        """200 when a champion is loaded and requests can be scored, else 503."""
        return {"status": "ok", "champion_version": self._model(CHAMPION).version}

    @app.get("/model")
    def model(self) -> dict[str, Any]:
        """The versions loaded per alias, the device, and what shadow scoring has compared so far."""
        return {
            "champion": (m.describe() if (m := self.models.get(CHAMPION)) else None),
            "challenger": (m.describe() if (m := self.models.get(CHALLENGER)) else None),
            "shadow_fraction": self.settings.shadow_fraction,
            "shadow": self.shadow.summary(),
            "poll_seconds": self.settings.poll_seconds,
            "device": self.device,
        }

    @app.post("/reload", responses=_errors(503))
    async def reload(self) -> dict[str, Any]:
        """Follow the aliases now (instead of at the next poll); returns what ``GET /model`` returns."""
        try:
            await asyncio.to_thread(self.models.refresh)  # a download must not stall requests in flight
        except Exception as err:
            detail = f"reload failed, still serving what was loaded: {type(err).__name__}: {err}"
            raise HTTPException(503, detail) from err
        return self.model()

    @app.post(
        "/score",
        response_model=ScoreResponse,
        responses=_errors(400, 408, 413, 415, 422, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}},
                    "multipart/form-data": {"schema": _UPLOAD_SCHEMA},
                },
            }
        },
    )
    async def score(self, request: Request) -> ScoreResponse:
        """Score JSON spectra (``ScoreRequest``) or an uploaded DESI coadd with the champion."""
        champion = self._model(CHAMPION)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        not_scored = []
        if kind == "application/json":
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) <= LARGE_JSON_BYTES:
                spectra = await self._spectra_from_json(request)
            else:
                async with self._large_json:  # bounded memory: a few large bodies at a time
                    spectra = await self._spectra_from_json(request)
                await asyncio.to_thread(release_memory)
        elif kind == "multipart/form-data":
            async with self._uploads:
                spectra, not_scored = await self._spectra_from_upload(request)
        else:
            raise HTTPException(415, f"content type {kind or 'none'}: send application/json or multipart/form-data")
        if not len(spectra):
            return ScoreResponse(model=champion.describe(), scores=[], not_scored=not_scored)
        scored = await asyncio.gather(*(self._score_champion(piece) for piece in split(spectra, MAX_BATCH_SPECTRA)))
        self._maybe_shadow(scored)
        rows = await asyncio.to_thread(response_rows, scored)
        return ScoreResponse(model=scored[0].model.describe(), scores=rows, not_scored=not_scored)

    def _model(self, alias: str) -> LoadedModel:
        loaded = self.models.get(alias)
        if loaded is None:
            raise HTTPException(
                503, f"no {alias} model: alias '{alias}' of {self.settings.registered_model} is not set in the registry"
            )
        return loaded

    async def _spectra_from_json(self, request: Request) -> Spectra:
        body = b"".join(await self._read_body(request, self.settings.max_json_bytes))
        return await asyncio.to_thread(
            spectra_from_json, body, max_spectra=self.settings.max_spectra, device=self.device
        )

    async def _read_body(self, request: Request, limit: int) -> list[bytes]:
        """The body as received (a list of chunks), refused with 413 as soon as it is known to exceed
        ``limit`` bytes, and with 408 when it takes longer than ``BODY_TIMEOUT_S`` to arrive.
        """
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"body of {int(declared)} bytes; at most {limit}")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise HTTPException(413, f"body larger than {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise HTTPException(408, f"the body did not arrive within {BODY_TIMEOUT_S:g} s") from None
        return chunks

    async def _spectra_from_upload(self, request: Request) -> tuple[Spectra, list]:
        """The form's ``coadd`` (+ ``redrock``, ``release``), read as ``raw_spectra`` reads a coadd."""
        chunks = await self._read_body(request, self.settings.max_upload_bytes)

        async def replay() -> dict[str, Any]:  # the chunks as they came: the parser never holds a second copy
            body = chunks.pop(0) if chunks else b""
            return {"type": "http.request", "body": body, "more_body": bool(chunks)}

        try:
            async with Request(request.scope, replay).form(max_files=2, max_fields=2) as form:
                coadd, redrock, release = form.get("coadd"), form.get("redrock"), form.get("release")
                if not isinstance(coadd, UploadFile):
                    raise HTTPException(422, "a multipart upload needs the DESI coadd as file field 'coadd'")
                if redrock is not None and not isinstance(redrock, UploadFile):
                    raise HTTPException(422, "form field 'redrock' must be a file (the coadd's redrock FITS)")
                return await asyncio.to_thread(
                    spectra_from_coadd,
                    coadd.file,
                    redrock.file if redrock is not None else None,
                    filename=coadd.filename or "coadd",
                    release=release if isinstance(release, str) and release else None,
                    qso_catalog=self.catalog,
                    device=self.device,
                )
        except (MultiPartException, StarletteHTTPException) as err:
            if isinstance(err, HTTPException):
                raise
            raise HTTPException(400, f"malformed multipart body: {getattr(err, 'detail', None) or err}") from None

    @serve.batch(max_batch_size=MAX_BATCH_SPECTRA, batch_wait_timeout_s=BATCH_WAIT_S, batch_size_fn=_spectra_in)
    async def _score_champion(self, items: list[Spectra]) -> list[ScoredPiece]:
        return await asyncio.to_thread(score_together, self._model(CHAMPION), items)

    @serve.batch(max_batch_size=MAX_BATCH_SPECTRA, batch_wait_timeout_s=BATCH_WAIT_S, batch_size_fn=_spectra_in)
    async def _score_challenger(self, items: list[Spectra]) -> list[ScoredPiece]:
        return await asyncio.to_thread(score_together, self._model(CHALLENGER), items)

    def _maybe_shadow(self, champion: list[ScoredPiece]) -> None:
        """With probability ``shadow_fraction``, score the request with the challenger in the background."""
        challenger = self.models.get(CHALLENGER)
        if challenger is None or challenger.version == champion[0].model.version:  # nothing to compare
            return
        if self._sample.random() >= self.settings.shadow_fraction:
            return
        if len(self._shadows_in_flight) >= MAX_SHADOW_IN_FLIGHT:  # the challenger is behind: drop, don't queue
            self.shadow.skipped += 1
            return
        task = asyncio.get_running_loop().create_task(self._shadow(champion))
        self._shadows_in_flight.add(task)
        task.add_done_callback(self._shadows_in_flight.discard)

    async def _shadow(self, champion: list[ScoredPiece]) -> None:
        try:
            challenger = await asyncio.gather(*(self._score_challenger(piece.spectra) for piece in champion))
            path = await asyncio.to_thread(self.shadow.record, uuid.uuid4().hex, champion, challenger)
        except Exception:  # a failed comparison must never touch the champion's answers
            log.exception("shadow scoring failed")
            return
        log.info(
            "shadow: champion v%s / challenger v%s → %s", champion[0].model.version, challenger[0].model.version, path
        )


def build_app(
    settings: ServiceSettings, *, replicas: int = 1, gpus_per_replica: float | None = None
) -> serve.Application:
    """The application to ``serve.run``. ``gpus_per_replica`` defaults to 1 when this process sees the
    device as CUDA; give it explicitly when the replicas run on cluster nodes that differ from here.
    """
    if gpus_per_replica is None:
        gpus_per_replica = 1.0 if DeviceChoice(settings.device).torch_device().type == "cuda" else 0.0
    options = {"num_cpus": 1, "num_gpus": gpus_per_replica}
    return ScoringService.options(num_replicas=replicas, ray_actor_options=options).bind(settings)


def start(
    settings: ServiceSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int = 1,
    gpus_per_replica: float | None = None,
    ray_address: str | None = None,
    blocking: bool = False,
    limits: FrontLimits | None = None,
) -> str:
    """Run the service on Ray Serve (this process's Ray, else ``ray_address``, else a new local Ray) behind
    the front door on ``host:port``; returns its base URL. ``blocking`` serves until interrupted.

    Serve's own HTTP proxy listens on a free loopback port that only the front door uses: it is on this
    machine, so with ``ray_address`` run ``qad serve`` on the cluster's head node.
    """
    global _front
    if replicas > 1 and settings.poll_seconds <= 0:
        raise UserError("POST /reload reaches one replica: with several, poll the registry (poll_seconds > 0)")
    if not ray.is_initialized():
        init_ray(ray_address, configure_logging=False)
    upstream = free_loopback_port()
    serve.start(http_options={"host": "127.0.0.1", "port": upstream})
    application = build_app(settings, replicas=replicas, gpus_per_replica=gpus_per_replica)
    serve.run(application, name=APP_NAME, route_prefix="/", blocking=False)
    body_limits = {"application/json": settings.max_json_bytes, "multipart/form-data": settings.max_upload_bytes}
    _front = FrontDoor(host, port, ("127.0.0.1", upstream), limits, body_limits=body_limits).start()
    url = f"http://{host}:{_front.port}"
    if blocking:
        while True:
            time.sleep(3600)
    return url


def init_ray(address: str | None = None, **options: Any) -> None:
    """``ray.init`` for the service: a cluster when ``address`` is given, else a local Ray of its own (on
    loopback only when Ray was imported with ``config.RAY_LOOPBACK`` set, as ``qad serve`` does).

    "local", not None: without an address ``ray.init`` joins the cluster named in Ray's
    ``ray_current_cluster`` file, someone else's ``ray start`` (or a dead one, where it waits forever).
    """
    ray.init(address=address or "local", include_dashboard=False, **options)


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop() -> None:
    """Remove this application and its front door; other Serve applications (on a shared cluster) and Ray
    stay up."""
    global _front
    if _front is not None:
        _front.stop()
        _front = None
    serve.delete(APP_NAME)
