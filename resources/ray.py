"""Ray: where heavy per-partition work runs (local Ray by default, a cluster in production)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dagster as dg
import ray
from pydantic import PrivateAttr


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
        options: dict[str, Any] = {"address": self.address} if self.address else {"num_cpus": self.num_cpus}
        ray.init(**options, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self._started_here = True

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._started_here:
            ray.shutdown()

    def imap_unordered(
        self, fn: Callable[..., Any], items: Sequence[Any], *, num_cpus: float = 1, num_gpus: float = 0
    ) -> Iterator[tuple[int, Any]]:
        """Run ``fn(item)`` for every item as Ray tasks; yield ``(index, result)`` as each finishes.

        A task that raised yields its exception as the result, so one failure does not hide the others.
        """
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(fn)
        pending = {task.remote(item): index for index, item in enumerate(items)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index = pending.pop(ref)
                try:
                    yield index, ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    yield index, err.as_instanceof_cause()
