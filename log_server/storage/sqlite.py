"""The log store on one SQLite file: the embedded default (`emshield-log init --store FILE`).

One writer at a time across the processes of one machine: BEGIN IMMEDIATE takes SQLite's write
lock, and a flock beside the file (`_WriterLock`) queues the waiting writers without SQLite's
polling sleeps.

Durability: WAL with synchronous=FULL, so every COMMIT is fsync'ed before it returns; the server
acknowledges an append only after its COMMIT returned. The WAL is copied back into the database
file by a background thread of the writing process (`_Checkpointer`), not inside the commits.

Opening never changes a file that is not a log store: it is first read through a read-only
connection, and only a file whose `meta` table names a known schema version is opened for
writing (which switches it to WAL mode).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..process_thread import ProcessThread
from .interface import (
    ISSUANCE_KEYS,
    ISSUER_COLS,
    ISSUER_EPOCH_META_KEY,
    LOOKUP_FIELDS,
    SCHEMA_VERSION,
    AttributionIndex,
    AttributionRow,
    DuplicateLeaf,
    IssuanceIndex,
    IssuanceRow,
    IssuerRecord,
    LeafRecord,
    LeafRow,
    NodeID,
    StoredCheckpoint,
    StoreError,
    TreeHead,
    WriteTxn,
    attribution_query,
    attribution_rows,
    blob_key,
    device_key,
    checkpoint_row,
    cosignature_rows,
    issuance_rows,
    issuer_row,
    leaf_rows,
)

BUSY_TIMEOUT_MS = 30_000
WRITER_CACHE_KIB = 32 * 1024  # page cache of a connection that writes
# Page size of a new store (a file keeps the page size it was created with). Why not SQLite's 4 KiB:
# a batch commit inserts a few thousand random keys into each hash-keyed index and dirties most of
# its pages, and SQLite's work per commit goes with the number of pages it changes, logs and writes
# back (B-tree balancing, WAL frame headers and checksums, one write per frame). Why not larger:
# a small group commit (single appends) changes about ten pages whatever their size, and writing
# and fsyncing them takes longer the larger they are. 8 KiB serves both (measurements:
# spec/notes/log-storage.md, "Page size").
PAGE_SIZE = 8 * 1024
WAL_CHECKPOINT_BYTES = 16 * 1024 * 1024
CHECKPOINT_INTERVAL_S = 1.0  # the background checkpointer copies the WAL back at most this often
WRITER_WAL_CHECKPOINT_BYTES = 10 * WAL_CHECKPOINT_BYTES  # a writer checkpoints itself past this (backstop)

log = logging.getLogger(__name__)


# Witness cosignatures (spec/witness.md) of stored checkpoints, kept outside the signed note so a
# checkpoint can gather them after it was committed. Added after schema version 1 shipped: a
# version-1 store without it gets it in the upgrade to version 2.
_COSIGNATURES = """
CREATE TABLE IF NOT EXISTS cosignatures(
    size INTEGER NOT NULL REFERENCES checkpoints(size),
    name TEXT NOT NULL,
    key_id BLOB NOT NULL,
    signature BLOB NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY(size, name, key_id)
) WITHOUT ROWID"""

# Attribution entries by suspect SHA-256 and by attributed issuance (interface.py). Added to schema
# version 2 in place: a store without them gets them, empty, when it is opened (`_upgrade`).
_ATTRIBUTIONS = """
CREATE TABLE IF NOT EXISTS attributions(
    leaf_idx INTEGER PRIMARY KEY REFERENCES leaves(idx),
    issuer_key_id BLOB NOT NULL REFERENCES issuers(key_id),
    issuance_idx INTEGER NOT NULL REFERENCES leaves(idx),
    suspect_sha256 BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS attributions_by_suspect ON attributions(suspect_sha256);
CREATE INDEX IF NOT EXISTS attributions_by_issuance ON attributions(issuance_idx)
"""

# The border column came after schema version 1 shipped: a version-1 store without it gets it in
# the upgrade to version 2.
_CHECKPOINT_BORDER = "ALTER TABLE checkpoints ADD COLUMN border BLOB"

# The issuance look-up indexes of schema version 2 (new stores, and the upgrade from version 1).
_KEY_INDEXES = """
CREATE INDEX issuances_by_watermark_key ON issuances(watermark_key) WHERE watermark_key IS NOT NULL;
CREATE INDEX issuances_by_fingerprint_key ON issuances(fingerprint_key) WHERE fingerprint_key IS NOT NULL;
CREATE INDEX issuances_by_device_key ON issuances(device_key);
"""

_SCHEMA = f"""
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
    created_at REAL NOT NULL,
    border BLOB
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
    fingerprint_hash BLOB,
    watermark_key INTEGER,
    fingerprint_key INTEGER,
    device_key INTEGER
);
{_KEY_INDEXES}
CREATE TABLE side_records(
    leaf_idx INTEGER PRIMARY KEY REFERENCES leaves(idx),
    data BLOB NOT NULL,
    stored_at REAL NOT NULL
);
"""

# Version 1 -> 2, in the one write transaction that also sets the version (see `_upgrade`). The
# keys are filled by SQL functions bound to `blob_key` / `device_key` for the statement's duration,
# then the new indexes are built from the filled column (one sorted build, not n inserts).
_UPGRADE_TO_2 = f"""
ALTER TABLE issuances ADD COLUMN watermark_key INTEGER;
ALTER TABLE issuances ADD COLUMN fingerprint_key INTEGER;
ALTER TABLE issuances ADD COLUMN device_key INTEGER;
UPDATE issuances SET watermark_key = emshield_blob_key(watermark_commitment),
    fingerprint_key = emshield_blob_key(fingerprint_hash), device_key = emshield_device_key(device_uuid);
