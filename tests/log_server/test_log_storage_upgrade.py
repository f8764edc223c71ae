"""Schema version 2 (issuance look-ups indexed by 64-bit integer prefixes of the values), on real
SQLite files: a store made with the exact version-1 DDL is upgraded in place in one transaction
and answers every look-up as before; values sharing their first 8 bytes are told apart; look-ups
are index searches, never scans."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import sqlite3
import uuid
from pathlib import Path

import pytest

from _kit.logs import ORIGIN, ed25519_key, issuance, public_bytes, registration
from emshield.tlog import entry as E
from emshield.tlog import merkle
from emshield.tlog.checkpoint import verify_checkpoint
from log_server.admission import RegisteredIssuers, prepare_issuance, prepare_registration
from log_server.keys import read_signer_key
from log_server.sequencer import IssuanceFields, Sequencer
from log_server.storage import (
    LOOKUP_FIELDS,
    SCHEMA_VERSION,
    IssuerRecord,
    SqliteStore,
    StoreError,
    blob_key,
    device_key,
)

@pytest.fixture
def log_files(sqlite_log_files):
    """SQLite only: these are upgrades of SQLite files that older servers wrote (a PostgreSQL store
    was born at version 2)."""
    return sqlite_log_files


# The schema as version 1 first shipped (git show 769a86f:log_server/storage.py): no border column
# in checkpoints, no cosignatures table, the look-up indexes on the full values.
V1_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE leaves(
    idx INTEGER PRIMARY KEY,
    leaf_hash BLOB NOT NULL UNIQUE,
    data BLOB NOT NULL,
    kind TEXT NOT NULL
);
CREATE TABLE nodes(
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY(level, idx)
) WITHOUT ROWID;
CREATE TABLE checkpoints(
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    note BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE issuers(
    key_id BLOB PRIMARY KEY,
    public_key BLOB NOT NULL,
    name TEXT NOT NULL,
    leaf_idx INTEGER NOT NULL UNIQUE REFERENCES leaves(idx),
    registered_at INTEGER NOT NULL,
    revoked_at REAL,
    revocation_reason TEXT
) WITHOUT ROWID;
CREATE TABLE issuances(
    leaf_idx INTEGER PRIMARY KEY REFERENCES leaves(idx),
    issuer_key_id BLOB NOT NULL REFERENCES issuers(key_id),
    device_uuid TEXT NOT NULL,
    watermark_commitment BLOB,
    fingerprint_hash BLOB
);
CREATE INDEX issuances_by_watermark ON issuances(watermark_commitment);
CREATE INDEX issuances_by_fingerprint ON issuances(fingerprint_hash);
CREATE INDEX issuances_by_device ON issuances(device_uuid);
CREATE TABLE side_records(
    leaf_idx INTEGER PRIMARY KEY REFERENCES leaves(idx),
    data BLOB NOT NULL,
    stored_at REAL NOT NULL
);
"""
V1_COPY = {  # table -> its version-1 columns
    "meta": "key, value", "leaves": "idx, leaf_hash, data, kind", "nodes": "level, idx, hash",
    "checkpoints": "size, root, note, created_at",
    "issuers": "key_id, public_key, name, leaf_idx, registered_at, revoked_at, revocation_reason",
    "issuances": "leaf_idx, issuer_key_id, device_uuid, watermark_commitment, fingerprint_hash",
    "side_records": "leaf_idx, data, stored_at",
}
PREFIX = bytes.fromhex("00ff10203040506f")  # shared by the colliding values below


def _fp(n: int) -> bytes:
    return hashlib.sha256(b"fp" + n.to_bytes(8, "big")).digest()


def _fill(log_files, issuer_key) -> list[bytes]:
    """A log with issuances of all three policies (repeated devices and fingerprints), two
    issuers (one revoked) and side records; returns the leaves."""
    seq = Sequencer(SqliteStore(log_files.db), read_signer_key(log_files.key_file), ORIGIN)
    other = ed25519_key("issuer-2")
    leaves = [registration(issuer_key), registration(other, "Other Models")]
    seq.integrate([[prepare_registration(x)] for x in leaves])
    keys = RegisteredIssuers(seq.store)
    for batch in range(3):
        raw = [issuance(issuer_key if n % 2 else other, 10 * batch + n,
                            policy=("watermark", "fingerprint", "both")[n % 3],
                            fingerprint_hash=_fp(n % 4), device=n % 5) for n in range(10)]
        seq.integrate([[prepare_issuance(x, keys) for x in raw]])
        leaves += raw
    raw = [_colliding(issuer_key, public_bytes(issuer_key), i) for i in range(3)]
    seq.integrate([[prepare_issuance(x, keys)] for x in raw])
    leaves += raw
    with seq.store.write() as tx:
        tx.put_side_record(3, b"side record of leaf 3")
        tx.put_side_record(7, b"side record of leaf 7")
        tx.revoke_issuer(E.issuer_key_id(public_bytes(other)), 1_700_000_500.0, "test revocation")
    seq.store.close()
    return leaves


