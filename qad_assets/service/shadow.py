"""Shadow scoring records: the champion's and the challenger's score of the same live spectrum.

One JSON line per spectrum in ``<folder>/shadow-<UTC date>.jsonl``, a request's lines appended with one
``write``, plus running totals for ``GET /model``. Compare the two versions on live traffic with e.g.
``polars.read_ndjson``.
"""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from qad_assets.service.inputs import ScoredPiece


class ShadowLog:
    """Appends comparison records and keeps the totals (spectra compared, mean |Δscore|, skipped requests)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.spectra = 0
        self.skipped = 0
        self._abs_difference = 0.0
        self._compared = 0
        self._lock = threading.Lock()

    def record(self, request_id: str, champion: list[ScoredPiece], challenger: list[ScoredPiece]) -> Path:
        """Append one line per spectrum of a request (``index`` as in the response); returns the file."""
        now = datetime.now(UTC)
        lines, differences = [], []
        for ours, theirs in zip(champion, challenger, strict=True):
            spectra = ours.spectra
            for i in range(len(spectra)):
                record = {
                    "time": now.isoformat(timespec="milliseconds"),
                    "request_id": request_id,
                    "index": int(spectra.columns["index"][i]),
                    "targetid": int(spectra.targetid[i]) if spectra.columns["has_targetid"][i] else None,
                    "champion_version": ours.model.version,
                    "champion_score": _number(ours.scores["anomaly_score"][i]),
                    "champion_p_value": _number(ours.scores["p_value"][i]),
                    "challenger_version": theirs.model.version,
                    "challenger_score": _number(theirs.scores["anomaly_score"][i]),
                    "challenger_p_value": _number(theirs.scores["p_value"][i]),
                }
                lines.append(json.dumps(record) + "\n")
            differences.append(np.abs(ours.scores["anomaly_score"] - theirs.scores["anomaly_score"]))
        difference = np.concatenate(differences)
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
        """What ``GET /model`` reports: spectra compared, their mean |Δscore|, requests not shadowed, the folder."""
        mean = self._abs_difference / self._compared if self._compared else None
        return {
            "spectra": self.spectra,
            "mean_abs_score_difference": mean,
            "skipped_requests": self.skipped,
            "folder": str(self.folder),
        }


def _number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
