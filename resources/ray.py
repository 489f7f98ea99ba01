"""Ray: where heavy per-partition work runs (local Ray by default, a cluster in production)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dagster as dg
import ray
from pydantic import PrivateAttr

#: Ray re-runs a task whose worker process or node died (never one that raised): a partition step rewrites
#: its files atomically with the same bytes, so losing a node costs its tasks' time, not the run.
NODE_LOSS_RETRIES = 3


class RayResource(dg.ConfigurableResource):
    """Connects to Ray once per run; ``address`` empty means a local Ray with ``num_cpus`` (on loopback only
    under ``qad``, which sets ``config.RAY_LOOPBACK`` before Ray is imported)."""

    address: str | None = None
    num_cpus: int | None = None
    _started_here: bool = PrivateAttr(default=False)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if ray.is_initialized():
            return
        # A local Ray listens on loopback only when Ray was imported with config.RAY_LOOPBACK set (qad does).
        # "local" starts our own even where `ray start` left a cluster on this machine: without an address,
        # ray.init would join that cluster (someone else's) instead.
        options: dict[str, Any] = (
            {"address": self.address} if self.address else {"address": "local", "num_cpus": self.num_cpus}
        )
        ray.init(**options, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self._started_here = True

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._started_here:
            ray.shutdown()

    def imap_unordered(
        self, fn: Callable[..., Any], items: Sequence[Any], *, num_cpus: float = 1, num_gpus: float = 0
    ) -> Iterator[tuple[int, Any]]:
        """Run ``fn(item)`` for every item as Ray tasks; yield ``(index, result)`` as each finishes.

        A task that raised yields its exception as the result, so one failure does not hide the others; one
        whose worker or node died is run again elsewhere (up to :data:`NODE_LOSS_RETRIES` times), then
        yields Ray's error.
        """
        retries = {"max_retries": NODE_LOSS_RETRIES, "retry_exceptions": False}
        # SPREAD: partitions go round the nodes; Ray's default packs the driver's node first (its hybrid policy
        # fills a node to half its CPUs before it looks elsewhere), which leaves a CPU pool idle.
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, scheduling_strategy="SPREAD", **retries)(fn)
        pending = {task.remote(item): index for index, item in enumerate(items)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index = pending.pop(ref)
                try:
                    yield index, ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    yield index, err.as_instanceof_cause()
                except ray.exceptions.RayError as err:  # its worker or node died on every attempt
                    yield index, err
