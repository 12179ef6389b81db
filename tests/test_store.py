"""The store: WAL, durable commits, one writer under trio, owned migrations."""

from __future__ import annotations

import pytest
import trio

from hyperhive_core import hookimpl
from hyperhive_core.daemon import collect_migrations
from hyperhive_core.errors import PluginError, StoreError
from hyperhive_core.store import Store


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "hive.db")
    yield store
    store.close()


def test_wal_and_full_sync(store):
    conn = store._writer.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def m001_notes(db):
    db["notes_items"].create({"id": int, "text": str}, pk="id")


def m002_index(db):
    db["notes_items"].create_index(["text"])


class NotesPlugin:
    @hookimpl
    def register_migrations(self, register):
        register("notes", [m001_notes, m002_index])


def test_hook_register_migrations(make_pm, store):
    migrations = collect_migrations(make_pm(notes=NotesPlugin()))
    assert store.migrate(migrations)[-2:] == ["notes:m001_notes", "notes:m002_index"]
    assert store.migrate(migrations) == []  # recorded, so never run twice
    recorded = [(row["owner"], row["name"]) for row in store._writer["_migrations"].rows]
    assert ("notes", "m001_notes") in recorded
    assert store._writer["notes_items"].indexes[0].columns == ["text"]


def test_two_plugins_cannot_share_an_owner(make_pm):
    class Again(NotesPlugin):
        pass

    with pytest.raises(PluginError, match="migration owner 'notes' is registered by both"):
        collect_migrations(make_pm(notes=NotesPlugin(), again=Again()))


def test_plugin_tables_must_carry_the_owner_prefix(store):
    def m001_bad(db):
        db["items"].create({"id": int}, pk="id")

    with pytest.raises(StoreError, match="tables owned by 'notes' must be named notes_"):
        store.migrate({"notes": [m001_bad]})
    assert "items" not in store._writer.table_names()  # rolled back with its record


def test_failed_migration_stops_at_last_good_step(store):
    def m002_broken(db):
        db["notes_items"].insert({"id": 1, "text": "half"})
        raise RuntimeError("disk on fire")

    with pytest.raises(StoreError, match="notes:m002_broken failed: disk on fire"):
        store.migrate({"notes": [m001_notes, m002_broken]})
    assert store._writer["notes_items"].count == 0
    assert store.migrate({"notes": [m001_notes]}) == []


async def test_concurrent_writes_serialize_and_reads_see_commits(store):
    store.migrate({"notes": [m001_notes]})

    async def add(n):
        await store.write(lambda db: db["notes_items"].insert({"id": n, "text": str(n)}))

    async with trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(add, n)
    assert await store.read(lambda db: db["notes_items"].count) == 50


async def test_failed_write_rolls_back(store):
    store.migrate({"notes": [m001_notes]})

    def half(db):
        db["notes_items"].insert({"id": 1, "text": "a"})
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        await store.write(half)
    assert await store.read(lambda db: db["notes_items"].count) == 0
