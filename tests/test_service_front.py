"""The scoring service's front door (qad_assets.service.front) against hostile and broken clients.

The upstream is a small FastAPI app on uvicorn (what Ray Serve's proxy is), so these run in seconds; the
whole service behind the front door is exercised by benchmarks/bench_service_abuse.py.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import requests
import uvicorn
from fastapi import FastAPI, Request

from qad_assets.service.front import FrontDoor, FrontLimits

upstream_app = FastAPI()
seen: list[int] = []


@upstream_app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@upstream_app.post("/echo")
async def echo(request: Request) -> dict[str, object]:
    body = await request.body()
    seen.append(len(body))
    return {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "type": request.headers["content-type"]}


LIMITS = FrontLimits(
    max_connections=24,
    max_connections_per_client=6,
    header_timeout_s=1.0,
    idle_timeout_s=1.5,
    body_grace_s=0.5,
    min_body_rate=20_000,
    large_body_bytes=4096,
    max_large_bodies=2,
    spool_bytes=1024,
)


@pytest.fixture(scope="module")
def front() -> Iterator[FrontDoor]:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = uvicorn.Server(uvicorn.Config(upstream_app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    door = FrontDoor("127.0.0.1", 0, ("127.0.0.1", port), LIMITS, body_limits={"application/json": 200_000}).start()
    yield door
    door.stop()
    server.should_exit = True
    thread.join(timeout=10)


def url(door: FrontDoor, path: str = "/health") -> str:
    return f"http://127.0.0.1:{door.port}{path}"


def connect(door: FrontDoor, source: str = "127.0.0.2") -> socket.socket:
    """A raw connection from another loopback address (another client)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", door.port))
    sock.settimeout(10)
    return sock


def reply(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, data.split(b"\r\n\r\n", 1)[-1]


def test_a_whole_request_passes_through_byte_for_byte(front: FrontDoor) -> None:
    body = bytes(range(256)) * 600  # over the spool size: forwarded from a temporary file
    response = requests.post(url(front, "/echo"), data=body, headers={"content-type": "application/json"}, timeout=10)
    assert response.json() == {
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "type": "application/json",
    }
    chunked = requests.post(
        url(front, "/echo"), data=(body[i : i + 999] for i in range(0, len(body), 999)), timeout=10,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert chunked.json()["sha256"] == hashlib.sha256(body).hexdigest()
    sock = connect(front)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
    sock.sendall(b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
    sock.sendall(b"hello")
    status, answer = reply(sock)
    assert status == 200 and b'"bytes":5' in answer


def test_half_sent_headers_are_timed_out(front: FrontDoor) -> None:
    sock = connect(front)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    started = time.monotonic()
    status, answer = reply(sock)
    assert status == 408 and b"request headers did not arrive within 1 s" in answer
    assert time.monotonic() - started < LIMITS.header_timeout_s + 1


def test_stalled_bodies_hold_only_their_client_and_health_answers_throughout(front: FrontDoor) -> None:
    stalled = []
    for _ in range(LIMITS.max_connections_per_client):
        sock = connect(front)
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\nab"
        )
        stalled.append(sock)
    time.sleep(0.2)
    extra = connect(front)  # one more from the same client: refused at once
    status, answer = reply(extra)
    assert status == 503 and b"connections from 127.0.0.2 already" in answer
    before = len(seen)
    for _ in range(5):  # another client is served meanwhile, at once
        started = time.monotonic()
        assert requests.get(url(front), timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
        time.sleep(0.2)
    for sock in stalled:
        status, answer = reply(sock)
        assert status == 408 and b"the body did not arrive in time" in answer
    assert len(seen) == before  # nothing incomplete reached the upstream


def test_a_body_slower_than_the_minimum_rate_is_refused(front: FrontDoor) -> None:
    sock = connect(front)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    started = time.monotonic()
    status = 0
    try:
        while time.monotonic() - started < 20:  # 1 KB every 0.1 s: 10 KB/s, under the 20 KB/s floor
            sock.sendall(b"x" * 1000)
            time.sleep(0.1)
    except OSError:
        status, answer = reply(sock)
    assert status == 408 and b"must average" in answer
    # 100 kB at 20 kB/s after a 0.5 s grace: refused once it cannot make the deadline (5.5 s)
    assert time.monotonic() - started < 7


def test_an_oversized_body_is_refused_before_it_reaches_the_service(front: FrontDoor) -> None:
    before = len(seen)
    big = requests.post(
        url(front, "/echo"), data=b"x" * 300_000, headers={"content-type": "application/json"}, timeout=10
    )
    assert big.status_code == 413 and big.json()["detail"] == "body of 300000 bytes; at most 200000"
    other = requests.post(url(front, "/echo"), data=b"x" * 5000, headers={"content-type": "text/plain"}, timeout=10)
    assert other.status_code == 200  # other content types: FrontLimits.max_body_bytes (1 MiB)
    assert len(seen) == before + 1


def test_the_total_connection_cap_refuses_at_once(front: FrontDoor) -> None:
    """On a door of its own whose header timeout outlasts opening 24 connections on a loaded machine (with
    1 s, the first held ones had timed out before the 25th arrived, which was then let in)."""
    door = FrontDoor("127.0.0.1", 0, front.upstream, replace(LIMITS, header_timeout_s=4.0)).start()
    try:
        held = []
        for i in range(LIMITS.max_connections):
            sock = connect(door, f"127.0.1.{i + 1}")  # many clients, one connection each
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # headers never finished
            held.append(sock)
        time.sleep(0.2)
        refused = connect(door, "127.0.2.1")
        status, answer = reply(refused)
        assert status == 503 and b"holds 24 connections already" in answer
        for sock in held:
            assert reply(sock)[0] == 408
        assert requests.get(url(door), timeout=5).status_code == 200
    finally:
        door.stop()
