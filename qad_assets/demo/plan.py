"""Release composition: which rows a pixel holds, which are anomalous, broken or not quasars at all."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qad_assets.demo.geometry import FIRST_PIXEL
from qad_assets.errors import UserError
from qad_assets.science.validation.injection import INJECTION_CLASSES

# ---- release composition -------------------------------------------------------------------------
#: One taxonomy: the demo plants the classes validation injects (each with its own, independent recipe).
ANOMALY_CLASSES = INJECTION_CLASSES
#: fraction of a pixel's rows per non-quasar role (at least one each); normal quasars fill the rest
ROLE_FRACTIONS = {
    "unassigned": 0.04,
    "sky": 0.06,
    "badposition": 0.0,
    "galaxy": 0.12,
    "star": 0.05,
    "qso_zwarn": 0.03,
}
#: rows per release that the reader must quarantine, spread over the pixels (duplicates come in pairs)
QUARANTINE_ROWS = {"nonfinite": 2, "negative_ivar": 2, "no_good_pixels": 1, "duplicate_targetid": 2}
FILTER_REASON = {
    "unassigned": "unassigned_fiber",
    "sky": "not_target",
    "badposition": "bad_fiberstatus",
    "galaxy": "not_qso",
    "star": "not_qso",
    "qso_zwarn": "zwarn",
}
TRUE_CLASS = {
    "qso": "qso",
    "qso_zwarn": "qso",
    "galaxy": "galaxy",
    "star": "star",
    "star_as_qso": "star",
    "sky": "sky",
    "unassigned": "unassigned",
    "badposition": "qso",
}
QSO_ROLES = ("qso", "qso_zwarn", "badposition", *QUARANTINE_ROWS)


Columns = dict[str, np.ndarray]  # named per-row arrays (catalogue, parameters, table columns)
Arms = dict[str, dict[str, np.ndarray]]  # per-arm wave/flux/ivar/mask/resolution/model


@dataclass
class PixelPlan:
    index: int
    healpix: int
    program: str
    roles: np.ndarray  # role of each row (before shuffling)
    anomaly: np.ndarray  # anomaly class or ''
    strength: np.ndarray  # anomaly strength in (0, 1], NaN for normal rows


def plan_release(n_pixels: int, n_rows: int, anomaly_fraction: float, seed: int) -> list[PixelPlan]:
    """Decide every row's role, anomaly class and strength.

    ``anomaly_fraction`` of a pixel's quasar targets (the rows not in ROLE_FRACTIONS: normal and anomalous
    quasars, stars labelled QSO, the few broken rows) are anomalies. Anomaly classes cycle over the
    release, so every class is present once there are nine anomalies; within a class the strengths are
    spread evenly from subtle (0.1) to obvious (1) and shuffled over the pixels.
    """
    rng = np.random.default_rng([seed, 2**32])
    units = [[code] for code, count in QUARANTINE_ROWS.items() if code != "duplicate_targetid" for _ in range(count)]
    units += [["duplicate_targetid"] * 2 for _ in range(QUARANTINE_ROWS["duplicate_targetid"] // 2)]
    fixed = {role: max(1, round(frac * n_rows)) for role, frac in ROLE_FRACTIONS.items()}
    n_anom = round(anomaly_fraction * max(n_rows - sum(fixed.values()), 0))
    cls_of = np.arange(n_anom * n_pixels) % len(ANOMALY_CLASSES)
    strength_all = np.zeros(cls_of.size)
    for c in range(len(ANOMALY_CLASSES)):
        members = np.flatnonzero(cls_of == c)
        strength_all[members] = 0.1 + 0.9 * (rng.permutation(members.size) + 0.5) / members.size
    plans = []
    for i in range(n_pixels):
        program = "bright" if n_pixels >= 2 and i == n_pixels - 1 else "dark"
        pixel_broken = [code for unit in units[i::n_pixels] for code in unit]
        n_qso = n_rows - sum(fixed.values()) - n_anom - len(pixel_broken)
        if n_qso < 5:
            raise UserError(f"targets_per_pixel={n_rows} is too small for the release composition")
        classes = np.array(ANOMALY_CLASSES)[cls_of[i * n_anom : (i + 1) * n_anom]]
        roles = np.concatenate(
            [
                np.repeat(list(fixed), list(fixed.values())),
                np.array(pixel_broken, dtype="U20"),
                np.where(classes == "star_as_qso", "star_as_qso", "qso"),
                np.full(n_qso, "qso"),
            ]
        ).astype("U20")
        anomaly = np.concatenate([np.full(n_rows - n_qso - n_anom, ""), classes, np.full(n_qso, "")])
        strength = np.full(n_rows, np.nan)
        strength[n_rows - n_qso - n_anom : n_rows - n_qso] = strength_all[i * n_anom : (i + 1) * n_anom]
        plans.append(PixelPlan(i, FIRST_PIXEL + i, program, roles, anomaly.astype("U20"), strength))
    return plans
