"""A killed ``qad`` never blocks the next one, and two ``qad`` commands never share a storage root.

The runs here are a one-asset job in the ``gpu`` pool, executed in process on a storage root's instance
(the project's instance template) exactly as ``qad run`` executes its jobs; the "killed" one is a child
process that gets SIGKILL while its step holds the pool's slot.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from qad_assets.cli.guard import (
    LAUNCHER_TAG,
    PoolWaitReporter,
    StorageInUse,
    recover_interrupted_runs,
    run_tags,
    storage_lock,
)
from qad_assets.cli.pipeline import prepare_instance_home

#: A child process that holds the storage lock, or runs the pool job, and says when it is in the middle.
CHILD = textwrap.dedent(
    """
    import sys, time
    import dagster as dg
    from qad_assets.cli.guard import run_tags, storage_lock

    storage, what, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])

    @dg.asset(pool="gpu")
    def train() -> None:
        print("TRAINING", flush=True)
        time.sleep(seconds)

    defs = dg.Definitions(assets=[train], jobs=[dg.define_asset_job("qad_train", selection=[train])])
    with storage_lock(__import__("pathlib").Path(storage), command="qad run --test"):
        if what == "lock":
            print("LOCKED", flush=True)
            time.sleep(seconds)
        else:
            with dg.DagsterInstance.from_config(storage + "/dagster_home") as instance:
                defs.resolve_job_def("qad_train").execute_in_process(instance=instance, tags=run_tags())
    """
)


@dg.asset(pool="gpu")
def train() -> None:
    pass


DEFS = dg.Definitions(assets=[train], jobs=[dg.define_asset_job("qad_train", selection=[train])])


def start_child(storage: Path, what: str, seconds: float, ready: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(storage), what, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == ready
    return child


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    prepare_instance_home(tmp_path)
    return tmp_path


def run_with_deadline(instance: dg.DagsterInstance, seconds: float, **kwargs) -> dg.ExecuteInProcessResult:
    """The job in process, in a thread: a run blocked on a pool slot fails the test instead of hanging it."""
    results = []
    thread = threading.Thread(
        target=lambda: results.append(
            DEFS.resolve_job_def("qad_train").execute_in_process(instance=instance, **kwargs)
        ),
        daemon=True,
    )
    thread.start()
    thread.join(seconds)
    assert results, f"the run did not finish within {seconds} s (blocked on the gpu pool?)"
    return results[0]


def test_a_second_qad_on_the_storage_root_is_refused_and_the_lock_dies_with_its_holder(storage: Path) -> None:
    holder = start_child(storage, "lock", 60, "LOCKED")
    try:
        with pytest.raises(StorageInUse) as refused, storage_lock(storage):
            pass
        message = str(refused.value)
        assert f"storage {storage} is in use by another qad command (pid {holder.pid} on " in message
        assert "qad run --test" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with storage_lock(storage):  # the kernel released it with the process
        assert (storage / ".qad-run.lock").exists()


def test_a_run_killed_while_it_holds_the_gpu_pool_is_failed_and_freed_by_the_next_qad(storage: Path) -> None:
    killed = start_child(storage, "run", 120, "TRAINING")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    with storage_lock(storage), dg.DagsterInstance.from_config(str(storage / "dagster_home")) as instance:
        (dead,) = instance.get_runs()
        assert dead.status == dg.DagsterRunStatus.STARTED and dead.tags[LAUNCHER_TAG] == "qad-cli"
        assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == {dead.run_id}

        lines = recover_interrupted_runs(instance)

        assert lines == [
            f"run {dead.run_id} (qad_train, pid {killed.pid} on {dead.tags['qad/host']}) was interrupted: "
            "marked failed",
            f"run {dead.run_id} (qad_train) had ended holding pool slots: freed",
        ]
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == set()
        assert run_with_deadline(instance, 180, tags=run_tags()).success
        assert recover_interrupted_runs(instance) == []  # nothing left to recover


def test_a_run_waiting_for_the_pool_says_which_run_holds_it(storage: Path) -> None:
    holder = start_child(storage, "run", 8, "TRAINING")  # a live run, not a dead one: it must be waited for
    try:
        with dg.DagsterInstance.from_config(str(storage / "dagster_home")) as instance:
            (held,) = instance.get_runs()
            run_id = "00000000-0000-4000-8000-000000000001"
            with PoolWaitReporter(instance, run_id, interval=0.5) as reporter:
                result = run_with_deadline(instance, 90, run_id=run_id, tags=run_tags())
            assert result.success
        assert reporter.reported, "nothing was said while the run waited"
        assert reporter.reported[0].startswith("train waits for pool gpu (limit 1), held by train of run ")
        assert f"{held.run_id} (qad_train, STARTED, started by qad pid {holder.pid} on " in reporter.reported[0]
    finally:
        holder.wait(timeout=60)


def test_qad_run_takes_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The command itself is refused while another holds the lock, before it reads anything."""
    from qad_assets.cli import main

    holder = start_child(tmp_path, "lock", 60, "LOCKED")
    try:
        started = time.perf_counter()
        code = main(["run", "--archive", str(tmp_path), "--storage", str(tmp_path)])
        assert code == 2 and time.perf_counter() - started < 5
        assert f"is in use by another qad command (pid {holder.pid} on" in capsys.readouterr().err
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()


def test_the_daemon_frees_the_slots_of_a_run_that_ended_holding_them(storage: Path, monkeypatch) -> None:
    """Runs launched from the UI are watched by the daemon: with the instance template's run monitoring, a run
    marked failed (run monitoring does that when its worker dies) has its pool slots freed."""
    import datetime
    from types import SimpleNamespace

    from dagster._daemon.monitoring import concurrency

    killed = start_child(storage, "run", 120, "TRAINING")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    with dg.DagsterInstance.from_config(str(storage / "dagster_home")) as instance:
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 60
        (dead,) = instance.get_runs()
        instance.report_run_failed(dead, "its worker died")
        assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == {dead.run_id}
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=120)
        monkeypatch.setattr(concurrency, "get_current_datetime", lambda: later)
        context = SimpleNamespace(instance=instance)
        list(concurrency.execute_concurrency_slots_iteration(context, logging.getLogger("test")))
        assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == set()
        assert run_with_deadline(instance, 180, tags=run_tags()).success
