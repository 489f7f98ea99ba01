"""A release's candidates held in memory, filtered, sorted and paged on the server.

The browser never holds a release: it asks for one page at a time. The candidates (``read_candidates``:
scalar scores, features, positions, latent vectors, a few tens of MB for 150,000 spectra) are read once
and cached as ``<storage>/explorer/<release>/index.parquet``, tagged with a fingerprint of the product
files it was built from (their names, sizes and modification times), so a restart reads one file and a
rescored release is re-read. Labels come from the label database on every request and are joined in, so
every page shows the labels as they are now. No Dagster import.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from qad_assets.labels.store import LabelEvent
from qad_assets.science.io.parquet_store import read_metadata, write_table_atomic
from qad_assets.science.ranking.candidates import read_candidates
from qad_assets.science.ranking.interest import InterestOptions, rank_candidates

INDEX_VERSION = "1"
FINGERPRINT_KEY = "qad_explorer_fingerprint"
#: Products the index is built from; a change in any of their files rebuilds it.
SOURCES = ("anomaly_scores", "spectral_features", "raw_spectra", "candidate_ranking")
RANKING_COLUMNS = ("priority", "priority_rank", "interest")
LABEL_COLUMNS = ("label", "note", "author", "labelled_at", "revision")
#: Columns a page carries (those the release has), in display order.
PAGE_COLUMNS = (
    "rank",
    "priority_rank",
    "TARGETID",
    "RA",
    "DEC",
    "Z",
    "snr",
    "anomaly_score",
    "p_value",
    "top_component",
    "top_region",
    "worst_arm",
    "civ_ew",
    "mgii_ew",
    "ciii_ew",
    "civ_bi",
    "civ_ai",
    "alpha_lambda",
    "bal",
    *LABEL_COLUMNS,
)
MAX_PAGE = 500


@dataclass(frozen=True)
class TableQuery:
    """A view of the table: filters (None = no bound), order and page."""

    sort: str = "rank"
    descending: bool = False
    offset: int = 0
    limit: int = 50
    score_min: float | None = None
    score_max: float | None = None
    p_min: float | None = None
    p_max: float | None = None
    z_min: float | None = None
    z_max: float | None = None
    region: str | None = None
    component: str | None = None
    labelled: bool | None = None
    label: str | None = None
    bal: bool | None = None


class QueryError(ValueError):
    """A query the table cannot answer (an unknown column to sort by, a page too large)."""


class ReleaseCatalog:
    """The candidates of one release: ``frame`` (one row per scored spectrum, in rank order) and ``latent``
    (its rows' latent vectors, for "more like this").
    """

    def __init__(self, release: str, frame: pl.DataFrame, fingerprint: str) -> None:
        frame = frame.sort("rank", nulls_last=True)
        self.release = release
        self.fingerprint = fingerprint
        self.latent = (
            frame["latent"].to_numpy().astype(np.float32).reshape(len(frame), -1)
            if "latent" in frame.columns
            else np.zeros((len(frame), 0), np.float32)
        )
        self.frame = _with_bal(frame.drop("latent", strict=False))
        targetid = self.frame["TARGETID"].to_numpy()
        self._ids, first = np.unique(targetid, return_index=True)
        self._row_of = first  # the best-ranked row of a TARGETID observed in two programs
        self.columns = [c for c in PAGE_COLUMNS if c in self.frame.columns or c in LABEL_COLUMNS]

    @classmethod
    def open(cls, storage: Path, release: str) -> ReleaseCatalog:
        """The cached index when its fingerprint matches the products, else rebuilt (and cached if the
        storage root is writable).
        """
        fingerprint = source_fingerprint(storage, release)
        index = index_path(storage, release)
        if index.exists() and read_metadata(index).get(FINGERPRINT_KEY) == fingerprint:
            return cls(release, pl.read_parquet(index), fingerprint)
        frame = _with_ranking(read_candidates(storage, release), storage, release)
        table = frame.to_arrow()
        with contextlib.suppress(OSError):  # a read-only storage root: serve from memory
            write_table_atomic(table.replace_schema_metadata({FINGERPRINT_KEY: fingerprint}), index)
        return cls(release, frame, fingerprint)

    def __len__(self) -> int:
        return len(self.frame)

    def position(self, targetid: int) -> int | None:
        """Row of ``targetid`` in ``frame``, or None if the release has no such spectrum."""
        i = int(np.searchsorted(self._ids, targetid))
        return int(self._row_of[i]) if i < len(self._ids) and self._ids[i] == targetid else None

    def labelled(self, labels: list[LabelEvent]) -> pl.DataFrame:
        """``frame`` with the current labels joined in (null where unlabelled)."""
        table = pl.DataFrame(
            {
                "TARGETID": [e.targetid for e in labels],
                "label": [e.label for e in labels],
                "note": [e.note for e in labels],
                "author": [e.author for e in labels],
                "labelled_at": [e.created_at.isoformat() for e in labels],
                "revision": [e.revision for e in labels],
            },
            schema={
                "TARGETID": pl.Int64,
                "label": pl.String,
                "note": pl.String,
                "author": pl.String,
                "labelled_at": pl.String,
                "revision": pl.Int64,
            },
        )
        return self.frame.join(table, on="TARGETID", how="left", maintain_order="left")

    def select(self, labels: list[LabelEvent], query: TableQuery) -> pl.DataFrame:
        """Every row the query's filters keep, in its order (the page is for :meth:`page` to cut)."""
        frame = self.labelled(labels)
        if query.sort not in self.columns:
            raise QueryError(f"cannot sort by {query.sort!r}; columns: {', '.join(self.columns)}")
        conditions = [
            _between("anomaly_score", query.score_min, query.score_max),
            _between("p_value", query.p_min, query.p_max),
            _between("Z", query.z_min, query.z_max),
        ]
        if query.region:
            conditions.append(pl.col("top_region") == query.region)
        if query.component and "top_component" in frame.columns:
            conditions.append(pl.col("top_component") == query.component)
        if query.labelled is not None:
            conditions.append(pl.col("label").is_not_null() if query.labelled else pl.col("label").is_null())
        if query.label:
            conditions.append(pl.col("label") == query.label)
        if query.bal is not None:
            conditions.append(pl.col("bal") if query.bal else ~pl.col("bal"))
        kept = [c for c in conditions if c is not None]
        if kept:
            frame = frame.filter(pl.all_horizontal(kept))
        return frame.sort(query.sort, descending=query.descending, nulls_last=True, maintain_order=True)

    def page(self, labels: list[LabelEvent], query: TableQuery) -> dict[str, Any]:
        """One page of the view: ``total`` rows match, ``rows`` are ``limit`` of them from ``offset``."""
        if not 1 <= query.limit <= MAX_PAGE:
            raise QueryError(f"limit must be 1 to {MAX_PAGE}")
        view = self.select(labels, query)
        rows = view.slice(query.offset, query.limit).select([c for c in self.columns if c in view.columns])
        return {"total": len(view), "offset": query.offset, "columns": self.columns, "rows": json_rows(rows)}

    def neighbours(self, position: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows nearest to row ``position`` in latent space (Euclidean), nearest first, and their
        distances: "more like this".
        """
        if self.latent.shape[1] == 0 or len(self) < 2:
            return np.zeros(0, np.int64), np.zeros(0)
        d2 = np.sum((self.latent - self.latent[position]) ** 2, axis=1)
        d2[position] = np.inf
        k = min(k, len(self) - 1)
        nearest = np.argpartition(d2, k)[:k]
        nearest = nearest[np.argsort(d2[nearest], kind="stable")]
        return nearest, np.sqrt(d2[nearest])

    def rerank(self, labels: list[LabelEvent], interest_of: Mapping[str, float], options: InterestOptions) -> int:
        """Re-rank now with the current labels (``candidate_ranking``'s science, in memory: the asset stays
        the persisted product); returns the number of labels learned from.
        """
        candidates = self.frame.with_columns(pl.Series("latent", self.latent))
        current = {event.targetid: event.label for event in labels}
        ranking = rank_candidates(candidates, current, interest_of, options)
        ranked = ranking.select(
            "priority",
            pl.when(pl.col("priority_rank") > 0).then(pl.col("priority_rank")).alias("priority_rank"),
            "interest",
        )
        self.frame = self.frame.drop(RANKING_COLUMNS, strict=False).hstack(ranked)
        self.columns = [c for c in PAGE_COLUMNS if c in self.frame.columns or c in LABEL_COLUMNS]
        return sum(code in interest_of for code in current.values())

    def options(self) -> dict[str, list[str]]:
        """Values the region and component filters can take in this release."""
        found = {}
        for column in ("top_region", "top_component"):
            if column in self.frame.columns:
                found[column] = sorted(v for v in self.frame[column].unique().to_list() if v)
        return found


def index_path(storage: Path, release: str) -> Path:
    return Path(storage) / "explorer" / release / "index.parquet"


def source_fingerprint(storage: Path, release: str) -> str:
    """SHA-256 over the names, sizes and modification times of the files the index is built from."""
    entries = [INDEX_VERSION]
    for asset in SOURCES:
        for path in sorted((Path(storage) / asset / release).glob("*.parquet")):
            stat = path.stat()
            entries.append(f"{asset}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def json_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts: NaN and infinities become null, and TARGETIDs strings (DESI's exceed 2**53,
    beyond which a JavaScript number cannot tell neighbouring integers apart).
    """
    rows = frame.to_dicts()
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = None
        if row.get("TARGETID") is not None:
            row["TARGETID"] = str(row["TARGETID"])
    return rows


def _with_ranking(frame: pl.DataFrame, storage: Path, release: str) -> pl.DataFrame:
    """Join the ``candidate_ranking`` asset's priority, when the release has one."""
    path = Path(storage) / "candidate_ranking" / release / "ranking.parquet"
    if not path.exists():
        return frame
    ranking = pl.read_parquet(path, columns=["partition", "row", *RANKING_COLUMNS])
    return frame.join(ranking, on=["partition", "row"], how="left", maintain_order="left").with_columns(
        pl.when(pl.col("priority_rank") > 0).then(pl.col("priority_rank")).alias("priority_rank")
    )


def _with_bal(frame: pl.DataFrame) -> pl.DataFrame:
    """``bal``: a balnicity index above 0 in C IV or Si IV (the BAL definition of Weymann et al. 1991)."""
    bi = [c for c in ("civ_bi", "siiv_bi") if c in frame.columns]
    if not bi:
        return frame.with_columns(pl.lit(False).alias("bal"))
    return frame.with_columns(pl.any_horizontal([pl.col(c).fill_null(0).fill_nan(0) > 0 for c in bi]).alias("bal"))


def _between(column: str, low: float | None, high: float | None) -> pl.Expr | None:
    if low is None and high is None:
        return None
    expr = pl.lit(True)
    if low is not None:
        expr = expr & (pl.col(column) >= low)
    if high is not None:
        expr = expr & (pl.col(column) <= high)
    return expr
