"""The knobs of the demo release: what a validation release made with another seed may change.

Why a settings object: the defaults reproduce the noise statistics measured on real DESI coadds and the
incidence of absorbers in the literature (docs/realism.md); a validation release can move any of them
without touching the code, so that a detector is judged on data nobody tuned it on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from qad_assets.errors import UserError


@dataclass(frozen=True)
class DemoSettings:
    """Physical knobs of :func:`qad_assets.demo.write_demo_release`; the defaults are the realistic ones."""

    #: fraction of the kept quasar targets that carry an anomaly (the nine classes cycle over them)
    anomaly_fraction: float = 0.04
    #: multiplies every exposure time: S/N per pixel grows about as its square root
    exposure_scale: float = 1.0
    #: scales the sky-subtraction residuals (1 = as measured on real coadds at strong sky lines)
    sky_residual: float = 1.0
    #: true noise σ over the pipeline's stated σ, minus 1, on average over spectra
    ivar_optimism: float = 0.05
    #: fraction of pixels whose noise is TAIL_SCALE times wider than their ivar says
    tail_fraction: float = 0.004
    #: rms of the smooth multiplicative flux-calibration error over a spectrum
    calibration_wiggle: float = 0.015
    #: rms of each arm's own flux-calibration offset
    arm_offset: float = 0.01
    #: multiplies the literature incidence of Lyman-limit systems, DLAs and metal absorbers
    absorber_rate: float = 1.0
    #: fraction of quasars with associated narrow absorbers (C IV, N V, Si IV, Lyα near z_qso)
    associated_fraction: float = 0.25

    def __post_init__(self) -> None:
        limits = {
            "anomaly_fraction": (0.0, 0.5),
            "exposure_scale": (0.05, 20.0),
            "sky_residual": (0.0, 10.0),
            "ivar_optimism": (0.0, 0.5),
            "tail_fraction": (0.0, 0.1),
            "calibration_wiggle": (0.0, 0.2),
            "arm_offset": (0.0, 0.2),
            "absorber_rate": (0.0, 10.0),
            "associated_fraction": (0.0, 1.0),
        }
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise UserError(f"DemoSettings.{name} must be in [{lo:g}, {hi:g}], got {value!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DemoSettings:
        values = json.loads(text)
        known = {f.name for f in fields(cls)}
        if not isinstance(values, dict) or set(values) - known:
            raise UserError(f"demo settings: expected an object with keys among {sorted(known)}, got {text!r}")
        return cls(**values)
