"""The GPU for the assets: ``DeviceChoice`` (``qad_assets.science.device``) as a Dagster resource."""

from __future__ import annotations

from typing import Literal

import dagster as dg

from qad_assets.science.device import DeviceChoice


class GpuResource(dg.ConfigurableResource):
    """Chooses the torch device once, so every GPU-capable asset agrees and reports the same thing.

    ``device`` is ``auto`` (CUDA if available), ``cuda`` or ``cpu``; ``precision`` and ``memory_fraction``
    apply on CUDA (``DeviceChoice``).
    """

    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"
    memory_fraction: float = 0.9

    def choice(self) -> DeviceChoice:
        return DeviceChoice(self.device, self.precision, self.memory_fraction)
