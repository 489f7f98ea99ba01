"""The scoring service's front door: an HTTP/1.1 proxy that takes every client's time and bytes before the
model does.

Ray Serve's HTTP proxy (uvicorn) streams each request to a replica as its bytes arrive and has no timeout
for headers, so slow clients hold replica slots: 260 stalled bodies made ``/score`` and ``/health`` time
out for the 600 s of the replica's body timeout. ``qad serve`` therefore binds Serve's proxy to loopback
and listens here instead. For each connection:

* at most ``max_connections`` at once, and ``max_connections_per_client`` from one client address: beyond
  either, an immediate 503 (the client is told, nothing waits);
* the request head must arrive within ``header_timeout_s`` and fit ``max_header_bytes`` (408 / 431);
* a body over its content type's limit (``body_limits``, else ``max_body_bytes``) is refused (413); a body
  must keep arriving (no gap over ``idle_timeout_s``) and on average at ``min_body_rate`` bytes/s after
  ``body_grace_s`` (408);
* bodies over ``large_body_bytes`` (or of unknown length) are read ``max_large_bodies`` at a time, and
  spooled to a temporary file beyond ``spool_bytes``: the front door's memory stays bounded;
* only a complete request goes upstream, with its exact bytes (chunked bodies de-chunked, a
  ``Content-Length`` set); the reply is piped back and the connection closed.

So a replica only ever sees whole requests from this process, and ``/health`` answers while any number
of clients (up to the caps) dawdle. Plain asyncio in a thread of its own; no Ray, no Dagster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import BinaryIO

log = logging.getLogger("qad.service.front")

#: Request headers not forwarded (hop-by-hop, or replaced because the body is forwarded whole).
_DROPPED = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "transfer-encoding", "expect"}
    | {"content-length"}
)
_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
}
_REASONS |= {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass(frozen=True)
class FrontLimits:
    """What one client may take of the service (defaults for ``qad serve``; docs/serving.md)."""

    max_connections: int = 512
    max_connections_per_client: int = 32
    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    #: Body limit of a content type not in ``FrontDoor.body_limits`` (the service takes no other bodies).
    max_body_bytes: int = 2**20
    idle_timeout_s: float = 15.0
    body_grace_s: float = 10.0
    min_body_rate: float = 2**20
    large_body_bytes: int = 2**20
    max_large_bodies: int = 4
    spool_bytes: int = 8 * 2**20
    #: Bytes of an oversized body read and dropped before the 413, so that the client sees the answer.
    drain_bytes: int = 64 * 2**20
    upstream_timeout_s: float = 900.0


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class FrontDoor:
    """Listen on ``host:port``, forward whole requests to ``upstream`` (Serve's proxy on loopback)."""

    def __init__(
        self,
        host: str,
        port: int,
        upstream: tuple[str, int],
        limits: FrontLimits | None = None,
        body_limits: dict[str, int] | None = None,
    ) -> None:
        self.host, self.port, self.upstream = host, port, upstream
        self.limits = limits or FrontLimits()
        self.body_limits = {kind.lower(): limit for kind, limit in (body_limits or {}).items()}
        self.open = 0
        self.per_client: Counter[str] = Counter()
        self.refused: Counter[int] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._large: asyncio.Semaphore | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> FrontDoor:
        """Serve from a daemon thread; returns once the port is bound (errors, e.g. port taken, raise here)."""
        ready, failure = threading.Event(), []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._listen())
            except BaseException as err:  # noqa: BLE001 - reported to start()
                failure.append(err)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="qad-front-door", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    async def _listen(self) -> None:
        self._large = asyncio.Semaphore(self.limits.max_large_bodies)
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=self.limits.max_header_bytes, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is None:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- one connection --------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else str(peer)
        limits = self.limits
        if self.open >= limits.max_connections or self.per_client[client] >= limits.max_connections_per_client:
            too_many = self.open >= limits.max_connections
            detail = (
                f"the service holds {limits.max_connections} connections already; retry shortly"
                if too_many
                else f"{limits.max_connections_per_client} connections from {client} already; retry shortly"
            )
            await self._reply(writer, 503, detail)
            await self._close(writer)
            return
        self.open += 1
        self.per_client[client] += 1
        try:
            await self._one_request(reader, writer)
        except _Refused as refused:
            await self._reply(writer, refused.status, refused.detail)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except Exception:  # never let one connection take the front door down
            log.exception("front door: request failed")
            await self._reply(writer, 502, "the request could not be passed to the service")
        finally:
            self.open -= 1
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]
            await self._close(writer)

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self.limits
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), limits.header_timeout_s)
        except TimeoutError:
            raise _Refused(408, f"the request headers did not arrive within {limits.header_timeout_s:g} s") from None
        except asyncio.LimitOverrunError:
            raise _Refused(431, f"request headers larger than {limits.max_header_bytes} bytes") from None
        except asyncio.IncompleteReadError:
            return  # closed before a whole head: nothing to answer
        method, target, headers = _parse_head(head)
        fields = {name.lower(): value for name, value in headers}
        chunked = "chunked" in fields.get("transfer-encoding", "").lower()
        declared = fields.get("content-length")
        if declared is not None and not declared.strip().isdigit():
            raise _Refused(400, f"Content-Length {declared!r} is not a byte count")
        length = int(declared) if declared is not None and not chunked else None
        kind = fields.get("content-type", "").split(";")[0].strip().lower()
        limit = self.body_limits.get(kind, limits.max_body_bytes)
        if length is not None and length > limit:
            await self._discard(reader, length)
            raise _Refused(413, f"body of {length} bytes; at most {limit}")
        with tempfile.SpooledTemporaryFile(max_size=limits.spool_bytes) as body:
            if chunked or (length or 0) > 0:
                if fields.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if chunked or length > limits.large_body_bytes:
                    async with self._large:
                        await self._read_body(reader, length, limit, body)
                else:
                    await self._read_body(reader, length, limit, body)
            await self._forward(method, target, headers, body, writer)

    async def _discard(self, reader: asyncio.StreamReader, length: int) -> None:
        """Read and drop up to ``drain_bytes`` of a refused body (bounded in time), so the 413 is read."""
        left = min(length, self.limits.drain_bytes)
        try:
            while left > 0:
                piece = await asyncio.wait_for(reader.read(min(1 << 20, left)), self.limits.idle_timeout_s)
                if not piece:
                    return
                left -= len(piece)
        except TimeoutError:
            return

    async def _read_body(self, reader: asyncio.StreamReader, length: int | None, limit: int, out: BinaryIO) -> None:
        """The body (``length`` bytes, or chunked when None) into ``out``, within the rate and gap bounds."""
        limits = self.limits
        start = time.monotonic()
        received = 0

        async def read(fn, *args):  # one read within the gap bound and the overall deadline
            allowed = start + limits.body_grace_s + (max(received, length or 0) / limits.min_body_rate)
            wait = min(limits.idle_timeout_s, allowed - time.monotonic())
            if wait <= 0:
                raise _Refused(408, _slow(received, time.monotonic() - start, limits))
            try:
                return await asyncio.wait_for(fn(*args), wait)
            except TimeoutError:
                raise _Refused(408, _slow(received, time.monotonic() - start, limits)) from None

        if length is not None:
            while received < length:
                piece = await read(reader.read, min(1 << 20, length - received))
                if not piece:
                    raise asyncio.IncompleteReadError(b"", length - received)
                out.write(piece)
                received += len(piece)
            return
        while True:  # chunked: <hex size>[;ext]\r\n <data>\r\n ... 0\r\n [trailers] \r\n
            line = await read(reader.readuntil, b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Refused(400, "malformed chunked body") from None
            if size == 0:
                while (await read(reader.readuntil, b"\r\n")) != b"\r\n":
                    pass  # trailers are dropped
                return
            if received + size > limit:
                raise _Refused(413, f"body larger than {limit} bytes")
            piece = await read(reader.readexactly, size + 2)
            out.write(piece[:-2])
            received += size

    async def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: BinaryIO, writer: asyncio.StreamWriter
    ) -> None:
        """Send the whole request upstream and pipe the reply back (``Connection: close`` both ways)."""
        limits = self.limits
        size = body.tell()
        body.seek(0)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 10)
        except (OSError, TimeoutError):
            raise _Refused(502, "the scoring service is not reachable (starting or stopped)") from None
        try:
            kept = [f"{name}: {value}\r\n" for name, value in headers if name.lower() not in _DROPPED]
            head = f"{method} {target} HTTP/1.1\r\n{''.join(kept)}content-length: {size}\r\nconnection: close\r\n\r\n"
            up_writer.write(head.encode("latin-1"))
            while piece := body.read(1 << 20):
                up_writer.write(piece)
                await up_writer.drain()
            await up_writer.drain()
            deadline = time.monotonic() + limits.upstream_timeout_s
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Refused(504, f"no reply from the service within {limits.upstream_timeout_s:g} s")
                try:
                    piece = await asyncio.wait_for(up_reader.read(1 << 16), remaining)
                except TimeoutError:
                    raise _Refused(504, f"no reply from the service within {limits.upstream_timeout_s:g} s") from None
                if not piece:
                    return
                writer.write(piece)
                try:  # a client that does not read its reply is dropped, not waited for
                    await asyncio.wait_for(writer.drain(), limits.idle_timeout_s)
                except TimeoutError:
                    return
        finally:
            await self._close(up_writer)

    async def _reply(self, writer: asyncio.StreamWriter, status: int, detail: str) -> None:
        self.refused[status] += 1
        body = json.dumps({"detail": detail}).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode() + body)
            await asyncio.wait_for(writer.drain(), 5)
        except (ConnectionError, TimeoutError):
            pass

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        try:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)
        except (ConnectionError, TimeoutError, OSError):
            pass


def _slow(received: int, seconds: float, limits: FrontLimits) -> str:
    return (
        f"the body did not arrive in time: {received} bytes in {seconds:.0f} s (a body may pause at most "
        f"{limits.idle_timeout_s:g} s and must average {limits.min_body_rate / 1024:.0f} KiB/s after "
        f"{limits.body_grace_s:g} s)"
    )


def _parse_head(head: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    """(method, target, headers) of a request head; 400 when it is not HTTP/1.x."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise _Refused(400, "malformed request line") from None
    if not version.startswith("HTTP/1.") or not method.isalpha() or not target.startswith("/"):
        raise _Refused(400, "malformed request line")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _Refused(400, f"malformed header line {line[:40]!r}")
        headers.append((name, value.strip()))
    return method, target, headers