def _colliding(key, public_key: bytes, i: int) -> bytes:
    """A signed issuance whose watermark commitment, fingerprint hash and device UUID begin with
    PREFIX: those of ``i`` = 0, 1, 2 share their first 8 bytes pairwise and differ after."""
    entry = E.Issuance(PREFIX + bytes([i]) * 8, hashlib.sha256(b"backbone").digest(), PREFIX + bytes([i]) * 24,
                       PREFIX + bytes([i + 1]) * 24, "both", 1_700_001_000 + i, E.issuer_key_id(public_key))
    return E.sign_entry(entry, key).encode()


def _probes(conn: sqlite3.Connection) -> list[tuple[str, bytes | str]]:
    """Every stored look-up value, plus absent ones (one sharing a stored prefix)."""
    out: list[tuple[str, bytes | str]] = []
    for field in LOOKUP_FIELDS:
        out += [(field, v if isinstance(v, str) else bytes(v))
                for (v,) in conn.execute(f"SELECT DISTINCT {field} FROM issuances WHERE {field} IS NOT NULL")]
    out += [("watermark_commitment", PREFIX + bytes(24)), ("fingerprint_hash", bytes(32)),
            ("device_uuid", str(uuid.UUID(bytes=PREFIX + bytes(8)))), ("device_uuid", "not-a-uuid")]
    return out


def _v1_answer(conn: sqlite3.Connection, field: str, value, limit: int) -> list[tuple]:
    """What version 1's `SqliteStore.issuances` ran."""
    return [(i, bytes(k), d, None if w is None else bytes(w), None if f is None else bytes(f)) for i, k, d, w, f in
            conn.execute("SELECT leaf_idx, issuer_key_id, device_uuid, watermark_commitment, fingerprint_hash"
                         f" FROM issuances WHERE {field}=? ORDER BY leaf_idx LIMIT ?", (value, limit))]


def _make_v1(log_files, issuer_key) -> list[bytes]:
    """Replace the store at log_files.db by a version-1 store with the same rows, built with the
    version-1 DDL."""
    leaves = _fill(log_files, issuer_key)
    v1 = log_files.db.with_name("v1.db")
    conn = sqlite3.connect(v1, isolation_level=None)
    # In WAL mode, as every store `emshield-log init` made: switching a rollback-journal file to WAL
    # takes an exclusive lock that SQLite may refuse at once (no busy wait) to concurrent openers.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(V1_SCHEMA)
    conn.execute("ATTACH ? AS src", (str(log_files.db),))
    conn.execute("BEGIN")
    for table, cols in V1_COPY.items():
        conn.execute(f"INSERT INTO main.{table}({cols}) SELECT {cols} FROM src.{table}")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (b"1",))
    conn.execute("COMMIT")
    conn.execute("DETACH src")
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(log_files.db) + suffix).unlink(missing_ok=True)
    v1.rename(log_files.db)  # closed cleanly: its WAL was checkpointed and removed
    return leaves


def _table(conn: sqlite3.Connection, table: str, cols: str) -> list[tuple]:
    return conn.execute(f"SELECT {cols} FROM {table} ORDER BY 1, 2").fetchall()


