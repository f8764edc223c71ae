"""What the routes, the sequencer and the cosigner may ask of a log store, whichever it is.

`LogStore` (reads, and `write()`, which opens the deployment's one exclusive `WriteTxn`) and the
records they exchange. Two stores implement them: `sqlite.SqliteStore` (one file, the embedded
default) and `postgres.PostgresStore` (one database that many API hosts share). Both keep the
same tables with the same meaning and the same schema versions, so everything above them is
written once.

What is kept, and why:
- `leaves`: the exact leaf bytes by index (append-only; the index is the Merkle leaf index) and
  their RFC 9162 leaf hash (UNIQUE: deduplication and inclusion proofs by hash).
- `nodes`: every perfect subtree hash above the leaves, keyed (level, index); level 0 is the
  leaf hash column of `leaves`. Any inclusion or consistency proof at any size needs at most
  ~2·log2(n) of them, fetched with ONE indexed query: O(log n) reads.
- `checkpoints`: every signed checkpoint note, one per integrated batch, keyed by tree size, with
  the right border of the tree at that size (the perfect-subtree hashes a compact range holds,
  concatenated left to right), so a sequencer that finds the tree grown by another process's
  commit reads its new state with the size in ONE row instead of O(log n) nodes. (Added to
  schema version 1 in place; rows written before carry none and the nodes serve instead.)
- `issuers`, `issuances`: indexes derived from the leaves (issuers by key id; issuances by
  watermark commitment, fingerprint hash and device UUID), written in the same transaction
  as the leaf, so an index never points at a leaf that is not stored and vice versa.
  Schema version 2 indexes the issuance look-ups by 64-bit integer prefixes of the values
  (`blob_key`, `device_key`) instead of the values themselves, and every look-up also compares
  the full value: see `ISSUANCE_KEYS`.
- `attributions`: attribution entries (spec/entry.md) indexed by the suspect file's SHA-256 and by
  the leaf index of the issuance they attribute, written with the leaf like the issuance index.
  (Added to schema version 2 in place, as the cosignatures were to version 1: a store without the
  table gets it, empty, when it is opened; no attribution could have been logged before it.)
- `side_records`: bytes published beside a leaf (outside the tree) whose hash the leaf commits to.
- `cosignatures`: witness cosignatures of stored checkpoints (spec/witness.md).
- `meta`: the schema version, the origin, the operator credential's hash, the issuer epoch.

Every write happens inside `LogStore.write()`: one transaction, exclusive across the whole
deployment, committed (durably) on a normal exit and rolled back otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

SCHEMA_VERSION = 2
ISSUER_EPOCH_META_KEY = "issuer_epoch"

NodeID = tuple[int, int]


class StoreError(RuntimeError):
    """The store is missing, not a log store, of another version, unreachable, or inconsistent.
    Its message is one line written for the operator."""


class StoreUnavailable(StoreError):
    """The store's server could not be reached: nothing is wrong with the input, retry later (exit 4)."""


class DuplicateLeaf(ValueError):
    """`WriteTxn.add_leaves` was given a leaf hash that is already stored; it added none of its rows."""


class LeafRecord(NamedTuple):
    """One leaf as stored: its index, the exact leaf bytes and their RFC 9162 leaf hash.

    A NamedTuple, not a dataclass: its fields are the `leaves` columns in order, so the sequencer
    hands thousands of them per commit to SQLite as rows unchanged (any tuple of that shape does)."""

    index: int
    leaf_hash: bytes
    data: bytes
    kind: str


@dataclass(frozen=True)
class IssuerRecord:
    """An issuer as the log knows it (from its registration entry plus operator revocation)."""

    key_id: bytes
    public_key: bytes
    name: str
    leaf_index: int
    registered_at: int
    revoked_at: float | None = None
    revocation_reason: str | None = None


class AttributionIndex(NamedTuple):
    """The searchable fields of one attribution entry, in the order of the `attributions` columns."""

    leaf_index: int
    issuer_key_id: bytes
    issuance_index: int
    suspect_sha256: bytes


class IssuanceIndex(NamedTuple):
    """The searchable fields of one issuance entry, in the order of the `issuances` columns (a
    row, like `LeafRecord`)."""

    leaf_index: int
    issuer_key_id: bytes
    device_uuid: str
    watermark_commitment: bytes | None
    fingerprint_hash: bytes | None


@dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    root_hash: bytes
    note: bytes
    created_at: float


class TreeHead(NamedTuple):
    """What a sequencer reads first in its transaction, in one go: the stored tree's size; if the
    checkpoint of that size carries them, its root hash and right border (the hashes of
    `merkle.root_node_ids(size)`, concatenated), else both None; and the issuer epoch, a value that
    changes in every transaction that revokes an issuer (None before the first revocation), so
    an issuer record read at the same epoch is still current."""

    size: int
    root: bytes | None
    border: bytes | None
    issuer_epoch: bytes | None