DROP INDEX IF EXISTS issuances_by_watermark;
DROP INDEX IF EXISTS issuances_by_fingerprint;
DROP INDEX IF EXISTS issuances_by_device;
{_KEY_INDEXES}
UPDATE meta SET value = CAST('2' AS BLOB) WHERE key = 'schema_version'
"""


def _connect(path: Path) -> sqlite3.Connection:
    # cached_statements: the multi-row INSERTs (see _insert_rows) add up to ~130 statements.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000,
                           cached_statements=256)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise StoreError(f"{path}: could not switch to WAL mode (got {mode})")
    # FULL: the WAL is fsync'ed at every COMMIT, so an acknowledged append survives power loss,
    # not only a process crash (NORMAL would only sync at checkpoints of the WAL).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    # A multi-row INSERT keeps a statement journal (the pages it changed, to undo just that statement
    # if a later row breaks a constraint); in memory it costs a page copy, on disk a temporary file.
    conn.execute("PRAGMA temp_store=MEMORY")
    # Whichever connection commits past this much WAL copies it back into the database file (and
    # fsyncs it) inside its COMMIT, i.e. while holding the write lock. A batch commit rewrites most
    # index pages, so checkpointing every 16 MiB instead of SQLite's 1,000 pages copies each hot page
    # once for several commits instead of once per commit. Connections that write through
    # `SqliteStore.write` leave it to a background thread instead (`_Checkpointer`).
    _set_wal_autocheckpoint(conn, WAL_CHECKPOINT_BYTES)
    return conn


def _set_wal_autocheckpoint(conn: sqlite3.Connection, nbytes: int) -> None:
    """SQLite counts the threshold in pages, whose size each store fixed when it was created."""
    conn.execute(f"PRAGMA wal_autocheckpoint={nbytes // conn.execute('PRAGMA page_size').fetchone()[0]}")


def _nodes_query(conn: sqlite3.Connection, ids: Sequence[NodeID]) -> dict[NodeID, bytes]:
    """All requested perfect-subtree hashes in one indexed query.

    Level-0 nodes are the leaf hashes, read from `leaves` (by its integer primary key) instead of
    being stored twice; higher levels come from `nodes` (by its primary key).
    """
    wanted = list(dict.fromkeys((int(level), int(index)) for level, index in ids))
    if not wanted:
        return {}
    out: dict[NodeID, bytes] = {}
    # SQLite allows 32766 host parameters; a proof needs ~2*64 at most, a restart ~64.
    for i in range(0, len(wanted), 8000):
        chunk = wanted[i:i + 8000]
        leaves = [index for level, index in chunk if level == 0]
        inner = [x for level, index in chunk if level > 0 for x in (level, index)]
        parts, args = [], []
        if leaves:
            parts.append(f"SELECT 0, idx, leaf_hash FROM leaves WHERE idx IN ({','.join('?' * len(leaves))})")
            args.extend(leaves)
        if inner:
            # CROSS JOIN fixes the order: the constants outside, a primary-key SEARCH of nodes inside
            # (a row-value IN here would make SQLite SCAN the whole table).
            marks = ",".join("(?,?)" for _ in range(len(inner) // 2))
            parts.append(f"SELECT nodes.level, nodes.idx, nodes.hash FROM (VALUES {marks}) AS wanted"
                         " CROSS JOIN nodes ON nodes.level = wanted.column1 AND nodes.idx = wanted.column2")
            args.extend(inner)
        for level, index, h in conn.execute(" UNION ALL ".join(parts), args):
            out[(level, index)] = bytes(h)
    return out




# Rows per INSERT statement: 2,048 rows of at most 5 columns stay far below SQLite's limit of
# 32,766 host parameters per statement.
_MAX_ROWS = 2048
_EXACT_ROWS = 32
_INSERT_LEAVES = ("INSERT INTO leaves(idx, leaf_hash, data, kind)", 4)
_INSERT_ISSUANCES = ("INSERT INTO issuances(leaf_idx, issuer_key_id, device_uuid, watermark_commitment,"
                     " fingerprint_hash, watermark_key, fingerprint_key, device_key)", 8)
_INSERT_NODES = ("INSERT INTO nodes(level, idx, hash)", 3)
_INSERT_ATTRIBUTIONS = ("INSERT INTO attributions(leaf_idx, issuer_key_id, issuance_idx, suspect_sha256)", 4)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@functools.cache
def _values_sql(head: str, width: int, rows: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([row] * rows)}"


@functools.cache
def _indices_sql(marks: int) -> str:
    return f"SELECT leaf_hash, idx FROM leaves WHERE leaf_hash IN ({','.join('?' * marks)})"


def _insert_rows(conn: sqlite3.Connection, table: tuple[str, int], rows: Sequence[tuple]) -> None:
    """INSERT ``rows`` with as few multi-row VALUES statements as the statement cache allows.

    Why: `executemany` steps the statement once per row, and every step gives up and re-takes the
    GIL, which the request threads of the same process are waiting for (and a re-take may wait a
    whole switch interval while this process holds the store's write lock); one multi-row
    statement does the B-tree work of all its rows in ONE step without the GIL. Up to
    _EXACT_ROWS rows (group commits of single appends) take one statement of exactly that size;
    larger counts one per power of two in the count: at most ~45 statements per table are cached.
    """
    head, width = table
    n = len(rows)
    flat = list(itertools.chain.from_iterable(rows))
    if len(flat) != n * width:
        raise ValueError(f"{head}: every row needs {width} values")
    if n <= _EXACT_ROWS:
        if n:
            conn.execute(_values_sql(head, width, n), flat)
        return
    done = 0
    while done < n:
        k = min(_MAX_ROWS, 1 << ((n - done).bit_length() - 1))
        conn.execute(_values_sql(head, width, k), flat[done * width:(done + k) * width])
        done += k


class _SqliteTxn:
    """`WriteTxn` over one connection inside BEGIN IMMEDIATE."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    def tree_size(self) -> int:
        return _tree_size(self._c)

    def tree_head(self) -> TreeHead:
        # max(idx) is the last key of the rowid B-tree; checkpoint and epoch are primary-key look-ups
        n, root, border, epoch = self._c.execute(
            "SELECT l.n, c.root, c.border, (SELECT value FROM meta WHERE key = ?)"
            " FROM (SELECT coalesce(max(idx) + 1, 0) AS n FROM leaves) AS l"
            " LEFT JOIN checkpoints AS c ON c.size = l.n", (ISSUER_EPOCH_META_KEY,)).fetchone()
        if border is None:
            root = None
        return TreeHead(n, root, border, epoch)

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        return _latest_checkpoint(self._c)

    def get_nodes(self, ids: Sequence[NodeID]) -> Mapping[NodeID, bytes]:
        return _nodes_query(self._c, ids)

    def indices_of(self, leaf_hashes: Sequence[bytes]) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        hashes = list(leaf_hashes)
        for i in range(0, len(hashes), _MAX_ROWS):
            chunk = hashes[i:i + _MAX_ROWS]
            # The IN list is padded with NULLs (which match nothing) to a power-of-two length, so a
            # handful of statements serve every group size from the statement cache.
            marks = _pow2_at_least(len(chunk))
            out.update(self._c.execute(_indices_sql(marks), chunk + [None] * (marks - len(chunk))))
        return out

    def issuer(self, key_id: bytes) -> IssuerRecord | None:
        return issuer_row(self._c.execute(f"SELECT {ISSUER_COLS} FROM issuers WHERE key_id=?", (key_id,)).fetchone())

    def add_leaves(self, leaves: Sequence[LeafRow]) -> None:
        # One statement is all-or-nothing by itself; several need a savepoint to be.
        several = len(leaves) > _EXACT_ROWS
        if several:
            self._c.execute("SAVEPOINT add_leaves")
        try:
            _insert_rows(self._c, _INSERT_LEAVES, leaves)
        except BaseException as exc:
            if several:
                self._c.execute("ROLLBACK TO add_leaves")
                self._c.execute("RELEASE add_leaves")
            if isinstance(exc, sqlite3.IntegrityError) and "leaves.leaf_hash" in str(exc):
                raise DuplicateLeaf("a leaf hash is already stored") from exc
            raise
        if several:
            self._c.execute("RELEASE add_leaves")

    def add_issuances(self, rows: Sequence[IssuanceRow]) -> None:
        _insert_rows(self._c, _INSERT_ISSUANCES, rows)

    def add_attributions(self, rows: Sequence[AttributionRow]) -> None:
        _insert_rows(self._c, _INSERT_ATTRIBUTIONS, rows)

    def add_issuer(self, issuer: IssuerRecord) -> None:
        self._c.execute(
            f"INSERT INTO issuers({ISSUER_COLS}) VALUES (?,?,?,?,?,?,?)",
            (issuer.key_id, issuer.public_key, issuer.name, issuer.leaf_index, issuer.registered_at,
             issuer.revoked_at, issuer.revocation_reason),
        )

    def add_nodes(self, nodes: Sequence[tuple[NodeID, bytes]]) -> None:
        # Level 0 is the leaf hash, already in `leaves` (added first, in the same transaction).
        _insert_rows(self._c, _INSERT_NODES, [(lv, ix, h) for (lv, ix), h in nodes if lv > 0])

    def add_checkpoint(self, cp: StoredCheckpoint, border: bytes | None = None) -> None:
        self._c.execute("INSERT INTO checkpoints(size, root, note, created_at, border) VALUES (?,?,?,?,?)",
                        (cp.size, cp.root_hash, cp.note, cp.created_at, border))

    def revoke_issuer(self, key_id: bytes, at: float, reason: str) -> None:
        changed = self._c.execute("UPDATE issuers SET revoked_at=?, revocation_reason=? WHERE key_id=?"
                                  " AND revoked_at IS NULL", (at, reason, key_id)).rowcount
        if changed:  # issuer records cached by sequencers are stale now
            self.set_meta(ISSUER_EPOCH_META_KEY, os.urandom(16))

    def add_cosignatures(self, size: int, sigs: Sequence[tuple[str, bytes, bytes]]) -> None:
        self._c.executemany("INSERT OR REPLACE INTO cosignatures(size, name, key_id, signature, received_at)"
                            " VALUES (?,?,?,?,?)", [(size, n, k, sig, time.time()) for n, k, sig in sigs])

    def put_side_record(self, leaf_index: int, data: bytes) -> None:
        self._c.execute("INSERT INTO side_records(leaf_idx, data, stored_at) VALUES (?,?,?)",
                        (leaf_index, data, time.time()))

    def set_meta(self, key: str, value: bytes) -> None:
        self._c.execute("INSERT INTO meta(key, value) VALUES (?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (key, value))


def _tree_size(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT max(idx) FROM leaves").fetchone()  # O(1): last key of the rowid B-tree
    return 0 if row[0] is None else row[0] + 1


def _latest_checkpoint(conn: sqlite3.Connection) -> StoredCheckpoint | None:
    row = conn.execute("SELECT size, root, note, created_at FROM checkpoints"
                       " WHERE size = (SELECT max(size) FROM checkpoints)").fetchone()
    return checkpoint_row(row)


class _WriterLock:
    """Exclusive across threads (a mutex) and processes (flock on `<db>.write-lock`).

    SQLite's own lock would also serialise writers, but a writer that finds it taken polls with
    sleeps of up to 100 ms; a blocked flock wakes the moment the holder releases it. With several
    gunicorn workers the sequencers therefore take turns without idle gaps, and each one's queue
    fills while it waits, which makes its next group commit larger.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> None:
        self._mutex.acquire()
        try:
            if self._fd is None or self._pid != os.getpid():  # a forked child needs its own open file
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._mutex.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def close(self) -> None:
        with self._mutex:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None


class _Checkpointer:
    """Copies the WAL back into the database file on a thread and connection of its own.

    Why: with SQLite's automatic checkpoint, the connection whose COMMIT takes the WAL past
    WAL_CHECKPOINT_BYTES copies it back (writes and fsyncs the database file) inside that COMMIT,
    i.e. on the sequencer's serial path while it holds the write lock. A PASSIVE checkpoint needs no
    lock against the writer, so here it runs beside the commits (on the other core; the thread gives
    the GIL up while SQLite works), at most every CHECKPOINT_INTERVAL_S once a commit woke it. A
    writer's own automatic checkpoint stays as a backstop at WRITER_WAL_CHECKPOINT_BYTES. Durability
    is unchanged: a commit is durable once its WAL frames are fsync'ed, before any checkpoint.
    Started per process on the first commit (a thread does not survive fork). The interval bounds
    the extra work: hot index pages are copied back once per interval, not once per commit
    (measurements: spec/notes/log-storage.md).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = ProcessThread(self._run, f"emshield-checkpoint-{path}", before_start=self._fresh_events)

    def _fresh_events(self) -> None:
        self._wake, self._stop = threading.Event(), threading.Event()

    def committed(self) -> None:
        self._thread.ensure_started()
        self._wake.set()

    def _run(self) -> None:
        wake, stop = self._wake, self._stop  # this thread's: a later thread (after a fork) gets its own
        conn = _connect(self._path)
        try:
            while True:
                wake.wait()
                if stop.is_set():
                    return
                wake.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:  # e.g. the file went away; the writer's own backstop remains
                    log.exception("background WAL checkpoint of %s failed", self._path)
                if stop.wait(CHECKPOINT_INTERVAL_S):
                    return
        finally:
            conn.close()

    def close(self) -> None:
        if self._thread.running_here():
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=30)


def _known_version(raw: bytes | None, where: object) -> int:
    """The schema version a `meta` value names, if this server can open a store of it (1: after an upgrade)."""
    if raw is None:
        raise StoreError(f"{where} is not an EMShield log store (its meta table has no schema version)")
    try:
        version = int(raw)
    except ValueError:
        raise StoreError(f"{where} is not an EMShield log store (schema version {bytes(raw)[:20]!r})") from None
    if version not in (1, SCHEMA_VERSION):
        raise StoreError(f"{where}: store schema version {version}, this server knows {SCHEMA_VERSION}")
    return version


def _probe(path: Path) -> None:
    """Refuse ``path`` unless it is a SQLite file with a log store's `meta` table, reading it
    through a read-only connection: opening for writing would switch any SQLite file to WAL mode
    and turn an empty file into a database."""
    if not path.is_file():
        raise StoreError(f"no log store at {path} (run `emshield-log init` first)")
    try:
        with contextlib.closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
                raise StoreError(f"{path} is not an EMShield log store (no meta table)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not an EMShield log store ({exc})") from None
    _known_version(None if row is None else bytes(row[0]), path)


class _FileRoleLock:
    """`RoleLock` as an flock on a file beside the store (the processes of one machine)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._pid = 0

    def try_acquire(self) -> bool:
        if self._fd is not None and self._pid == os.getpid():
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd, self._pid = fd, os.getpid()
        return True

    def release(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


class _SqliteWriteCtx:
    def __init__(self, conn: sqlite3.Connection, lock: _WriterLock, checkpointer: _Checkpointer) -> None:
        self._conn = conn
        self._lock = lock
        self._checkpointer = checkpointer

    def __enter__(self) -> WriteTxn:
        self._lock.__enter__()
        try:
            # IMMEDIATE takes the database's single write lock now (also against writers that are
            # not ours): whoever holds it is the only sequencer for the duration of the transaction.
            self._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.__exit__()
            raise
        return _SqliteTxn(self._conn)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._lock.__exit__()
        if exc_type is None:
            self._checkpointer.committed()


def _create_file(p: Path, meta: Mapping[str, bytes]) -> None:
    """The new file with the schema and ``meta`` (page size and WAL mode fixed first)."""
    with contextlib.closing(sqlite3.connect(p)) as raw:
        raw.execute(f"PRAGMA page_size={PAGE_SIZE}")  # takes effect only before the first write:
        raw.execute("PRAGMA journal_mode=WAL")  # which this is (the file header)
    conn = _connect(p)
    try:
        if conn.execute("PRAGMA page_size").fetchone()[0] != PAGE_SIZE:
            raise StoreError(f"{p}: SQLite did not create the store with {PAGE_SIZE}-byte pages")
        conn.execute("BEGIN IMMEDIATE")
        # not executescript(): it would COMMIT first
        for statement in [*_SCHEMA.split(";"), _COSIGNATURES, *_ATTRIBUTIONS.split(";")]:
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION).encode(),))
        conn.executemany("INSERT INTO meta(key, value) VALUES (?,?)", list(meta.items()))
        conn.execute("COMMIT")
    finally:
        conn.close()


class SqliteStore:
    """`LogStore` on one SQLite file; one connection per thread (SQLite connections are not shared)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        _probe(self.path)  # read-only: a file that is not a log store is refused as it is
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer = _WriterLock(self.path.with_name(self.path.name + ".write-lock"))
        self._checkpointer = _Checkpointer(self.path)
        if self._schema_version() == 1 or not self._has_later_additions():
            self._upgrade()

    def describe(self) -> str:
        return str(self.path)

    def role_lock(self, role: str) -> _FileRoleLock:
        return _FileRoleLock(self.path.with_name(f"{self.path.name}.{role}-lock"))

    def _schema_version(self) -> int:
        """The store's schema version, if this server can open it (1: after an upgrade)."""
        return _known_version(self.meta("schema_version"), self.path)

    def _has_later_additions(self) -> bool:
        """Whether the cosignatures table and the checkpoints' border column (added to version 1
        after it shipped) and the attributions table (added to version 2) are there."""
        return self._conn().execute(
            "SELECT (SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('cosignatures', 'attributions'))"
            " + (SELECT count(*) FROM pragma_table_info('checkpoints') WHERE name = 'border')").fetchone()[0] == 3

    def _upgrade(self) -> None:
        """Bring an older store up to date in ONE write transaction: all of it or none.

        A version-1 store gets the later additions it lacks and the issuance keys of version 2; a
        version-2 store the attributions table if it lacks it.
        Several processes may open the store at once: the write lock lets one upgrade, and the
        others find it done once they hold the lock. Processes of a version-1 server must be
        stopped first (they would keep inserting issuances without keys, which look-ups then miss).
        """
        conn = self._conn()
        with self.write():
            version = self._schema_version()  # again under the lock: another process may have upgraded it
            conn.execute(_COSIGNATURES)
            for statement in _ATTRIBUTIONS.split(";"):
                conn.execute(statement)
            if conn.execute("SELECT 1 FROM pragma_table_info('checkpoints') WHERE name = 'border'").fetchone() is None:
                conn.execute(_CHECKPOINT_BORDER)
            if version == 1:
                conn.create_function("emshield_blob_key", 1, blob_key, deterministic=True)
                conn.create_function("emshield_device_key", 1, device_key, deterministic=True)
                try:
                    for statement in _UPGRADE_TO_2.split(";"):
                        conn.execute(statement)
                finally:
                    conn.create_function("emshield_blob_key", 1, None)
                    conn.create_function("emshield_device_key", 1, None)

    @classmethod
    def create(cls, path: str | Path, meta: Mapping[str, bytes]) -> "SqliteStore":
        """A new, empty store (fails if the file exists)."""
        p = Path(path)
        if p.exists():
            raise StoreError(f"{p} already exists; refusing to overwrite a log store")
        try:
            _create_file(p, meta)
        except sqlite3.Error as exc:
            p.unlink(missing_ok=True)
            raise StoreError(f"cannot create a log store at {p}: {exc}") from None
        return cls(p)


    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def write(self) -> _SqliteWriteCtx:
        conn = self._conn()
        if not getattr(self._local, "writes", False):
            # The sequencer's inserts touch random pages of four hash-keyed indexes; SQLite's default
            # page cache (2 MiB) is far smaller than that working set. Only connections that write
            # get the large one (pages are allocated once used); readers keep the default.
            conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
            _set_wal_autocheckpoint(conn, WRITER_WAL_CHECKPOINT_BYTES)  # see _Checkpointer
            self._local.writes = True
        return _SqliteWriteCtx(conn, self._writer, self._checkpointer)

    def meta(self, key: str) -> bytes | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def tree_size(self) -> int:
        return _tree_size(self._conn())

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        return _latest_checkpoint(self._conn())

    def get_nodes(self, ids: Sequence[NodeID]) -> Mapping[NodeID, bytes]:
        return _nodes_query(self._conn(), ids)

    def leaves(self, start: int, end: int) -> list[LeafRecord]:
        rows = self._conn().execute(
            "SELECT idx, leaf_hash, data, kind FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end))
        return leaf_rows(rows)

    def leaf(self, index: int) -> LeafRecord | None:
        got = self.leaves(index, index + 1)
        return got[0] if got else None

    def node_range(self, level: int, start: int, end: int) -> list[bytes]:
        """The stored perfect-node hashes (level, start) .. (level, end - 1) in order, one range
        scan of a primary key (level 0: the leaf hashes); a tile is one such range."""
        if level == 0:
            rows = self._conn().execute("SELECT leaf_hash FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
                                        (start, end))
        else:
            rows = self._conn().execute("SELECT hash FROM nodes WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx",
                                        (level, start, end))
        return [bytes(h) for (h,) in rows]

    def checkpoint(self, size: int) -> StoredCheckpoint | None:
        row = self._conn().execute("SELECT size, root, note, created_at FROM checkpoints WHERE size=?",
                                   (size,)).fetchone()
        return checkpoint_row(row)

    def cosignatures(self, size: int) -> list[tuple[str, bytes, bytes]]:
        """(witness name, key id, signature) of every cosignature stored for checkpoint ``size``."""
        rows = self._conn().execute("SELECT name, key_id, signature FROM cosignatures WHERE size=? ORDER BY name, key_id",
                                    (size,))
        return cosignature_rows(rows)

    def latest_cosigned(self, witnesses: Sequence[tuple[str, bytes]], quorum: int) -> StoredCheckpoint | None:
        """The largest checkpoint cosigned by at least ``quorum`` of ``witnesses`` (name, key id)."""
        if quorum <= 0:
            return self.latest_checkpoint()
        marks = ",".join("(?,?)" for _ in witnesses)
        row = self._conn().execute(
            f"SELECT size FROM cosignatures WHERE (name, key_id) IN (VALUES {marks})"
            " GROUP BY size HAVING count(*) >= ? ORDER BY size DESC LIMIT 1",
            [x for w in witnesses for x in w] + [quorum]).fetchone()
        return None if row is None else self.checkpoint(row[0])

    def index_of(self, leaf_hash: bytes) -> int | None:
        row = self._conn().execute("SELECT idx FROM leaves WHERE leaf_hash=?", (leaf_hash,)).fetchone()
        return None if row is None else row[0]

    def issuer(self, key_id: bytes) -> IssuerRecord | None:
        return issuer_row(self._conn().execute(
            f"SELECT {ISSUER_COLS} FROM issuers WHERE key_id=?", (key_id,)).fetchone())

    def issuers(self) -> list[IssuerRecord]:
        rows = self._conn().execute(f"SELECT {ISSUER_COLS} FROM issuers ORDER BY leaf_idx")
        return [r for r in map(issuer_row, rows) if r is not None]

    def issuances(self, field: str, value: bytes | str, limit: int) -> list[IssuanceIndex]:
        if field not in LOOKUP_FIELDS:
            raise ValueError(f"cannot look issuances up by {field!r}")
        column, key = ISSUANCE_KEYS[field]
        # The index on the key column holds (key, leaf_idx) in order: one range of it, filtered
        # on the full value, is already in leaf order.
        rows = self._conn().execute(
            "SELECT leaf_idx, issuer_key_id, device_uuid, watermark_commitment, fingerprint_hash FROM issuances"
            f" WHERE {column} = ? AND {field} = ? ORDER BY leaf_idx LIMIT ?", (key(value), value, limit))
        return issuance_rows(rows)

    def attributions(self, field: str, value: bytes | int, limit: int) -> list[AttributionIndex]:
        return attribution_rows(self._conn().execute(attribution_query(field).format("?", "?"), (value, limit)))

    def side_record(self, leaf_index: int) -> bytes | None:
        row = self._conn().execute("SELECT data FROM side_records WHERE leaf_idx=?", (leaf_index,)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self._checkpointer.close()
        self._writer.close()
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