def test_a_version_1_store_is_upgraded_in_place_and_answers_as_before(log_files, issuer_key) -> None:
    leaves = _make_v1(log_files, issuer_key)
    raw = sqlite3.connect(log_files.db)
    probes = _probes(raw)
    before = {(f, v): _v1_answer(raw, f, v, 100) for f, v in probes}
    limited = {(f, v): _v1_answer(raw, f, v, 2) for f, v in probes}
    tables = {t: _table(raw, t, c) for t, c in V1_COPY.items() if t not in ("meta", "issuances")}
    raw.close()
    assert sum(len(a) > 1 for a in before.values()) >= 3 and any(not a for a in before.values())

    store = SqliteStore(log_files.db)
    assert store.meta("schema_version") == str(SCHEMA_VERSION).encode() == b"2"
    for (field, value), answer in before.items():
        assert [tuple(r) for r in store.issuances(field, value, 100)] == answer, (field, value)
        assert [tuple(r) for r in store.issuances(field, value, 2)] == limited[(field, value)]
    conn = store._conn()
    assert {t: _table(conn, t, V1_COPY[t]) for t in tables} == tables  # tree, checkpoints, issuers untouched
    indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'issuances'"
                                          " AND sql IS NOT NULL")}
    assert indexes == {"issuances_by_watermark_key", "issuances_by_fingerprint_key", "issuances_by_device_key"}
    assert [r[1] for r in conn.execute("PRAGMA table_info(checkpoints)")][-1] == "border"
    assert conn.execute("SELECT count(*) FROM cosignatures").fetchone()[0] == 0
    for leaf_idx, dev, wm, fp, dk, wk, fk in conn.execute(
            "SELECT leaf_idx, device_uuid, watermark_commitment, fingerprint_hash, device_key, watermark_key,"
            " fingerprint_key FROM issuances"):
        assert (dk, wk, fk) == (device_key(dev), blob_key(None if wm is None else bytes(wm)),
                                blob_key(None if fp is None else bytes(fp))), leaf_idx
    assert [i.name for i in store.issuers()] == ["Acme Models", "Other Models"]
    assert store.issuers()[1].revoked_at == 1_700_000_500.0 and store.side_record(7) == b"side record of leaf 7"

    # Appending works: the sequencer rebuilds its range from the nodes (the old checkpoint has no
    # border), the new checkpoint covers every leaf, and the new issuance is found by its keys.
    seq = Sequencer(store, read_signer_key(log_files.key_file), ORIGIN)
    entry = issuance(issuer_key, 999, policy="both", fingerprint_hash=PREFIX + bytes(24), device=2)
    (done,) = seq.integrate([[prepare_issuance(entry, RegisteredIssuers(store))]])
    size = len(leaves)
    assert done[0].index == size
    stored = store.leaves(0, size + 1)
    assert [lf.data for lf in stored[:len(leaves)]] == leaves and stored[-1].data == entry
    cp = verify_checkpoint(store.latest_checkpoint().note, log_files.verifier)
    assert (cp.size, cp.root_hash) == (size + 1, merkle.root_from_leaf_hashes([lf.leaf_hash for lf in stored]))
    assert [r.leaf_index for r in store.issuances("fingerprint_hash", PREFIX + bytes(24), 100)] == [size]
    dev2 = str(uuid.UUID(int=2))
    assert [r.leaf_index for r in store.issuances("device_uuid", dev2, 100)] == \
        [i for i, *_ in before[("device_uuid", dev2)]] + [size]
    store.close()
    reopened = SqliteStore(log_files.db)  # version 2 now: opened as is
    assert reopened.tree_size() == size + 1
    reopened.close()


def test_values_sharing_their_first_8_bytes_are_told_apart(log_files) -> None:
    store = SqliteStore(log_files.db)
    kid = bytes(range(32))
    with store.write() as tx:
        tx.add_leaves([(i, hashlib.sha256(b"leaf" + bytes([i])).digest(), b"leaf %d" % i, "issuance") for i in range(7)])
        tx.add_issuer(IssuerRecord(kid, bytes(32), "collider", 0, 1_700_000_000))
        rows = []
        for i in range(1, 7):
            dev = str(uuid.UUID(bytes=PREFIX + bytes([i % 3]) * 8))
            wm = PREFIX + bytes([i % 2]) * 24 if i % 3 else None
            fp = PREFIX + bytes([i % 4]) * 24 if i != 3 else None
            rows.append((i, *IssuanceFields.of(kid, dev, wm, fp)))
        tx.add_issuances(rows)
    assert len({blob_key(r[3]) for r in rows if r[3]} | {blob_key(r[4]) for r in rows if r[4]}) == 1
    assert len({device_key(r[2]) for r in rows}) == 1
    for field, col in (("device_uuid", 2), ("watermark_commitment", 3), ("fingerprint_hash", 4)):
        for value in {r[col] for r in rows if r[col] is not None}:
            want = [r[:5] for r in rows if r[col] == value]
            assert 0 < len(want) < len(rows)
            assert [tuple(r) for r in store.issuances(field, value, 100)] == want
            assert [tuple(r) for r in store.issuances(field, value, 1)] == want[:1]
        other = PREFIX + b"\x09" * 24
        assert store.issuances(field, other if col else str(uuid.UUID(bytes=other[:16])), 100) == []
    # a value of the wrong type matches nothing (as a text never equals a blob in version 1)
    assert store.issuances("watermark_commitment", rows[0][3].hex(), 100) == []
    assert store.issuances("device_uuid", uuid.UUID(rows[0][2]).bytes, 100) == []
    store.close()


