"""The background WAL checkpoint, on a real SQLite file: commits leave copying the WAL back into the
database file to a thread of the store's own, which does it soon after; the committing connection
itself no longer does at SQLite's usual threshold; closing the store stops the thread."""

from __future__ import annotations

import hashlib
import os
import threading
import time

from log_server.storage import sqlite as storage
from log_server.storage import SqliteStore


def _checkpoint_threads(db) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"emshield-checkpoint-{db}" and t.is_alive()]


def _leaves(start: int, count: int) -> list[tuple]:
    return [(i, hashlib.sha256(b"leaf %d" % i).digest(), os.urandom(1000), "issuance") for i in range(start, start + count)]


def test_commits_are_checkpointed_in_the_background(tmp_path) -> None:
    db = tmp_path / "log.db"
    store = SqliteStore.create(db, {"origin": b"checkpoint test"})
    conn = store._conn()
    with store.write() as tx:
        tx.add_leaves(_leaves(0, 10))
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == storage.WRITER_WAL_CHECKPOINT_BYTES // storage.PAGE_SIZE
    assert len(_checkpoint_threads(db)) == 1
    # ~24 MB of leaves: past SQLite's and the readers' threshold (16 MiB), below the writer's
    # backstop (160 MiB), so only the background thread copies them into the database file.
    for n in range(12):
        with store.write() as tx:
            tx.add_leaves(_leaves(10 + 2000 * n, 2000))
    deadline = time.monotonic() + 10 * storage.CHECKPOINT_INTERVAL_S
    while db.stat().st_size < 24_000 * 1000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.stat().st_size >= 24_000 * 1000
    store.close()
    assert not _checkpoint_threads(db)
    reopened = SqliteStore(db)
    assert reopened.tree_size() == 10 + 2000 * 12
    reopened.close()


def test_a_store_that_only_reads_starts_no_thread(tmp_path) -> None:
    db = tmp_path / "log.db"
    SqliteStore.create(db, {"origin": b"checkpoint test"}).close()
    store = SqliteStore(db)
    assert store.tree_size() == 0 and store.meta("origin") == b"checkpoint test"
    assert not _checkpoint_threads(db)
    store.close()
