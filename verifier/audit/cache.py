"""What earlier replays established, so `emshield-audit --replay --incremental` checks only new entries.

One SQLite file beside the state file (``<state>.replay.db``) holds, per log origin, the size and
root of the last fully replayed tree, the leaf hash of every entry in it (for the root, the upper
tiles and duplicate detection) and the issuers registered in it (key id, index, public key). It is
written only after a replay without findings, in one transaction, and read back only if its leaf
hashes still give its stored root: a damaged cache makes the auditor start over, never trust it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from emshield.tlog import merkle

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prefixes(origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leaf_hashes(origin TEXT NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
                                       PRIMARY KEY(origin, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS issuers(origin TEXT NOT NULL, key_id BLOB NOT NULL, idx INTEGER NOT NULL,
                                   public_key BLOB NOT NULL, PRIMARY KEY(origin, key_id)) WITHOUT ROWID
"""


@dataclass
class ReplayedPrefix:
    """The first ``size`` entries of a log, replayed without findings."""

    size: int
    root: bytes
    leaf_hashes: list[bytes] = field(default_factory=list)
    registered: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)  # key id -> (index, public key)


class ReplayCache:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        for stmt in _SCHEMA.split(";"):
            conn.execute(stmt)
        return conn

    def load(self, origin: str) -> ReplayedPrefix | None:
        """The cached prefix of ``origin``, or None if there is none or it does not add up."""
        if not self.path.is_file():
            return None
        conn = self._connect()
        try:
            row = conn.execute("SELECT size, root FROM prefixes WHERE origin=?", (origin,)).fetchone()
            if row is None:
                return None
            hashes = [bytes(h) for (h,) in conn.execute("SELECT hash FROM leaf_hashes WHERE origin=? ORDER BY idx",
                                                         (origin,))]
            registered = {bytes(k): (i, bytes(p)) for k, i, p in
                          conn.execute("SELECT key_id, idx, public_key FROM issuers WHERE origin=?", (origin,))}
        finally:
            conn.close()
        size, root = row[0], bytes(row[1])
        if len(hashes) != size or merkle.root_from_leaf_hashes(hashes) != root:
            return None
        return ReplayedPrefix(size, root, hashes, registered)

    def save(self, origin: str, prefix: ReplayedPrefix, old_size: int) -> None:
        """Record ``prefix``, which extends the cached prefix of ``old_size`` entries (0: none)."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            if old_size == 0:
                for table in ("prefixes", "leaf_hashes", "issuers"):
                    conn.execute(f"DELETE FROM {table} WHERE origin=?", (origin,))
            conn.executemany("INSERT INTO leaf_hashes(origin, idx, hash) VALUES (?,?,?)",
                             [(origin, i, prefix.leaf_hashes[i]) for i in range(old_size, prefix.size)])
            conn.executemany("INSERT OR IGNORE INTO issuers(origin, key_id, idx, public_key) VALUES (?,?,?,?)",
                             [(origin, k, i, p) for k, (i, p) in prefix.registered.items()])
            conn.execute("INSERT INTO prefixes(origin, size, root) VALUES (?,?,?) ON CONFLICT(origin)"
                         " DO UPDATE SET size=excluded.size, root=excluded.root", (origin, prefix.size, prefix.root))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()
