"""``qad serve`` in a process of its own, for the service benchmarks (bench_serving, bench_service_abuse).

The benchmarks measure the service as an operator runs it: its own process and local Ray, reached over
loopback HTTP from the benchmark's process. This module starts and stops it, and makes a demo storage
root with a champion when none is given, so that both benchmarks do it the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

QAD = [sys.executable, "-m", "qad_assets.cli"]


def demo_storage(storage: Path | None, tmp: Path) -> Path:
    """``storage`` resolved, or a fresh ``qad demo`` under ``tmp`` (a few minutes; its release promotes a
    champion) when it is None."""
    if storage is None:
        storage = tmp / "storage"
        print(f"qad demo --storage {storage} ...", file=sys.stderr)
        subprocess.run([*QAD, "demo", "--storage", str(storage)], check=True, capture_output=True)
    return storage.resolve()


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(storage: Path, port: int, log: Path, *extra: str, timeout: float = 240) -> subprocess.Popen:
    """``qad serve`` on ``port`` in its own session (so that it can be stopped with its Ray), once
    ``/health`` answers 200. Polls the registry hourly only: the benchmarks change no alias."""
    command = [*QAD, "serve", "--storage", str(storage), "--port", str(port), "--poll-seconds", "3600", *extra]
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"qad serve exited with {server.returncode}; see {log}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except requests.RequestException:  # not listening yet, or busy starting
            pass
        time.sleep(1)
    stop_server(server)
    raise RuntimeError(f"qad serve did not become healthy in {timeout:.0f} s; see {log}")


def stop_server(server: subprocess.Popen) -> None:
    """Ctrl-C, as an operator stops it (Serve deletes the app and Ray stops); its whole session killed if
    it is not gone within a minute, so that no replica outlives the benchmark."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