LeafRow = tuple[int, bytes, bytes, str]  # (index, leaf_hash, data, kind): a LeafRecord or a plain tuple
# The fields of IssuanceIndex, in order, then the three index keys (watermark, fingerprint, device)
IssuanceRow = tuple[int, bytes, str, bytes | None, bytes | None, int | None, int | None, int]

LOOKUP_FIELDS = ("watermark_commitment", "fingerprint_hash", "device_uuid")
# (leaf_idx, issuer_key_id, issuance_idx, suspect_sha256): the AttributionIndex fields in order
AttributionRow = tuple[int, bytes, int, bytes]
ATTRIBUTION_LOOKUP_FIELDS = ("suspect_sha256", "issuance_index")


def blob_key(value: object) -> int | None:
    """The index key of a watermark commitment or fingerprint hash: its first 8 bytes as a signed
    big-endian 64-bit integer (fewer bytes: those); None (SQL NULL) for anything but bytes."""
    return int.from_bytes(value[:8], "big", signed=True) if isinstance(value, (bytes, bytearray, memoryview)) else None


_UUID_PREFIX = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-")


def device_key(text: object) -> int:
    """The index key of a device UUID text: the UUID's first 8 bytes (hex digits 0-7, 9-12 and
    14-17 of the canonical lower-case 8-4-4-4-12 text) as a signed big-endian 64-bit integer;
    0 for a text that does not begin like a canonical UUID (stored texts always do: the entry
    decoder writes the canonical form). The bytes, not the text: 8 characters of text carry only
    4 bytes of the UUID."""
    if not isinstance(text, str) or _UUID_PREFIX.match(text) is None:
        return 0
    key = int(text[:8] + text[9:13] + text[14:18], 16)
    return key - (1 << 64) if key >= 1 << 63 else key


# Schema version 2: each issuance look-up field has an integer key column, and the index is on
# the key. Why: a batch commit inserts one random key per entry into each index, and with a few
# hundred thousand entries or fewer it rewrites most leaf pages of each index; an index entry of an
# 8-byte integer is less than half the size of one of a 32-byte hash or a 36-character text, so
# each commit has less than half as many index pages to dirty, log and write back
# (spec/notes/log-storage.md). The watermark and
# fingerprint indexes are partial (an issuance of the other policy has no row in them). Keys are
# prefixes, so two values may share one; every look-up compares the full value too
# (`WHERE key = ? AND value = ?`), so a collision costs reading the colliding rows, never a wrong
# answer. field -> (key column, key function).
ISSUANCE_KEYS = {
    "watermark_commitment": ("watermark_key", blob_key),
    "fingerprint_hash": ("fingerprint_key", blob_key),
    "device_uuid": ("device_key", device_key),
}


class WriteTxn(Protocol):
    """One exclusive write transaction (the only writer in the whole deployment while open)."""

    def tree_size(self) -> int: ...
    def tree_head(self) -> TreeHead: ...
    def latest_checkpoint(self) -> StoredCheckpoint | None: ...
    def get_nodes(self, ids: Sequence[NodeID]) -> Mapping[NodeID, bytes]: ...
    def indices_of(self, leaf_hashes: Sequence[bytes]) -> dict[bytes, int]: ...
    def issuer(self, key_id: bytes) -> IssuerRecord | None: ...
    # Rows are tuples shaped like LeafRecord / IssuanceIndex (those records, or plain tuples).
    # add_leaves adds all rows, or none and raises DuplicateLeaf if one's leaf hash is stored already
    # (the UNIQUE index serves as the idempotency look-up of a commit that expects no repeats).
    def add_leaves(self, leaves: Sequence[LeafRow]) -> None: ...
    # Issuance rows carry their index keys (`blob_key`, `device_key` of the values: IssuanceFields.of).
    def add_issuances(self, rows: Sequence[IssuanceRow]) -> None: ...
    def add_issuer(self, issuer: IssuerRecord) -> None: ...
    def add_attributions(self, rows: Sequence[AttributionRow]) -> None: ...
    def add_nodes(self, nodes: Sequence[tuple[NodeID, bytes]]) -> None: ...
    def add_checkpoint(self, cp: StoredCheckpoint, border: bytes | None = None) -> None: ...
    def revoke_issuer(self, key_id: bytes, at: float, reason: str) -> None: ...
    def put_side_record(self, leaf_index: int, data: bytes) -> None: ...
    def add_cosignatures(self, size: int, sigs: Sequence[tuple[str, bytes, bytes]]) -> None: ...
    def set_meta(self, key: str, value: bytes) -> None: ...