def test_look_ups_search_the_key_indexes(log_files, issuer_key) -> None:
    _fill(log_files, issuer_key)
    store = SqliteStore(log_files.db)
    conn = store._conn()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    for field, value, index in (("watermark_commitment", bytes(32), "issuances_by_watermark_key"),
                                ("fingerprint_hash", _fp(1), "issuances_by_fingerprint_key"),
                                ("device_uuid", str(uuid.UUID(int=3)), "issuances_by_device_key")):
        statements.clear()
        store.issuances(field, value, 100)
        (sql,) = statements
        plan = [str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
        assert plan[0].startswith(f"SEARCH issuances USING INDEX {index} ("), plan
        assert not any("SCAN" in step or "TEMP B-TREE" in step for step in plan), plan  # no scan, no sort
    conn.set_trace_callback(None)
    store.close()


def test_the_keys_are_the_first_8_bytes_as_signed_integers() -> None:
    dev = uuid.UUID("f0e1d2c3-b4a5-9687-7869-5a4b3c2d1e0f")
    assert device_key(str(dev)) == int.from_bytes(dev.bytes[:8], "big", signed=True) == -0x0F1E2D3C4B5A6979
    assert device_key("01234567-89ab-cdef-0000-000000000000") == 0x0123456789ABCDEF
    assert device_key("F0E1D2C3-B4A5-9687-7869-5A4B3C2D1E0F") == 0  # not canonical
    assert device_key("not a uuid") == device_key(b"\x01" * 16) == 0
    assert blob_key(bytes.fromhex("8000000000000001ff")) == -(1 << 63) + 1
    assert blob_key(bytes.fromhex("7fffffffffffffff")) == (1 << 63) - 1
    assert blob_key(b"\x01\x02") == 0x0102 and blob_key(b"") == 0
    assert blob_key(None) is None and blob_key("00" * 32) is None


def test_an_upgrade_that_fails_leaves_version_1_as_it_was(log_files, issuer_key) -> None:
    _make_v1(log_files, issuer_key)
    raw = sqlite3.connect(log_files.db, isolation_level=None)
    raw.execute("CREATE TABLE in_the_way(x)")
    raw.execute("CREATE INDEX issuances_by_device_key ON in_the_way(x)")  # the upgrade's last index name
    schema = raw.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    raw.close()
    with pytest.raises(sqlite3.OperationalError, match="issuances_by_device_key"):
        SqliteStore(log_files.db)
    raw = sqlite3.connect(log_files.db)
    assert raw.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall() == schema
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == b"1"
    raw.close()


def test_a_store_of_a_later_version_is_refused(log_files) -> None:
    raw = sqlite3.connect(log_files.db, isolation_level=None)
    raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (b"3",))
    raw.close()
    with pytest.raises(StoreError, match="schema version 3, this server knows 2"):
        SqliteStore(log_files.db)


def _open(db: Path, start, answers) -> None:
    start.wait()
    store = SqliteStore(db)
    answers.put((store.meta("schema_version"), store.tree_size()))
    store.close()


def test_processes_opening_a_version_1_store_at_once_upgrade_it_once(log_files, issuer_key) -> None:
    leaves = _make_v1(log_files, issuer_key)
    ctx = mp.get_context("fork")
    start, answers = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(log_files.db, start, answers)) for _ in range(3)]
    for proc in procs:
        proc.start()
    got = [answers.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert got == [(b"2", len(leaves))] * 3
    store = SqliteStore(log_files.db)
    conn = store._conn()
    assert [r[1] for r in conn.execute("PRAGMA table_info(issuances)")][-3:] == \
        ["watermark_key", "fingerprint_key", "device_key"]
    assert conn.execute("SELECT count(*) FROM issuances WHERE device_key IS NULL").fetchone()[0] == 0
    store.close()
