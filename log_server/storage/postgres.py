"""The log store on PostgreSQL: one database that several API hosts and their sequencers share.

Named by a `postgresql://` URL (libpq's, e.g. ``postgresql://log@db.internal/emshield`` or
``postgresql:///emshield?host=/run/postgresql``). The URL must not carry a password: libpq takes
it from ``$PGPASSWORD`` or from a password file (``$PGPASSFILE``, default ``~/.pgpass``), which it
ignores unless only its owner can read it (mode 0600). So the password never appears in argv,
where every user of the machine can read it (`ps`).

One sequencer at a time across all hosts: `write()` opens a transaction whose first statement
takes a transaction-scoped advisory lock (`pg_advisory_xact_lock`), and everything the
transaction reads (the tree head first) is read after the lock is granted (READ COMMITTED: each
statement sees every commit before it). The lock ends with the transaction, so a host that dies
or loses its connection mid-batch loses the lock and its transaction together: PostgreSQL rolls
back what it wrote, and its checkpoint was never visible to anyone. It cannot commit later
either: the transaction is gone with the session. The `leaves` and `checkpoints` primary keys
(one leaf per index, one checkpoint per size) make a conflicting tree impossible even then.

Durability: an append is acknowledged after COMMIT returned, with ``synchronous_commit = on``
set on every connection (the commit's WAL is flushed to disk, and to synchronous standbys if
the server has any) and a server that runs with ``fsync = off`` refused at open.

Same schema as SQLite (interface.py says what each table holds) in PostgreSQL types: ``bytea``
for hashes and bytes, ``bigint`` for indices and index keys, ``double precision`` for times.
Rows go in by binary COPY: one statement per table per commit, whatever the number of rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

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
    StoreUnavailable,
    TreeHead,
    WriteTxn,
    attribution_query,
    attribution_rows,
    checkpoint_row,
    cosignature_rows,
    issuance_rows,
    issuer_row,
    leaf_rows,
)

log = logging.getLogger(__name__)


def _lock_key(label: bytes) -> int:
    """A 64-bit advisory lock key from a domain-separated label (advisory locks are per database)."""
    return int.from_bytes(hashlib.sha256(label).digest()[:8], "big", signed=True)


SEQUENCER_LOCK = _lock_key(b"emshield/log-sequencer-lock/v1")
CONNECT_TIMEOUT_S = 10
# A writer's session that stays idle inside its transaction this long (a host that hangs while
# holding the sequencer lock) is ended by the server, which releases the lock for the other hosts.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE meta(key text PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE leaves(
    idx bigint PRIMARY KEY,
    leaf_hash bytea NOT NULL UNIQUE,
    data bytea NOT NULL,
    kind text NOT NULL
);
CREATE TABLE nodes(
    level integer NOT NULL,
    idx bigint NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY(level, idx)
);
CREATE TABLE checkpoints(
    size bigint PRIMARY KEY,
    root bytea NOT NULL,
    note bytea NOT NULL,
    created_at double precision NOT NULL,
    border bytea
);
CREATE TABLE issuers(
    key_id bytea PRIMARY KEY,
    public_key bytea NOT NULL,
    name text NOT NULL,
    leaf_idx bigint NOT NULL UNIQUE REFERENCES leaves(idx),
    registered_at bigint NOT NULL,
    revoked_at double precision,
    revocation_reason text
);
CREATE TABLE issuances(
    leaf_idx bigint PRIMARY KEY REFERENCES leaves(idx),
    issuer_key_id bytea NOT NULL REFERENCES issuers(key_id),
    device_uuid text NOT NULL,
    watermark_commitment bytea,
    fingerprint_hash bytea,
    watermark_key bigint,
    fingerprint_key bigint,
    device_key bigint
);
CREATE INDEX issuances_by_watermark_key ON issuances(watermark_key, leaf_idx) WHERE watermark_key IS NOT NULL;
CREATE INDEX issuances_by_fingerprint_key ON issuances(fingerprint_key, leaf_idx) WHERE fingerprint_key IS NOT NULL;
CREATE INDEX issuances_by_device_key ON issuances(device_key, leaf_idx);
CREATE TABLE side_records(
    leaf_idx bigint PRIMARY KEY REFERENCES leaves(idx),
    data bytea NOT NULL,
    stored_at double precision NOT NULL
);
CREATE TABLE cosignatures(
    size bigint NOT NULL REFERENCES checkpoints(size),
    name text NOT NULL,
    key_id bytea NOT NULL,
    signature bytea NOT NULL,
    received_at double precision NOT NULL,
    PRIMARY KEY(size, name, key_id)
)
"""

