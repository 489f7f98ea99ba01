"""The label database: append-only history, no silent overwrite, concurrent labellers, restarts, PostgreSQL."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import skip_or_fail

from qad_assets.labels.store import LabelError, LabelStore, StaleLabelError
from qad_assets.labels.vocabulary import CODES, LABELS, MAX_NOTE_CHARS


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LabelStore]:
    labels = LabelStore.for_storage(tmp_path)
    yield labels
    labels.close()


def test_vocabulary_has_one_key_per_label() -> None:
    assert len({label.key for label in LABELS}) == len(LABELS)
    assert {"bal", "weak_lines", "wrong_z", "star", "galaxy_blend", "artifact", "changing_look"} <= set(CODES)
    assert {"other_interesting", "normal"} <= set(CODES)


def test_relabelling_keeps_the_history_and_never_overwrites_unseen(store: LabelStore) -> None:
    first = store.add("demo", 7, "bal", author="ann", note="deep C IV trough")
    assert (first.revision, first.label, first.author, first.created_at.tzinfo is not None) == (1, "bal", "ann", True)
    with pytest.raises(StaleLabelError) as stale:
        store.add("demo", 7, "artifact", author="bob")  # bob did not see ann's label
    assert stale.value.current == first
    second = store.add("demo", 7, "artifact", author="bob", replaces=1)
    assert [e.label for e in store.history("demo", 7)] == ["bal", "artifact"]
    assert store.latest("demo", 7) == second
    assert [(e.targetid, e.label) for e in store.current("demo")] == [(7, "artifact")]
    assert store.current("other") == []


@pytest.mark.parametrize(
    ("label", "note", "author", "message"),
    [
        ("supernova", "", "ann", "not in the vocabulary"),
        ("bal", "x" * (MAX_NOTE_CHARS + 1), "ann", "at most"),
        ("bal", "", "  ", "author"),
        ("bal", "a\x00b<script>alert(1)</script>", "ann", r"note may not hold a control character \(U\+0000"),
        ("bal", "line\r\nbreak", "ann", r"note may not hold a control character \(U\+000D"),
        ("bal", "", "x\x00y", r"author may not hold a control character \(U\+0000 at position 1\)"),
        ("bal", "", "ann\tbob", r"author may not hold a control character \(U\+0009"),
        ("bal", "", "ann\x85", r"author may not hold a control character \(U\+0085"),
        ("bal", "", "\ud800", r"author may not hold a lone surrogate \(U\+D800"),
    ],
)
def test_bad_labels_are_refused_and_nothing_is_written(
    store: LabelStore, label: str, note: str, author: str, message: str
) -> None:
    with pytest.raises(LabelError, match=message):
        store.add("demo", 7, label, author=author, note=note)
    assert store.count_events() == 0


def test_a_note_keeps_its_line_breaks_and_tabs(store: LabelStore) -> None:
    note = "C IV trough\n\tand Si IV"
    assert store.add("demo", 7, "bal", author="ann", note=note).note == note
    assert store.latest("demo", 7).note == note


def test_labels_survive_a_restart(tmp_path: Path) -> None:
    store = LabelStore.for_storage(tmp_path)
    store.add("demo", 1, "star", author="ann", note="M dwarf: TiO bands")
    store.add("demo", 1, "normal", author="bob", replaces=1)
    store.close()
    again = LabelStore.for_storage(tmp_path)
    try:
        assert [(e.label, e.author, e.note) for e in again.history("demo", 1)] == [
            ("star", "ann", "M dwarf: TiO bands"),
            ("normal", "bob", ""),
        ]
    finally:
        again.close()


def label_concurrently(stores: list[LabelStore], targets: int) -> list[tuple[str, int]]:
    """Each store (a labeller with their own connection pool) labels every target, rereading and retrying
    when someone else labelled it first, as the page does; returns what each labeller saved.
    """
    saved: list[tuple[str, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(len(stores))

    def labeller(index: int, store: LabelStore) -> None:
        start.wait()
        for target in range(1, targets + 1):
            seen = store.latest("demo", target)
            while True:
                try:
                    store.add("demo", target, "normal", author=f"user{index}", replaces=seen.revision if seen else 0)
                    break
                except StaleLabelError as stale:
                    seen = stale.current
            with lock:
                saved.append((f"user{index}", target))

    threads = [threading.Thread(target=labeller, args=(i, s)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return saved


def test_concurrent_labellers_lose_nothing(tmp_path: Path) -> None:
    stores = [LabelStore.for_storage(tmp_path) for _ in range(3)]
    try:
        saved = label_concurrently(stores, targets=40)
        assert len(saved) == 3 * 40
        for target in range(1, 41):
            history = stores[0].history("demo", target)
            assert [e.revision for e in history] == [1, 2, 3]  # one revision each, none overwritten
            assert sorted(e.author for e in history) == ["user0", "user1", "user2"]
    finally:
        for store in stores:
            store.close()


# --------------------------------------------------------------------------------------------------
# PostgreSQL: the production database (the Dagster instance's server, a schema of its own).


def postgres_url() -> str:
    env = os.environ.get
    user, password = env("QAD_TEST_PG_USER", "dagster"), env("QAD_TEST_PG_PASSWORD", "dagster")
    host, port, db = (
        env("QAD_TEST_PG_HOST", "127.0.0.1"),
        env("QAD_TEST_PG_PORT", "5432"),
        env("QAD_TEST_PG_DB", "dagster_test"),
    )
    return f"postgresql://{user}:{password}@{host}:{port}/{db}"


@pytest.fixture
def postgres_stores() -> Iterator[list[LabelStore]]:
    """Two labellers on the PostgreSQL test server, in a fresh schema dropped afterwards."""
    schema = f"qad_labels_test_{uuid.uuid4().hex[:8]}"
    try:
        stores = [LabelStore(postgres_url(), schema=schema) for _ in range(2)]
    except sa.exc.OperationalError as err:
        skip_or_fail(f"no PostgreSQL test server ({str(err).splitlines()[0]}); .ci/run starts one")
    yield stores
    with sa.create_engine(stores[0].url).begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    for store in stores:
        store.close()


@pytest.mark.postgres
def test_postgres_keeps_history_and_concurrent_labels(postgres_stores: list[LabelStore]) -> None:
    saved = label_concurrently(postgres_stores, targets=25)
    assert len(saved) == 2 * 25
    assert postgres_stores[1].count_events("demo") == 50
    assert all(e.revision == 2 for e in postgres_stores[0].current("demo"))
    with pytest.raises(LabelError):
        postgres_stores[0].add("demo", 1, "not-a-label", author="ann")
    assert postgres_stores[0].count_events() == 50
