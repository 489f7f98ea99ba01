"""Shadow scoring records: the champion's and the challenger's score of the same live spectrum.

One JSON line per spectrum in ``<folder>/shadow-<UTC date>.jsonl`` (appended with one ``write`` per
request), plus running totals for ``GET /model``. Compare the two versions on live traffic with e.g.
``polars.read_ndjson``.
"""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


class ShadowLog:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.spectra = 0
        self._abs_difference = 0.0
        self._compared = 0
        self._lock = threading.Lock()

    def record(
        self,
        request_id: str,
        targetid: list[int | None],
        champion: tuple[str, dict[str, np.ndarray]],
        challenger: tuple[str, dict[str, np.ndarray]],
    ) -> Path:
        """Append one line per spectrum: both versions with their score and p-value; returns the file."""
        now = datetime.now(UTC)
        (champion_version, ours), (challenger_version, theirs) = champion, challenger
        lines = []
        for row, tid in enumerate(targetid):
            record = {
                "time": now.isoformat(timespec="milliseconds"),
                "request_id": request_id,
                "index": row,
                "targetid": tid,
                "champion_version": champion_version,
                "champion_score": _number(ours["anomaly_score"][row]),
                "champion_p_value": _number(ours["p_value"][row]),
                "challenger_version": challenger_version,
                "challenger_score": _number(theirs["anomaly_score"][row]),
                "challenger_p_value": _number(theirs["p_value"][row]),
            }
            lines.append(json.dumps(record) + "\n")
        difference = np.abs(ours["anomaly_score"] - theirs["anomaly_score"])
        path = self.folder / f"shadow-{now:%Y-%m-%d}.jsonl"
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write("".join(lines))
            self.spectra += len(lines)
            self._abs_difference += float(np.nansum(difference))
            self._compared += int(np.isfinite(difference).sum())
        return path

    def summary(self) -> dict[str, float | int | str | None]:
        mean = self._abs_difference / self._compared if self._compared else None
        return {"spectra": self.spectra, "mean_abs_score_difference": mean, "folder": str(self.folder)}


def _number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