# Attribution entries by suspect SHA-256 and by attributed issuance (interface.py). Added to schema
# version 2 in place: a store without them gets them, empty, when it is opened (`_add_attributions`).
_ATTRIBUTIONS = """
CREATE TABLE IF NOT EXISTS attributions(
    leaf_idx bigint PRIMARY KEY REFERENCES leaves(idx),
    issuer_key_id bytea NOT NULL REFERENCES issuers(key_id),
    issuance_idx bigint NOT NULL REFERENCES leaves(idx),
    suspect_sha256 bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS attributions_by_suspect ON attributions(suspect_sha256, leaf_idx);
CREATE INDEX IF NOT EXISTS attributions_by_issuance ON attributions(issuance_idx, leaf_idx)
"""

# Rows go in by binary COPY: psycopg formats them in C, and the server parses no SQL per row
# (multi-row INSERTs of arrays cost several times more client CPU per commit: adapting the arrays).
_COPY_LEAVES = ("COPY leaves(idx, leaf_hash, data, kind) FROM STDIN (FORMAT BINARY)", ("int8", "bytea", "bytea", "text"))
_COPY_ISSUANCES = ("COPY issuances(leaf_idx, issuer_key_id, device_uuid, watermark_commitment, fingerprint_hash,"
                   " watermark_key, fingerprint_key, device_key) FROM STDIN (FORMAT BINARY)",
                   ("int8", "bytea", "text", "bytea", "bytea", "int8", "int8", "int8"))
_COPY_ATTRIBUTIONS = ("COPY attributions(leaf_idx, issuer_key_id, issuance_idx, suspect_sha256) FROM STDIN"
                      " (FORMAT BINARY)", ("int8", "bytea", "int8", "bytea"))
_COPY_NODES = ("COPY nodes(level, idx, hash) FROM STDIN (FORMAT BINARY)", ("int4", "int8", "bytea"))
_LEAF_HASH_UNIQUE = "leaves_leaf_hash_key"
# The nodes of a proof in one statement: leaf hashes by the leaves' primary key, inner nodes by a
# primary-key look-up each. LATERAL ... LIMIT 1 keeps the planner from turning the look-ups into a
# hash join, which would scan the whole nodes table (it cannot know how few nodes are asked for).
NODES_SQL = ("SELECT 0, idx, leaf_hash FROM leaves WHERE idx = ANY(%s::bigint[])"
             " UNION ALL SELECT w.level, w.idx, n.hash FROM unnest(%s::integer[], %s::bigint[]) AS w(level, idx)"
             " CROSS JOIN LATERAL (SELECT hash FROM nodes WHERE level = w.level AND idx = w.idx LIMIT 1) AS n")


def _copy_rows(conn: psycopg.Connection, table: tuple[str, tuple[str, ...]], rows: Sequence[tuple], what: str) -> None:
    """COPY ``rows`` (tuples of the table's column order) into the table, one COPY per call."""
    statement, types = table
    if any(len(r) != len(types) for r in rows):
        raise ValueError(f"{what}: every row needs {len(types)} values")
    with conn.cursor().copy(statement) as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)


