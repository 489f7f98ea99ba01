"""The label database: every label ever given, append-only, through SQLAlchemy (SQLite or PostgreSQL).

One table of label events. A label is never updated or deleted: relabelling a candidate adds its next
revision, so the history of every candidate (who said what, when) is kept, and the current label is the
highest revision. Writers name the revision they are replacing (0 for none); a unique constraint on
(release, TARGETID, revision) makes two people relabelling the same candidate at once collide instead of
one silently overwriting the other: the second gets :class:`StaleLabelError` with the label that won, and
decides again. Labels of different candidates never conflict.

SQLite (the default, ``<storage>/labels/labels.sqlite``) runs in WAL mode with a busy timeout, so
readers never block and concurrent writers wait their turn; PostgreSQL (``QAD_LABELS_DB``, e.g. the
Dagster instance's server) keeps the table in a schema of its own (``qad_labels``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from qad_assets.errors import UserError
from qad_assets.labels.vocabulary import BY_CODE, MAX_AUTHOR_CHARS, MAX_NOTE_CHARS

#: PostgreSQL schema of the label table: apart from the Dagster instance's tables on the same server.
POSTGRES_SCHEMA = "qad_labels"
SQLITE_BUSY_TIMEOUT_S = 30.0
_RELEASE = re.compile(r"^[a-z0-9]+$")
#: The control characters a note may hold: free text from a text box, its line breaks and tabs included.
NOTE_WHITESPACE = "\t\n"

METADATA = sa.MetaData()
EVENTS = sa.Table(
    "label_events",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("release", sa.String(64), nullable=False),
    sa.Column("targetid", sa.BigInteger, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("label", sa.String(32), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("author", sa.String(MAX_AUTHOR_CHARS), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("release", "targetid", "revision", name="uq_label_revision"),
)


class LabelError(UserError):
    """A label the vocabulary or the limits refuse (unknown label, note too long, no author)."""


class StaleLabelError(LabelError):
    """The candidate was relabelled since the revision the writer replaced; ``current`` is what it is now."""

    def __init__(self, current: LabelEvent | None, replaces: int) -> None:
        found = f"revision {current.revision} ({current.label} by {current.author})" if current else "no label"
        super().__init__(f"the candidate has {found}, not revision {replaces}: reload it and label again")
        self.current = current


@dataclass(frozen=True)
class LabelEvent:
    """One label given: ``revision`` counts the labels of this candidate, 1 for the first."""

    id: int
    release: str
    targetid: int
    revision: int
    label: str
    note: str
    author: str
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": self.created_at.isoformat()}


def default_url(storage: str | Path) -> str:
    """The SQLite database under a storage root: labels live beside the products they describe."""
    return f"sqlite:///{Path(storage).resolve() / 'labels' / 'labels.sqlite'}"


def check_label(label: str, note: str, author: str) -> None:
    """Refuse what the vocabulary and the limits do not allow, before anything is written."""
    if label not in BY_CODE:
        raise LabelError(f"label {label!r} is not in the vocabulary: {', '.join(BY_CODE)}")
    if len(note) > MAX_NOTE_CHARS:
        raise LabelError(f"note of {len(note)} characters; at most {MAX_NOTE_CHARS}")
    if not author.strip() or len(author) > MAX_AUTHOR_CHARS:
        raise LabelError(f"author must be 1 to {MAX_AUTHOR_CHARS} characters")
    _check_text("author", author, allowed="")
    _check_text("note", note, allowed=NOTE_WHITESPACE)


def _check_text(field: str, text: str, *, allowed: str) -> None:
    """Refuse control characters (C0, DEL, C1: SQLite's C API stops at NUL, CSV and VOTable carry them
    raw or drop them) and lone surrogates (not encodable in UTF-8), so that what is stored is what every
    export and page shows. ``allowed``: the control characters this field may hold.
    """
    for position, char in enumerate(text):
        category = unicodedata.category(char)
        if (category == "Cc" and char not in allowed) or category == "Cs":
            kind = "a lone surrogate" if category == "Cs" else "a control character"
            raise LabelError(
                f"{field} may not hold {kind} (U+{ord(char):04X} at position {position})"
                + ("; tabs and line breaks are allowed" if allowed else "")
            )


class LabelStore:
    """Labels in one database (an SQLAlchemy URL); the table is created on first use."""

    def __init__(self, url: str, *, schema: str = POSTGRES_SCHEMA) -> None:
        if url.startswith("postgresql://"):  # SQLAlchemy >= 2.1 means psycopg 3; dagster-postgres brings psycopg2
            url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
        self.url = url
        engine = sa.create_engine(url, **_engine_options(url))
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
            schema_name = None
        else:
            schema_name = schema
            with engine.begin() as conn:
                conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
        self._engine: Engine = engine.execution_options(schema_translate_map={None: schema_name})
        with self._engine.begin() as conn:
            METADATA.create_all(conn)

    @classmethod
    def for_storage(cls, storage: str | Path, url: str | None = None) -> LabelStore:
        """The configured database (``QAD_LABELS_DB``), else SQLite under the storage root."""
        if not url:
            (Path(storage) / "labels").mkdir(parents=True, exist_ok=True)
        return cls(url or default_url(storage))

    def close(self) -> None:
        self._engine.dispose()

    def add(
        self, release: str, targetid: int, label: str, *, author: str, note: str = "", replaces: int = 0
    ) -> LabelEvent:
        """Label a candidate as revision ``replaces + 1``; :class:`StaleLabelError` if ``replaces`` is not
        its current revision (0: it has none), so that nobody's label is replaced unseen.
        """
        check_label(label, note, author)
        _check_release(release)
        if targetid <= 0:
            raise LabelError(f"TARGETID must be positive, got {targetid}")
        try:
            with self._engine.begin() as conn:
                current = _current_revision(conn, release, targetid)
                if current != replaces:
                    raise _Stale
                row = {
                    "release": release,
                    "targetid": int(targetid),
                    "revision": current + 1,
                    "label": label,
                    "note": note,
                    "author": author.strip(),
                    "created_at": datetime.now(UTC),
                }
                (event_id,) = conn.execute(sa.insert(EVENTS).values(**row)).inserted_primary_key
        except (_Stale, IntegrityError):  # IntegrityError: another writer took that revision first
            raise StaleLabelError(self.latest(release, targetid), replaces) from None
        return LabelEvent(id=int(event_id), **row)

    def latest(self, release: str, targetid: int) -> LabelEvent | None:
        """The current label of one candidate, or None."""
        history = self.history(release, targetid)
        return history[-1] if history else None

    def history(self, release: str, targetid: int) -> list[LabelEvent]:
        """Every label of one candidate, oldest first."""
        query = (
            sa.select(EVENTS)
            .where(EVENTS.c.release == release, EVENTS.c.targetid == int(targetid))
            .order_by(EVENTS.c.revision)
        )
        with self._connect() as conn:
            return [_event(row) for row in conn.execute(query)]

    def current(self, release: str) -> list[LabelEvent]:
        """The current label of every labelled candidate of a release, in TARGETID order."""
        latest = (
            sa.select(EVENTS.c.targetid, sa.func.max(EVENTS.c.revision).label("revision"))
            .where(EVENTS.c.release == release)
            .group_by(EVENTS.c.targetid)
            .subquery()
        )
        query = (
            sa.select(EVENTS)
            .join(latest, sa.and_(EVENTS.c.targetid == latest.c.targetid, EVENTS.c.revision == latest.c.revision))
            .where(EVENTS.c.release == release)
            .order_by(EVENTS.c.targetid)
        )
        with self._connect() as conn:
            return [_event(row) for row in conn.execute(query)]

    def count_events(self, release: str | None = None) -> int:
        """Label events stored (every revision), for one release or all."""
        query = sa.select(sa.func.count()).select_from(EVENTS)
        if release is not None:
            query = query.where(EVENTS.c.release == release)
        with self._connect() as conn:
            return int(conn.execute(query).scalar_one())

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            yield conn


class _Stale(Exception):
    """The revision check failed inside the transaction (turned into StaleLabelError outside it)."""


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}}
    return {"pool_pre_ping": True}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL: readers never wait for a writer; the busy timeout makes concurrent writers queue."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.close()


def _check_release(release: str) -> None:
    if not _RELEASE.match(release):
        raise LabelError(f"release must match [a-z0-9]+, got {release!r}")


def _current_revision(conn: Connection, release: str, targetid: int) -> int:
    query = sa.select(sa.func.max(EVENTS.c.revision)).where(
        EVENTS.c.release == release, EVENTS.c.targetid == int(targetid)
    )
    return int(conn.execute(query).scalar() or 0)


def _event(row: sa.Row) -> LabelEvent:
    values = row._mapping
    created = values["created_at"]
    if created.tzinfo is None:  # SQLite keeps no zone; every time stored is UTC
        created = created.replace(tzinfo=UTC)
    return LabelEvent(
        id=int(values["id"]),
        release=values["release"],
        targetid=int(values["targetid"]),
        revision=int(values["revision"]),
        label=values["label"],
        note=values["note"],
        author=values["author"],
        created_at=created,
    )