class LogStore(Protocol):
    """Read access plus `write()`, which opens an exclusive `WriteTxn` (commit on normal exit)."""

    def write(self) -> "WriteCtx": ...
    def meta(self, key: str) -> bytes | None: ...
    def tree_size(self) -> int: ...
    def latest_checkpoint(self) -> StoredCheckpoint | None: ...
    def get_nodes(self, ids: Sequence[NodeID]) -> Mapping[NodeID, bytes]: ...
    def leaves(self, start: int, end: int) -> list[LeafRecord]: ...
    def leaf(self, index: int) -> LeafRecord | None: ...
    def node_range(self, level: int, start: int, end: int) -> list[bytes]: ...
    def checkpoint(self, size: int) -> StoredCheckpoint | None: ...
    def cosignatures(self, size: int) -> list[tuple[str, bytes, bytes]]: ...
    def latest_cosigned(self, witnesses: Sequence[tuple[str, bytes]], quorum: int) -> StoredCheckpoint | None: ...
    def index_of(self, leaf_hash: bytes) -> int | None: ...
    def issuer(self, key_id: bytes) -> IssuerRecord | None: ...
    def issuers(self) -> list[IssuerRecord]: ...
    def issuances(self, field: str, value: bytes | str, limit: int) -> list[IssuanceIndex]: ...
    # field: one of ATTRIBUTION_LOOKUP_FIELDS (value: 32 bytes, or a leaf index); in leaf order
    def attributions(self, field: str, value: bytes | int, limit: int) -> list[AttributionIndex]: ...
    def side_record(self, leaf_index: int) -> bytes | None: ...
    def role_lock(self, role: str) -> RoleLock: ...
    def describe(self) -> str: ...  # where the store is, for messages (never a password)
    def close(self) -> None: ...


class WriteCtx(Protocol):
    def __enter__(self) -> WriteTxn: ...
    def __exit__(self, *exc: object) -> bool | None: ...


class RoleLock(Protocol):
    """A role only one process of the whole deployment plays at a time (the witness cosigner):
    `try_acquire` never blocks, and once it returned True the role stays with this process until
    it exits (or `release`)."""

    def try_acquire(self) -> bool: ...
    def release(self) -> None: ...


# The issuer columns in the order of `IssuerRecord`'s fields (both stores' SQL).
ISSUER_COLS = "key_id, public_key, name, leaf_idx, registered_at, revoked_at, revocation_reason"


# Rows of both stores' SQL as records (SQLite may hand back memoryviews, hence bytes()).
def checkpoint_row(row: tuple | None) -> StoredCheckpoint | None:
    """(size, root, note, created_at)."""
    return None if row is None else StoredCheckpoint(row[0], bytes(row[1]), bytes(row[2]), row[3])


def leaf_rows(rows: Iterable[tuple]) -> list[LeafRecord]:
    """(idx, leaf_hash, data, kind) rows."""
    return [LeafRecord(i, bytes(h), bytes(d), k) for i, h, d, k in rows]


def issuance_rows(rows: Iterable[tuple]) -> list[IssuanceIndex]:
    """(leaf_idx, issuer_key_id, device_uuid, watermark_commitment, fingerprint_hash) rows."""
    return [IssuanceIndex(i, bytes(k), d, None if w is None else bytes(w), None if f is None else bytes(f))
            for i, k, d, w, f in rows]


def attribution_rows(rows: Iterable[tuple]) -> list[AttributionIndex]:
    """(leaf_idx, issuer_key_id, issuance_idx, suspect_sha256) rows."""
    return [AttributionIndex(i, bytes(k), j, bytes(h)) for i, k, j, h in rows]


def attribution_query(field: str) -> str:
    """Both stores' look-up of attributions by ``field`` (one parameter for the value, one for the
    limit, in the store's paramstyle "{}"), in leaf order."""
    column = {"suspect_sha256": "suspect_sha256", "issuance_index": "issuance_idx"}.get(field)
    if column is None:
        raise ValueError(f"cannot look attributions up by {field!r}")
    return ("SELECT leaf_idx, issuer_key_id, issuance_idx, suspect_sha256 FROM attributions"
            f" WHERE {column} = {{}} ORDER BY leaf_idx LIMIT {{}}")


def cosignature_rows(rows: Iterable[tuple]) -> list[tuple[str, bytes, bytes]]:
    """(name, key_id, signature) rows."""
    return [(n, bytes(k), bytes(sig)) for n, k, sig in rows]


def issuer_row(row: tuple | None) -> IssuerRecord | None:
    if row is None:
        return None
    key_id, pub, name, leaf_idx, registered_at, revoked_at, reason = row
    return IssuerRecord(bytes(key_id), bytes(pub), name, leaf_idx, registered_at, revoked_at, reason)