def check_url(url: str) -> dict[str, str]:
    """libpq's parameters of ``url``; `StoreError` if it cannot be parsed or carries a password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StoreError(f"not a PostgreSQL URL: {str(exc).splitlines()[0]}") from None
    if "password" in params:
        raise StoreError("the store URL must not carry a password (it would be visible to every user in the process"
                         " list): give it in $PGPASSWORD or in a password file only you can read ($PGPASSFILE,"
                         " default ~/.pgpass, mode 0600)")
    return params


class PostgresStore:
    """`LogStore` on one PostgreSQL database (the tables in the first schema of its search path);
    one connection per thread and process."""

    def __init__(self, url: str) -> None:
        self.url = url
        check_url(url)
        self._local = threading.local()
        self._all: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        if conn.execute("SELECT to_regclass('meta') IS NULL").fetchone()[0]:
            raise StoreError(f"{self.describe()} holds no EMShield log store (no meta table; run `emshield-log init`)")
        raw = self.meta("schema_version")
        try:
            version = int(raw) if raw is not None else None
        except ValueError:
            version = None
        if version is None:
            raise StoreError(f"{self.describe()} is not an EMShield log store (its meta table has no schema version)")
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.describe()}: store schema version {version}, this server knows {SCHEMA_VERSION}")
        if conn.execute("SHOW fsync").fetchone()[0] != "on":
            raise StoreError(f"{self.describe()}: the PostgreSQL server runs with fsync=off, so a crash could lose"
                             " acknowledged entries; the log refuses such a server")
        if conn.execute("SELECT to_regclass('attributions') IS NULL").fetchone()[0]:
            self._add_attributions()

    def _add_attributions(self) -> None:
        """Give a store created before attributions their table, in one transaction under the
        sequencer lock (several hosts may open it at once: one adds it, the others find it there)."""
        try:
            with self.write():
                for statement in _ATTRIBUTIONS.split(";"):
                    self._conn().execute(statement)
        except psycopg.Error as exc:
            raise StoreError(f"{self.describe()}: cannot add the attributions table: {_first_line(exc)}") from None

    @classmethod
    def create(cls, url: str, meta: Mapping[str, bytes]) -> PostgresStore:
        """The log's tables and ``meta`` in the (existing) database ``url`` names, in one transaction;
        refused if it already holds a log store's tables."""
        check_url(url)
        conn = _connect(url)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEQUENCER_LOCK,))  # two inits at once: one wins
                if conn.execute("SELECT current_schema() IS NULL").fetchone()[0]:
                    raise StoreError(f"{_describe(url)}: no schema of the search path exists to create the tables in")
                taken = [t for t in ("meta", "leaves", "nodes", "checkpoints") if
                         conn.execute("SELECT to_regclass(%s) IS NOT NULL", (t,)).fetchone()[0]]
                if taken:
                    raise StoreError(f"{_describe(url)} already has a table {taken[0]!r}; refusing to overwrite a"
                                     " log store (use an empty database or schema)")
                for statement in [*_SCHEMA.split(";"), *_ATTRIBUTIONS.split(";")]:
                    conn.execute(statement)
                conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', %s)", (str(SCHEMA_VERSION).encode(),))
                for key, value in meta.items():
                    conn.execute("INSERT INTO meta(key, value) VALUES (%s, %s)", (key, value))
        except psycopg.Error as exc:
            raise StoreError(f"cannot create a log store in {_describe(url)}: {_first_line(exc)}") from None
        finally:
            conn.close()
        return cls(url)

    def describe(self) -> str:
        return _describe(self.url)

    def _conn(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.broken or conn.closed or self._local.pid != os.getpid():
            conn = _connect(self.url)
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._all.append(conn)
        return conn

    def _one(self, query: str, params: Sequence[object] = ()) -> tuple | None:
        return self._conn().execute(query, params, binary=True).fetchone()

    def _all_rows(self, query: str, params: Sequence[object] = ()) -> list[tuple]:
        return self._conn().execute(query, params, binary=True).fetchall()

    def write(self) -> _PgWriteCtx:
        return _PgWriteCtx(self._conn())

    def meta(self, key: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE key = %s", (key,))
        return None if row is None else bytes(row[0])

    def tree_size(self) -> int:
        return _tree_size(self._conn())

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        return _latest_checkpoint(self._conn())

    def get_nodes(self, ids: Sequence[NodeID]) -> Mapping[NodeID, bytes]:
        return _nodes_query(self._conn(), ids)

    def leaves(self, start: int, end: int) -> list[LeafRecord]:
        rows = self._all_rows("SELECT idx, leaf_hash, data, kind FROM leaves WHERE idx >= %s AND idx < %s ORDER BY idx",
                              (start, end))
        return leaf_rows(rows)

    def leaf(self, index: int) -> LeafRecord | None:
        got = self.leaves(index, index + 1)
        return got[0] if got else None

    def node_range(self, level: int, start: int, end: int) -> list[bytes]:
        """The stored perfect-node hashes (level, start) .. (level, end - 1) in order (level 0: the
        leaf hashes), one range scan of a primary key; a tile is one such range."""
        if level == 0:
            rows = self._all_rows("SELECT leaf_hash FROM leaves WHERE idx >= %s AND idx < %s ORDER BY idx", (start, end))
        else:
            rows = self._all_rows("SELECT hash FROM nodes WHERE level = %s AND idx >= %s AND idx < %s ORDER BY idx",
                                  (level, start, end))
        return [bytes(h) for (h,) in rows]

    def checkpoint(self, size: int) -> StoredCheckpoint | None:
        row = self._one("SELECT size, root, note, created_at FROM checkpoints WHERE size = %s", (size,))
        return checkpoint_row(row)

    def cosignatures(self, size: int) -> list[tuple[str, bytes, bytes]]:
        """(witness name, key id, signature) of every cosignature stored for checkpoint ``size``."""
        rows = self._all_rows("SELECT name, key_id, signature FROM cosignatures WHERE size = %s ORDER BY name, key_id",
                              (size,))
        return cosignature_rows(rows)

    def latest_cosigned(self, witnesses: Sequence[tuple[str, bytes]], quorum: int) -> StoredCheckpoint | None:
        """The largest checkpoint cosigned by at least ``quorum`` of ``witnesses`` (name, key id)."""
        if quorum <= 0:
            return self.latest_checkpoint()
        row = self._one(
            "SELECT size FROM cosignatures WHERE (name, key_id) IN (SELECT * FROM unnest(%s::text[], %s::bytea[]))"
            " GROUP BY size HAVING count(*) >= %s ORDER BY size DESC LIMIT 1",
            ([n for n, _ in witnesses], [k for _, k in witnesses], quorum))
        return None if row is None else self.checkpoint(row[0])

    def index_of(self, leaf_hash: bytes) -> int | None:
        row = self._one("SELECT idx FROM leaves WHERE leaf_hash = %s", (leaf_hash,))
        return None if row is None else row[0]

    def issuer(self, key_id: bytes) -> IssuerRecord | None:
        return issuer_row(self._one(f"SELECT {ISSUER_COLS} FROM issuers WHERE key_id = %s", (key_id,)))

    def issuers(self) -> list[IssuerRecord]:
        rows = self._all_rows(f"SELECT {ISSUER_COLS} FROM issuers ORDER BY leaf_idx")
        return [r for r in map(issuer_row, rows) if r is not None]

    def issuances(self, field: str, value: bytes | str, limit: int) -> list[IssuanceIndex]:
        if field not in LOOKUP_FIELDS:
            raise ValueError(f"cannot look issuances up by {field!r}")
        column, key = ISSUANCE_KEYS[field]
        # The index on (key, leaf_idx) yields the key's rows in leaf order; the full value filters them.
        rows = self._all_rows(
            "SELECT leaf_idx, issuer_key_id, device_uuid, watermark_commitment, fingerprint_hash FROM issuances"
            f" WHERE {column} = %s AND {field} = %s ORDER BY leaf_idx LIMIT %s", (key(value), value, limit))
        return issuance_rows(rows)

    def attributions(self, field: str, value: bytes | int, limit: int) -> list[AttributionIndex]:
        return attribution_rows(self._all_rows(attribution_query(field).format("%s", "%s"), (value, limit)))

    def side_record(self, leaf_index: int) -> bytes | None:
        row = self._one("SELECT data FROM side_records WHERE leaf_idx = %s", (leaf_index,))
        return None if row is None else bytes(row[0])

    def role_lock(self, role: str) -> _AdvisoryRoleLock:
        return _AdvisoryRoleLock(self.url, _lock_key(b"emshield/log-role/v1/" + role.encode()))

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _describe(url: str) -> str:
    """The database ``url`` names, for messages (URLs here never carry a password)."""
    try:
        p = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the PostgreSQL database"
    where = p.get("host") or "the local socket"
    port = f":{p['port']}" if p.get("port") else ""
    return f"PostgreSQL database {p.get('dbname') or p.get('user') or '(default)'!r} at {where}{port}"


def _connect(url: str) -> psycopg.Connection:
    """A connection in autocommit mode (a transaction only inside `write()`), commits synchronous."""
    kwargs = {} if "connect_timeout" in conninfo_to_dict(url) else {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        conn = psycopg.connect(url, autocommit=True, **kwargs)
        conn.execute("SET synchronous_commit = on")
        conn.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_TIMEOUT_MS}")
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to {_describe(url)}: {_first_line(exc)}") from None
    return conn


def _tree_size(conn: psycopg.Connection) -> int:
    (top,) = conn.execute("SELECT max(idx) FROM leaves").fetchone()  # the last key of the primary-key index
    return 0 if top is None else top + 1


def _latest_checkpoint(conn: psycopg.Connection) -> StoredCheckpoint | None:
    row = conn.execute("SELECT size, root, note, created_at FROM checkpoints ORDER BY size DESC LIMIT 1",
                       binary=True).fetchone()
    return checkpoint_row(row)


def _nodes_query(conn: psycopg.Connection, ids: Sequence[NodeID]) -> dict[NodeID, bytes]:
    """All requested perfect-subtree hashes in one indexed query (level 0 from `leaves`)."""
    wanted = list(dict.fromkeys((int(level), int(index)) for level, index in ids))
    if not wanted:
        return {}
    leaves = [index for level, index in wanted if level == 0]
    inner = [(level, index) for level, index in wanted if level > 0]
    rows = conn.execute(NODES_SQL, (leaves, [lv for lv, _ in inner], [ix for _, ix in inner]), binary=True)
    return {(level, index): bytes(h) for level, index, h in rows}


class _PgWriteCtx:
    """BEGIN, then the deployment-wide sequencer lock; COMMIT on a normal exit, else ROLLBACK."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn
        self._tx: psycopg.Transaction | None = None

    def __enter__(self) -> WriteTxn:
        self._tx = self._conn.transaction()
        self._tx.__enter__()
        try:
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEQUENCER_LOCK,))
        except BaseException as exc:
            self._tx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return _PgTxn(self._conn)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._tx is not None
        self._tx.__exit__(exc_type, exc, tb)  # COMMIT (raises if it fails: then nothing is acknowledged)


class _PgTxn:
    """`WriteTxn` over one connection inside `write()`'s transaction."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._c = conn

    def tree_size(self) -> int:
        return _tree_size(self._c)

    def tree_head(self) -> TreeHead:
        # max(idx) is the last key of the primary-key index; checkpoint and epoch are key look-ups
        n, root, border, epoch = self._c.execute(
            "SELECT l.n, c.root, c.border, (SELECT value FROM meta WHERE key = %s)"
            " FROM (SELECT coalesce(max(idx) + 1, 0) AS n FROM leaves) AS l"
            " LEFT JOIN checkpoints AS c ON c.size = l.n", (ISSUER_EPOCH_META_KEY,), binary=True).fetchone()
        if border is None:
            root = None
        return TreeHead(n, None if root is None else bytes(root), None if border is None else bytes(border),
                        None if epoch is None else bytes(epoch))

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        return _latest_checkpoint(self._c)

    def get_nodes(self, ids: Sequence[NodeID]) -> Mapping[NodeID, bytes]:
        return _nodes_query(self._c, ids)

    def indices_of(self, leaf_hashes: Sequence[bytes]) -> dict[bytes, int]:
        rows = self._c.execute("SELECT leaf_hash, idx FROM leaves WHERE leaf_hash = ANY(%b::bytea[])",
                               (list(leaf_hashes),), binary=True)
        return {bytes(h): i for h, i in rows}

    def issuer(self, key_id: bytes) -> IssuerRecord | None:
        return issuer_row(self._c.execute(f"SELECT {ISSUER_COLS} FROM issuers WHERE key_id = %s", (key_id,),
                                          binary=True).fetchone())

    def add_leaves(self, leaves: Sequence[LeafRow]) -> None:
        if not leaves:
            return
        try:
            with self._c.transaction():  # a savepoint: a refused insert leaves the transaction usable
                _copy_rows(self._c, _COPY_LEAVES, leaves, "leaves")
        except pg_errors.UniqueViolation as exc:
            if exc.diag.constraint_name == _LEAF_HASH_UNIQUE:
                raise DuplicateLeaf("a leaf hash is already stored") from exc
            raise

    def add_issuances(self, rows: Sequence[IssuanceRow]) -> None:
        if rows:
            _copy_rows(self._c, _COPY_ISSUANCES, rows, "issuances")

    def add_attributions(self, rows: Sequence[AttributionRow]) -> None:
        if rows:
            _copy_rows(self._c, _COPY_ATTRIBUTIONS, rows, "attributions")

    def add_issuer(self, issuer: IssuerRecord) -> None:
        self._c.execute(f"INSERT INTO issuers({ISSUER_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        (issuer.key_id, issuer.public_key, issuer.name, issuer.leaf_index, issuer.registered_at,
                         issuer.revoked_at, issuer.revocation_reason))

    def add_nodes(self, nodes: Sequence[tuple[NodeID, bytes]]) -> None:
        # Level 0 is the leaf hash, already in `leaves` (added first, in the same transaction).
        rows = [(lv, ix, h) for (lv, ix), h in nodes if lv > 0]
        if rows:
            _copy_rows(self._c, _COPY_NODES, rows, "nodes")

    def add_checkpoint(self, cp: StoredCheckpoint, border: bytes | None = None) -> None:
        self._c.execute("INSERT INTO checkpoints(size, root, note, created_at, border) VALUES (%s, %s, %s, %s, %s)",
                        (cp.size, cp.root_hash, cp.note, cp.created_at, border))

    def revoke_issuer(self, key_id: bytes, at: float, reason: str) -> None:
        changed = self._c.execute("UPDATE issuers SET revoked_at = %s, revocation_reason = %s WHERE key_id = %s"
                                  " AND revoked_at IS NULL", (at, reason, key_id)).rowcount
        if changed:  # issuer records cached by sequencers are stale now
            self.set_meta(ISSUER_EPOCH_META_KEY, os.urandom(16))

    def add_cosignatures(self, size: int, sigs: Sequence[tuple[str, bytes, bytes]]) -> None:
        now = time.time()
        for name, key_id, sig in sigs:
            self._c.execute("INSERT INTO cosignatures(size, name, key_id, signature, received_at)"
                            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (size, name, key_id)"
                            " DO UPDATE SET signature = excluded.signature, received_at = excluded.received_at",
                            (size, name, key_id, sig, now))

    def put_side_record(self, leaf_index: int, data: bytes) -> None:
        self._c.execute("INSERT INTO side_records(leaf_idx, data, stored_at) VALUES (%s, %s, %s)",
                        (leaf_index, data, time.time()))

    def set_meta(self, key: str, value: bytes) -> None:
        self._c.execute("INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (key, value))


class _AdvisoryRoleLock:
    """`RoleLock` as a session-level advisory lock on a connection of its own (all hosts)."""

    def __init__(self, url: str, key: int) -> None:
        self._url = url
        self._key = key
        self._conn: psycopg.Connection | None = None
        self._pid = 0

    def try_acquire(self) -> bool:
        conn = self._conn
        if conn is not None and self._pid == os.getpid():
            try:
                conn.execute("SELECT 1")  # still held while the session lives
                return True
            except psycopg.Error:
                self.release()  # the session (and the lock with it) is gone: try for it anew
        try:
            conn = _connect(self._url)
        except StoreError:
            log.warning("cannot reach the store to take a role lock", exc_info=True)
            return False
        if conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()[0]:
            self._conn, self._pid = conn, os.getpid()
            return True
        conn.close()
        return False

    def release(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
