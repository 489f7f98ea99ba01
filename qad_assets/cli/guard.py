"""One ``qad`` command at a time per storage root, runs a killed ``qad`` left behind cleaned up, and a word
when a run waits for a pool.

``qad run`` executes its Dagster runs in its own process. Killed (Ctrl-C twice, ``kill -9``, a lost
terminal), it leaves its run ``STARTED`` in the storage root's instance, still holding the ``gpu`` pool's
slot if it was training: no Dagster daemon watches an in-process run, so the next run would wait for that
slot forever. Here:

* :func:`storage_lock` takes an exclusive lock on ``<storage>/.qad-run.lock`` for the whole command. A
  second ``qad run`` (or ``qad demo``) on the same storage root is refused at once, naming the holder. The
  kernel drops the lock when its process dies, however it dies.
* :func:`recover_interrupted_runs`, called with the lock held, marks every run that a ``qad`` command
  started (tag :data:`LAUNCHER_TAG`) and that is still in progress as failed, since its process is
  necessarily gone, and frees the concurrency slots of any finished run (what Dagster's daemon does after
  ``run_monitoring.free_slots_after_run_end_seconds``, when a daemon runs).
* :class:`PoolWaitReporter` says, while a run of this command waits for a pool slot, which run holds it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from qad_assets.errors import UserError

if TYPE_CHECKING:
    import dagster as dg

progress = logging.getLogger("qad.progress")

LOCK_FILE = ".qad-run.lock"
#: Tags on every run a ``qad`` command starts: who launched it, from which process and host.
LAUNCHER_TAG = "qad/launched_by"
PID_TAG = "qad/pid"
HOST_TAG = "qad/host"
#: Pools whose waits are reported (the only pool is ``gpu``: one step on the card at a time).
POOLS = ("gpu",)


class StorageInUse(UserError):
    """Another ``qad`` command holds the storage root's lock."""


def run_tags() -> dict[str, str]:
    """The tags that mark a run as started by this ``qad`` process."""
    return {LAUNCHER_TAG: "qad-cli", PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


@contextmanager
def storage_lock(storage: Path, command: str | None = None) -> Iterator[None]:
    """Hold ``<storage>/.qad-run.lock`` for the block; :class:`StorageInUse` when another process holds it."""
    path = Path(storage) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageInUse(_held_message(path, fd)) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command or " ".join(["qad", *sys.argv[1:]]),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _held_message(path: Path, fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        holder = {}
    who = (
        f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}: {holder.get('command')}"
        if holder
        else "another process"
    )
    return (
        f"storage {path.parent} is in use by another qad command ({who}). Two runs on one storage root would "
        "train two models and validate and promote each other's; wait for it to finish, or stop it (a killed "
        "run is cleaned up by the next qad run)."
    )


def recover_interrupted_runs(instance: dg.DagsterInstance) -> list[str]:
    """With the storage lock held: fail every run a ``qad`` command left in progress, free the pool slots
    of every finished run that still holds some; returns a line per run recovered.
    """
    import dagster as dg

    in_progress = [
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    lines = []
    orphans = instance.get_runs(filters=dg.RunsFilter(statuses=in_progress, tags={LAUNCHER_TAG: "qad-cli"}))
    for run in orphans:
        who = f"pid {run.tags.get(PID_TAG)} on {run.tags.get(HOST_TAG)}"
        instance.report_run_failed(
            run, f"the qad command that ran it ({who}) stopped without finishing it; marked failed by the next qad"
        )
        lines.append(f"run {run.run_id} ({run.job_name}, {who}) was interrupted: marked failed")
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for run_id in sorted(storage.get_concurrency_run_ids()):
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                storage.free_concurrency_slots_for_run(run_id)
                name = run.job_name if run is not None else "deleted run"
                lines.append(f"run {run_id} ({name}) had ended holding pool slots: freed")
    return lines


class PoolWaitReporter:
    """While the block runs, report every ``interval`` seconds (when it changes, and at least each
    ``repeat`` seconds) that a step of run ``run_id`` waits for a pool slot, and which run holds the slot.
    """

    def __init__(
        self, instance: dg.DagsterInstance, run_id: str, *, interval: float = 5.0, repeat: float = 60.0
    ) -> None:
        self.instance, self.run_id, self.interval, self.repeat = instance, run_id, interval, repeat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="qad-pool-wait", daemon=True)
        self.reported: list[str] = []

    def __enter__(self) -> PoolWaitReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        last, said_at = "", 0.0
        while not self._stop.wait(self.interval):
            try:
                message = self.waiting()
            except Exception:  # a report must never break the run it reports on
                continue
            if message and (message != last or time.monotonic() - said_at > self.repeat):
                progress.warning(message)
                self.reported.append(message)
                last, said_at = message, time.monotonic()

    def waiting(self) -> str:
        """What this run waits for now ('' when nothing)."""
        storage = self.instance.event_log_storage
        for pool in POOLS:
            info = storage.get_concurrency_info(pool)
            steps = sorted(
                s.step_key for s in info.pending_steps if s.run_id == self.run_id and s.assigned_timestamp is None
            )
            if not steps:
                continue
            holders = "; ".join(self._describe(slot.run_id, slot.step_key) for slot in info.claimed_slots) or "nobody"
            return (
                f"{', '.join(steps)} waits for pool {pool} (limit {info.limit}), held by {holders}. A run of a killed "
                "qad is freed by the next qad run; one started from the UI, by terminating it there."
            )
        return ""

    def _describe(self, run_id: str, step_key: str) -> str:
        run = self.instance.get_run_by_id(run_id)
        if run is None:
            return f"{step_key} of deleted run {run_id}"
        launched = (
            f"qad pid {run.tags.get(PID_TAG)} on {run.tags.get(HOST_TAG)}"
            if run.tags.get(LAUNCHER_TAG) == "qad-cli"
            else "the UI or a schedule"
        )
        return f"{step_key} of run {run_id} ({run.job_name}, {run.status.value}, started by {launched})"
