"""A C2SP tlog-witness: cosign a log's checkpoints only along one append-only history (spec/witness.md).

`Witness.add_checkpoint` implements ``POST /add-checkpoint`` of c2sp.org/tlog-witness over raw
request bytes and returns (status, content type, body); the HTTP layer (witness_server.py) only
moves bytes. Per log origin the witness keeps the latest checkpoint it cosigned in SQLite; the
check of the client's old size against it and the update happen in ONE write transaction
(BEGIN IMMEDIATE), so two concurrent requests can never roll the witness back. Requests whose
checkpoint is validly signed but inconsistent with what the witness cosigned are kept as
evidence (table ``conflicts``): they are what a split view looks like.

Witness key file: ``PRIVATE+KEY+<name>+<key id>+base64(0x04 || 32-byte Ed25519 seed)``, the
signed-note private key layout with the tlog-cosignature algorithm byte; the key id is that of
the type 0x04 verifier key (spec/witness.md).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from emshield.keyfile import read_private_text
from emshield.tlog import merkle
from emshield.tlog.checkpoint import (
    SIG_COSIGNATURE_ED25519,
    Checkpoint,
    CheckpointError,
    CosignatureSigner,
    NoteError,
    NoteSignature,
    NoteVerifier,
    open_note,
    split_note,
)

MAX_REQUEST_BYTES = 64 * 1024  # 63 proof lines + a checkpoint with many signatures
MAX_PROOF_LINES = 63
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_KEY_PREFIX = "PRIVATE+KEY+"
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX8 = re.compile(r"[0-9a-f]{8}")


class WitnessKeyError(ValueError):
    """A witness key file is missing, too open, or malformed."""


# --- key file -----------------------------------------------------------------------------------


def witness_key_string(name: str, private_key: Ed25519PrivateKey) -> str:
    signer = CosignatureSigner(name, private_key)
    seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    raw = base64.b64encode(bytes([SIG_COSIGNATURE_ED25519]) + seed).decode()
    return f"{_KEY_PREFIX}{name}+{signer.key_id.hex()}+{raw}"


def parse_witness_key(text: str, clock: Callable[[], float] = time.time) -> CosignatureSigner:
    """The signer of a key file line; ``clock`` gives the time put in its cosignatures."""
    if not text.startswith(_KEY_PREFIX):
        raise WitnessKeyError("a witness key starts with PRIVATE+KEY+")
    name, _, rest = text[len(_KEY_PREFIX):].partition("+")
    kid, _, b64 = rest.partition("+")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WitnessKeyError("witness key: the key part is not base64") from exc
    if not _HEX8.fullmatch(kid) or len(raw) != 33 or raw[0] != SIG_COSIGNATURE_ED25519 \
            or base64.b64encode(raw).decode() != b64:
        raise WitnessKeyError("witness key: want PRIVATE+KEY+NAME+KEYID+base64(0x04||seed)")
    try:
        signer = CosignatureSigner(name, Ed25519PrivateKey.from_private_bytes(raw[1:]), clock)
    except NoteError as exc:
        raise WitnessKeyError(f"witness key: {exc}") from exc
    if signer.key_id.hex() != kid:
        raise WitnessKeyError("witness key: the key id does not match the name and key")
    return signer


def write_witness_key(path: Path, name: str) -> CosignatureSigner:
    """Create a new key file (mode 0600, never overwriting); returns its signer."""
    key = Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(witness_key_string(name, key) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return CosignatureSigner(name, key)


def read_witness_key(path: Path) -> CosignatureSigner:
    return parse_witness_key(read_private_text(path, "witness key file", WitnessKeyError))


# --- the request --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddCheckpoint:
    """A parsed add-checkpoint request body (not yet verified)."""

    old_size: int
    proof: tuple[bytes, ...]
    note: bytes


class BadRequest(ValueError):
    pass


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """``old <size>\\n``, 0..63 base64 hash lines, an empty line, then the checkpoint note."""
    if len(body) > MAX_REQUEST_BYTES:
        raise BadRequest(f"request body over {MAX_REQUEST_BYTES} bytes")
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise BadRequest("no empty line between the proof and the checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError as exc:
        raise BadRequest("the old size and proof lines must be ASCII") from exc
    first, proof_lines = lines[0], lines[1:]
    if not first.startswith("old ") or not _DECIMAL.fullmatch(first[4:]):
        raise BadRequest("the first line must be 'old <decimal size>' without leading zeros")
    if len(proof_lines) > MAX_PROOF_LINES:
        raise BadRequest(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for i, line in enumerate(proof_lines):
        try:
            h = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"proof line {i + 1} is not base64") from exc
        if len(h) != merkle.HASH_SIZE or base64.b64encode(h).decode() != line:
            raise BadRequest(f"proof line {i + 1} is not one canonical base64 SHA-256 hash")
        proof.append(h)
    return AddCheckpoint(int(first[4:]), tuple(proof), note)


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def _text(status: int, message: str) -> Answer:
    return Answer(status, "text/plain; charset=utf-8", (message + "\n").encode())


# --- the witness --------------------------------------------------------------------------------

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
        except (BadRequest, NoteError, CheckpointError) as exc:
            return _text(400, f"malformed request: {exc}")
        verifiers = self.logs.get(cp.origin)
        if verifiers is None:
            return _text(404, f"unknown log origin {cp.origin!r}")
        try:
            open_note(req.note, verifiers)
        except NoteError as exc:
            return _text(403, f"checkpoint not signed by a trusted key of {cp.origin!r}: {exc}")
        if req.old_size > cp.size:
            return _text(400, f"old size {req.old_size} is larger than the checkpoint size {cp.size}")
        if req.old_size == 0 and req.proof:
            return _text(400, "the consistency proof must be empty when the old size is 0")
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
                return _text(409, f"checkpoint of size {size} has a different root hash than the one cosigned")
        elif size > 0:
            try:
                merkle.verify_consistency(size, cp.size, list(req.proof), root, cp.root_hash)
            except merkle.ProofError as exc:
                self._conflict(conn, cp.origin, 422, f"consistency proof failed: {exc}", req)
                return _text(422, f"consistency proof from size {size} does not verify: {exc}")
        elif cp.size == 0 and cp.root_hash != merkle.EMPTY_ROOT:
            return _text(422, "a size-0 checkpoint must have the empty root")
        line = self._cosignature_line(text)
        conn.execute("INSERT INTO logs(origin, size, root, note, updated_at) VALUES (?,?,?,?,?)"
                     " ON CONFLICT(origin) DO UPDATE SET size=excluded.size, root=excluded.root,"
                     " note=excluded.note, updated_at=excluded.updated_at",
                     (cp.origin, cp.size, cp.root_hash, req.note, self._clock()))
        return Answer(200, "text/plain; charset=utf-8", line)

    def _cosignature_line(self, text: bytes) -> bytes:
        return NoteSignature(self.signer.name, self.signer.key_id, self.signer.sign(text)).line().encode()

    def _conflict(self, conn, origin: str, status: int, reason: str, req: AddCheckpoint) -> None:
        body = f"old {req.old_size}\n".encode() + b"".join(base64.b64encode(h) + b"\n" for h in req.proof) \
            + b"\n" + req.note
        conn.execute("INSERT INTO conflicts(origin, received_at, status, reason, request) VALUES (?,?,?,?,?)",
                     (origin, self._clock(), status, reason, body))



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
