"""The torch device: CUDA when present, CPU otherwise, with the precision and memory options that go with it.

A plain object, so that the assets (through ``GpuResource``) and the scoring service choose the device
the same way, and the service does not import Dagster.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch

from qad_assets.errors import UserError


@dataclass(frozen=True)
class DeviceChoice:
    """Chooses the torch device, so that everything using it agrees and reports the same thing.

    ``device`` is ``auto`` (CUDA if available), ``cuda`` or ``cpu``. On CUDA, ``precision`` selects bf16
    autocast for the model, TF32 matmuls are allowed and ``memory_fraction`` caps this process's share
    of the card (the ``gpu`` pool keeps two steps from sharing it anyway).
    """

    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"
    memory_fraction: float = 0.9

    def torch_device(self) -> torch.device:
        if self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise UserError("device 'cuda' was asked for but torch sees no CUDA device")
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.cuda.set_per_process_memory_fraction(self.memory_fraction)
            return torch.device("cuda")
        return torch.device("cpu")

    def autocast_dtype(self) -> torch.dtype | None:
        """bf16 on CUDA when configured; None (full precision) on CPU."""
        return torch.bfloat16 if self.precision == "bf16" and self.torch_device().type == "cuda" else None

    def dataframe_backend(self) -> str:
        """``cudf`` when the GPU is used and the ``gpu`` extra (cuDF) is installed, else ``polars``."""
        return "cudf" if self.torch_device().type == "cuda" and importlib.util.find_spec("cudf") else "polars"

    def describe(self) -> dict[str, str]:
        """What the materialization metadata reports about the device."""
        device = self.torch_device()
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        return {
            "device": str(device),
            "device_name": name,
            "precision": self.precision if device.type == "cuda" else "fp32",
            "torch": torch.__version__,
        }
