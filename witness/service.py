"""A C2SP tlog-witness: cosign a log's checkpoints only along one append-only history (spec/witness.md).

`Witness.add_checkpoint` implements ``POST /add-checkpoint`` of c2sp.org/tlog-witness over raw
request bytes and returns (status, content type, body); the HTTP layer (`witness.http`) only
moves bytes. Per log origin the witness keeps the latest checkpoint it cosigned in SQLite; the
check of the client's old size against it and the update happen in ONE write transaction
(BEGIN IMMEDIATE), so two concurrent requests can never roll the witness back. Requests whose
checkpoint is validly signed but inconsistent with what the witness cosigned are kept as
evidence (table ``conflicts``): they are what a split view looks like.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from emshield.tlog import merkle
from emshield.tlog.addcheckpoint import SIZE_CONTENT_TYPE, AddCheckpoint, AddCheckpointError, parse_add_checkpoint
from emshield.tlog.checkpoint import (
    Checkpoint,
    CheckpointError,
    CosignatureSigner,
    NoteError,
    NoteSignature,
    NoteVerifier,
    open_note,
    split_note,
)


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def text_answer(status: int, message: str) -> Answer:
    return Answer(status, "text/plain; charset=utf-8", (message + "\n").encode())


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS logs(origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL,
                                note BLOB NOT NULL, updated_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conflicts(id INTEGER PRIMARY KEY, origin TEXT NOT NULL, received_at REAL NOT NULL,
                                     status INTEGER NOT NULL, reason TEXT NOT NULL, request BLOB NOT NULL);
"""
STATE_VERSION = "1"


class Witness:
    """The witness for a set of trusted logs (their verifier keys; the key name is the origin)."""

    def __init__(self, signer: CosignatureSigner, logs: Sequence[NoteVerifier], state: Path,
                 clock=time.time) -> None:
        self.signer = signer
        self.logs: dict[str, list[NoteVerifier]] = {}
        for v in logs:
            self.logs.setdefault(v.name, []).append(v)
        self.path = Path(state)
        self._local = threading.local()
        self._clock = clock
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('version', ?)", (STATE_VERSION,))
        version = conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()[0]
        conn.execute("COMMIT")
        if version != STATE_VERSION:
            raise ValueError(f"{state}: witness state version {version}, this witness knows {STATE_VERSION}")

    def close(self) -> None:
        """Close this thread's connection to the state file."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # the cosigned size is durable before we answer
            self._local.conn = conn
        return conn

    def add_checkpoint(self, body: bytes) -> Answer:
        """c2sp.org/tlog-witness add-checkpoint: verify, check against the cosigned state, cosign."""
        try:
            req = parse_add_checkpoint(body)
            text, _ = split_note(req.note)
            cp = Checkpoint.parse(text)
        except (AddCheckpointError, NoteError, CheckpointError) as exc:
            return text_answer(400, f"malformed request: {exc}")
        verifiers = self.logs.get(cp.origin)
        if verifiers is None:
            return text_answer(404, f"unknown log origin {cp.origin!r}")
        try:
            open_note(req.note, verifiers)
        except NoteError as exc:
            return text_answer(403, f"checkpoint not signed by a trusted key of {cp.origin!r}: {exc}")
        if req.old_size > cp.size:
            return text_answer(400, f"old size {req.old_size} is larger than the checkpoint size {cp.size}")
        if req.old_size == 0 and req.proof:
            return text_answer(400, "the consistency proof must be empty when the old size is 0")
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # check and update atomically (no rollback race)
        try:
            answer = self._check_and_update(conn, req, cp, text)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return answer

    def _check_and_update(self, conn: sqlite3.Connection, req: AddCheckpoint, cp: Checkpoint, text: bytes) -> Answer:
        row = conn.execute("SELECT size, root FROM logs WHERE origin=?", (cp.origin,)).fetchone()
        size, root = (0, merkle.EMPTY_ROOT) if row is None else (row[0], bytes(row[1]))
        if req.old_size != size:
            return Answer(409, SIZE_CONTENT_TYPE, f"{size}\n".encode())
        if cp.size == size:
            if row is not None and cp.root_hash != root:
                self._conflict(conn, cp.origin, 409, "same size, different root hash", req)
                return text_answer(409, f"checkpoint of size {size} has a different root hash than the one cosigned")
        elif size > 0:
            try:
                merkle.verify_consistency(size, cp.size, list(req.proof), root, cp.root_hash)
            except merkle.ProofError as exc:
                self._conflict(conn, cp.origin, 422, f"consistency proof failed: {exc}", req)
                return text_answer(422, f"consistency proof from size {size} does not verify: {exc}")
        elif cp.size == 0 and cp.root_hash != merkle.EMPTY_ROOT:
            return text_answer(422, "a size-0 checkpoint must have the empty root")
        line = self._cosignature_line(text)
        conn.execute("INSERT INTO logs(origin, size, root, note, updated_at) VALUES (?,?,?,?,?)"
                     " ON CONFLICT(origin) DO UPDATE SET size=excluded.size, root=excluded.root,"
                     " note=excluded.note, updated_at=excluded.updated_at",
                     (cp.origin, cp.size, cp.root_hash, req.note, self._clock()))
        return Answer(200, "text/plain; charset=utf-8", line)

    def _cosignature_line(self, text: bytes) -> bytes:
        return NoteSignature(self.signer.name, self.signer.key_id, self.signer.sign(text)).line().encode()

    def _conflict(self, conn, origin: str, status: int, reason: str, req: AddCheckpoint) -> None:
        conn.execute("INSERT INTO conflicts(origin, received_at, status, reason, request) VALUES (?,?,?,?,?)",
                     (origin, self._clock(), status, reason, req.encode()))



@dataclass(frozen=True)
class Conflict:
    """A validly signed checkpoint the witness refused as inconsistent: evidence of a fork."""

    origin: str
    received_at: float
    status: int
    reason: str
    request: bytes  # the add-checkpoint body, verbatim (old size, proof, signed note)


def read_conflicts(state: Path, origin: str | None = None) -> list[Conflict]:
    """The evidence a witness kept (read-only; the state file must exist)."""
    if not Path(state).is_file():
        raise FileNotFoundError(f"no witness state at {state}")
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT origin, received_at, status, reason, request FROM conflicts"
                            " WHERE ? IS NULL OR origin = ? ORDER BY id", (origin, origin)).fetchall()
    finally:
        conn.close()
    return [Conflict(o, t, st, r, bytes(b)) for o, t, st, r, b in rows]
