"""The sequencer's commit path on real stores: inserts of any size, the idempotency look-up and
all-or-nothing leaf inserts on both stores; SQLite's connection settings and page sizes."""

from __future__ import annotations

import hashlib
import random
import sqlite3

import psycopg
import pytest

from emshield.tlog import merkle
from log_server.storage import DuplicateLeaf, LeafRecord, SqliteStore, create_store
from log_server.storage import sqlite as storage

# What the store raises for a constraint failure that is not a repeated leaf hash (it propagates as is).
OTHER_CONSTRAINT = {"sqlite": (sqlite3.IntegrityError, "leaves.idx"), "postgresql": (psycopg.errors.UniqueViolation,
                                                                                      "leaves_pkey")}


def _leaf_rows(start: int, count: int) -> list[tuple[int, bytes, bytes, str]]:
    rows = []
    for i in range(start, start + count):
        data = b"emshield multi-row test leaf %d" % i
        rows.append((i, merkle.leaf_hash(data), data, "test"))
    return rows


def test_inserts_of_any_size_store_every_row_in_order(store_location) -> None:
    """Row counts that need one statement, several power-of-two statements, and more than the
    per-statement maximum (SQLite's multi-row inserts); plain tuples and LeafRecords alike."""
    store = create_store(store_location, {"origin": b"rows"})
    start = 0
    for count in (1, 3, 2048, 5000, 37):
        rows = _leaf_rows(start, count)
        with store.write() as tx:
            tx.add_leaves(rows if count != 37 else [LeafRecord(*r) for r in rows])
        start += count
    stored = store.leaves(0, start + 10)
    assert [(lf.index, lf.leaf_hash, lf.data, lf.kind) for lf in stored] == _leaf_rows(0, start)
    with pytest.raises(ValueError, match="4 values"), store.write() as tx:
        tx.add_leaves([(start, bytes(32), b"x")])
    assert store.tree_size() == start  # the failed transaction was rolled back
    store.close()


@pytest.mark.parametrize("count", [5, 70])  # one statement; several under a savepoint
def test_a_stored_leaf_hash_makes_add_leaves_add_nothing(store_location, store_kind, count: int) -> None:
    store = create_store(store_location, {"origin": b"dup"})
    with store.write() as tx:
        tx.add_leaves(_leaf_rows(0, 100))
    stored = _leaf_rows(0, 100)[40]
    with store.write() as tx:
        rows = _leaf_rows(100, count)
        rows[-2] = (rows[-2][0], stored[1], stored[2], "again")
        with pytest.raises(DuplicateLeaf):
            tx.add_leaves(rows)
        assert tx.tree_size() == 100  # none of the rows before the repeat stayed
        tx.add_leaves(_leaf_rows(100, count))  # the transaction goes on
    assert store.tree_size() == 100 + count
    # any other constraint failure is not a repeat: it propagates as it is
    error, match = OTHER_CONSTRAINT[store_kind]
    with pytest.raises(error, match=match) as caught, store.write() as tx:
        tx.add_leaves([(99, hashlib.sha256(b"fresh").digest(), b"fresh", "x")] * (count // 5))
    assert not isinstance(caught.value, DuplicateLeaf)
    store.close()


def test_indices_of_finds_stored_hashes_among_absent_ones(store_location) -> None:
    store = create_store(store_location, {"origin": b"idx"})
    rows = _leaf_rows(0, 3000)
    with store.write() as tx:
        tx.add_leaves(rows)
    rng = random.Random(7)
    absent = [hashlib.sha256(b"absent %d" % i).digest() for i in range(2500)]
    for wanted in (1, 5, 2049, 5000):  # below, at and above one statement's worth, odd sizes
        present = rng.sample(rows, min(wanted, len(rows)) // 2 or 1)
        query = [r[1] for r in present] + absent[:wanted - len(present)]
        rng.shuffle(query)
        with store.write() as tx:
            found = tx.indices_of(query + query[:3])  # repeats are answered once
        assert found == {r[1]: r[0] for r in present}
    store.close()


def test_store_connections_keep_durable_settings(tmp_path) -> None:
    store = SqliteStore.create(tmp_path / "p.db", {"origin": b"p"})
    conn = store._conn()
    pragma = {name: conn.execute(f"PRAGMA {name}").fetchone()[0]
              for name in ("journal_mode", "synchronous", "foreign_keys", "temp_store", "wal_autocheckpoint")}
    # synchronous=2 is FULL: the WAL is fsync'ed at every COMMIT; temp_store=2 keeps statement journals in memory
    assert pragma == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "temp_store": 2,
                      "wal_autocheckpoint": storage.WAL_CHECKPOINT_BYTES // storage.PAGE_SIZE}
    default = sqlite3.connect(":memory:").execute("PRAGMA cache_size").fetchone()[0]
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == default != -storage.WRITER_CACHE_KIB  # readers
    with store.write():
        pass
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == -storage.WRITER_CACHE_KIB
    store.close()


def test_new_stores_have_large_pages_and_old_ones_keep_theirs(tmp_path, monkeypatch) -> None:
    """A store is created with PAGE_SIZE pages; one made with SQLite's default 4 KiB pages (every
    store before PAGE_SIZE) opens and takes appends, its WAL thresholds counted in its own pages."""
    new = SqliteStore.create(tmp_path / "new.db", {"origin": b"p"})
    assert new._conn().execute("PRAGMA page_size").fetchone()[0] == storage.PAGE_SIZE != 4096
    new.close()
    with monkeypatch.context() as m:
        m.setattr(storage, "PAGE_SIZE", 4096)
        SqliteStore.create(tmp_path / "old.db", {"origin": b"p"}).close()
    old = SqliteStore(tmp_path / "old.db")
    conn = old._conn()
    with old.write() as tx:
        tx.add_leaves([(0, bytes(32), b"leaf", "issuance")])
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == storage.WRITER_WAL_CHECKPOINT_BYTES // 4096
    assert old.tree_size() == 1
    old.close()
