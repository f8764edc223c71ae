"""Log entries: signed, versioned, deterministic CBOR maps (RFC 8949 §4.2.1; schema spec/entry.cddl).

Three types: an issuer registration, an issuance, and an attribution (an issuer's public proof
that a suspect file carries one issuance's secret mark, by disclosing that issuance's detection
key; spec/entry.md).

The encoded signed entry is the log leaf data, so its bytes must be unique: the decoder accepts
only the one canonical encoding (it re-encodes what it decoded and compares), and rejects unknown
or missing fields, wrong types, out-of-range values, trailing bytes and oversized input with an
EntryError that says what was wrong. Every entry is signed with Ed25519 by the issuer over
``SIGNATURE_LABEL || canonical CBOR of the entry without "sig"`` (spec/entry.md), or, for a
batch-signed issuance, carries one signature over the RFC 9162 Merkle tree of a whole batch of
such signing bytes plus its inclusion proof ("batch"), so one Ed25519 operation serves the batch.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from emshield.cbor import strict_loads, text_key_order
from emshield.tlog.merkle import (
    ProofError,
    inclusion_paths,
    inclusion_proof_length,
    leaf_hash,
    root_from_inclusion_proof,
    tree_levels,
)

VERSION = 1
MAX_ENTRY_SIZE = 65_535  # fits the uint16 length prefix of C2SP tlog-tiles entry bundles
MAX_MARKING_PARAMS_SIZE = 60 * 1024
MAX_NAME_BYTES = 128
MAX_MARKING_PARAMS_DEPTH = 16
MAX_TIME = (1 << 63) - 1
MAX_UINT = MAX_TIME  # every unsigned integer field of an entry: 2^63-1 (spec/entry.md)
MAX_TERMS = 65_535  # an attribution's per-layer score terms
SIGNATURE_LABEL = b"emshield/entry-signature/v1\x00"
BATCH_SIGNATURE_LABEL = b"emshield/entry-batch-signature/v1\x00"
MAX_SIGNING_BATCH = 65_536  # 2^16: inclusion proofs of at most 16 hashes (spec/entry.md, "Batch signatures")
ISSUER_KEY_ID_LABEL = b"emshield/issuer-key-id/v1\x00"
# policy -> (watermark_commitment present, fingerprint_hash present)
_POLICY_FIELDS = {"watermark": (True, False), "fingerprint": (False, True), "both": (True, True)}
POLICIES = tuple(_POLICY_FIELDS)


class EntryError(ValueError):
    """An entry is malformed, non-canonical, out of range, or its signature does not verify."""


def issuer_key_id(public_key: bytes) -> bytes:
    """SHA-256(ISSUER_KEY_ID_LABEL || raw 32-byte Ed25519 public key): how issuances name their issuer."""
    if len(public_key) != 32:
        raise EntryError(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
    return hashlib.sha256(ISSUER_KEY_ID_LABEL + public_key).digest()


# --- field checks ---------------------------------------------------------------------------------


def _bytes(name: str, value: Any, size: int) -> None:
    if type(value) is not bytes:
        raise EntryError(f"field {name!r} must be a byte string")
    if len(value) != size:
        raise EntryError(f"field {name!r} must be {size} bytes, got {len(value)}")


def _time(name: str, value: Any) -> None:
    if type(value) is not int:
        raise EntryError(f"field {name!r} must be an unsigned integer")
    if not 0 <= value <= MAX_TIME:
        raise EntryError(f"field {name!r} must be in 0..2^63-1, got {value}")


def _uint_field(name: str, value: Any, low: int, high: int, high_text: str) -> None:
    if type(value) is not int:
        raise EntryError(f"field {name!r} must be an unsigned integer")
    if not low <= value <= high:
        raise EntryError(f"field {name!r} must be in {low}..{high_text}, got {value}")


def _name(value: Any) -> None:
    if type(value) is not str:
        raise EntryError("field 'name' must be a text string")
    size = len(value.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= MAX_NAME_BYTES:
        raise EntryError(f"field 'name' must be 1..{MAX_NAME_BYTES} UTF-8 bytes, got {size}")
    if any(not c.isprintable() for c in value):
        raise EntryError("field 'name' must not contain control or unprintable characters")


def _marking_params(value: Any) -> None:
    if type(value) is not bytes:
        raise EntryError("field 'marking_params' must be a byte string")
    if not 1 <= len(value) <= MAX_MARKING_PARAMS_SIZE:
        raise EntryError(f"field 'marking_params' must be 1..{MAX_MARKING_PARAMS_SIZE} bytes, got {len(value)}")
    strict_loads(value, "field 'marking_params'", MAX_MARKING_PARAMS_DEPTH, EntryError)


# --- entry types ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuerRegistration:
    """An issuer's Ed25519 key, its name and the public marking parameters verifiers need.

    Signed by the key being registered (proof of possession): nobody can register a key they do
    not hold, and so nobody can claim another issuer's key under a new name."""

    TYPE: ClassVar[str] = "issuer-registration"

    issuer_public_key: bytes
    name: str
    marking_params: bytes
    registered_at: int

    def __post_init__(self) -> None:
        _bytes("issuer_public_key", self.issuer_public_key, 32)
        _name(self.name)
        _marking_params(self.marking_params)
        _time("registered_at", self.registered_at)

    @property
    def key_id(self) -> bytes:
        return issuer_key_id(self.issuer_public_key)


@dataclass(frozen=True)
class Issuance:
    """One protected core issued to one device. ``watermark_commitment`` is present exactly when the
    policy includes the watermark, ``fingerprint_hash`` exactly when it includes the fingerprint."""

    TYPE: ClassVar[str] = "issuance"

    device_uuid: bytes
    backbone_id: bytes
    watermark_commitment: bytes | None
    fingerprint_hash: bytes | None
    policy: str
    issued_at: int
    issuer_key_id: bytes
    # Secret tier (spec/watermark.md, "Secret tier"): the public per-issuance salt of the detection
    # key and the hiding commitment to it; both present or both absent, only with a watermark policy.
    secret_mark_salt: bytes | None = None
    secret_mark_commitment: bytes | None = None

    def __post_init__(self) -> None:
        # Every decoded issuance passes here, so the usual case is one cheap test per field; the
        # helpers run only to name what is wrong.
        device, backbone, key_id = self.device_uuid, self.backbone_id, self.issuer_key_id
        if not (type(device) is bytes and len(device) == 16):
            _bytes("device_uuid", device, 16)
        if not (type(backbone) is bytes and len(backbone) == 32):
            _bytes("backbone_id", backbone, 32)
        needed = _POLICY_FIELDS.get(self.policy) if type(self.policy) is str else None
        if needed is None:
            raise EntryError(f"field 'policy' must be one of {', '.join(POLICIES)}")
        for name, value, need in (("watermark_commitment", self.watermark_commitment, needed[0]),
                                  ("fingerprint_hash", self.fingerprint_hash, needed[1])):
            if need and value is None:
                raise EntryError(f"field {name!r} is required with policy {self.policy!r}")
            if need:
                if not (type(value) is bytes and len(value) == 32):
                    _bytes(name, value, 32)
            elif value is not None:
                raise EntryError(f"field {name!r} must be absent with policy {self.policy!r}")
        salt, commit = self.secret_mark_salt, self.secret_mark_commitment
        if salt is not None or commit is not None:
            self._check_secret_mark(salt, commit, needed[0])
        issued_at = self.issued_at
        if not (type(issued_at) is int and 0 <= issued_at <= MAX_TIME):
            _time("issued_at", issued_at)
        if not (type(key_id) is bytes and len(key_id) == 32):
            _bytes("issuer_key_id", key_id, 32)

    def _check_secret_mark(self, salt: Any, commit: Any, watermarked: bool) -> None:
        if salt is None or commit is None:
            raise EntryError("fields 'secret_mark_salt' and 'secret_mark_commitment' must be present together")
        if not watermarked:
            raise EntryError(f"the secret-mark fields must be absent with policy {self.policy!r}")
        _bytes("secret_mark_salt", salt, 16)
        _bytes("secret_mark_commitment", commit, 32)

    @property
    def device_uuid_text(self) -> str:
        """The canonical 8-4-4-4-12 form of the device UUID (what ``str(uuid.UUID(bytes=...))``
        gives, without building a UUID object: lower-case hex of the 16 bytes in order)."""
        h = self.device_uuid.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class Attribution:
    """An issuer's public claim that the file with SHA-256 ``suspect_sha256`` carries the secret
    mark of the issuance at leaf ``issuance_index``, proven by disclosure: ``detection_key`` and
    ``detection_nonce`` open that issuance's ``secret_mark_commitment`` (spec/watermark.md, "Secret
    tier"), so anyone can re-derive the mark's directions and recompute the score on the suspect.
    ``score_e6`` and ``terms`` are the statistic the issuer measured (floor(T * 10^6) over ``terms``
    per-layer terms): a claim to recompute, never evidence by itself.

    Signed like an issuance by the key ``issuer_key_id`` names, which need not be the key that
    signed the issuance (the issuer may have rotated it); never batch-signed."""

    TYPE: ClassVar[str] = "attribution"

    issuer_key_id: bytes
    issuance_index: int
    issuance_leaf_hash: bytes
    detection_key: bytes
    detection_nonce: bytes
    suspect_sha256: bytes
    score_e6: int
    terms: int
    attributed_at: int

    def __post_init__(self) -> None:
        _bytes("issuer_key_id", self.issuer_key_id, 32)
        _uint_field("issuance_index", self.issuance_index, 0, MAX_UINT, "2^63-1")
        _bytes("issuance_leaf_hash", self.issuance_leaf_hash, 32)
        _bytes("detection_key", self.detection_key, 32)
        _bytes("detection_nonce", self.detection_nonce, 32)
        _bytes("suspect_sha256", self.suspect_sha256, 32)
        _uint_field("score_e6", self.score_e6, 0, MAX_UINT, "2^63-1")
        _uint_field("terms", self.terms, 1, MAX_TERMS, str(MAX_TERMS))
        _time("attributed_at", self.attributed_at)

    @property
    def score(self) -> float:
        """The claimed presence score T (``score_e6`` / 10^6, for display)."""
        return self.score_e6 / 1e6


Entry = IssuerRegistration | Issuance | Attribution
EntryType = type[IssuerRegistration] | type[Issuance] | type[Attribution]
_TYPES: dict[str, EntryType] = {t.TYPE: t for t in (IssuerRegistration, Issuance, Attribution)}
_FIELD_NAMES = {t: tuple(f.name for f in fields(t)) for t in _TYPES.values()}
_OPTIONAL: dict[type, frozenset[str]] = {
    IssuerRegistration: frozenset(),
    Attribution: frozenset(),  # never batch-signed: a "batch" field is an unknown field
    Issuance: frozenset({"watermark_commitment", "fingerprint_hash", "secret_mark_salt", "secret_mark_commitment",
                         "batch"}),  # "batch": batch-signed form
}
_ALLOWED = {t: frozenset({"v", "type", "sig", *_FIELD_NAMES[t], *_OPTIONAL[t]}) for t in _TYPES.values()}
_REQUIRED = {t: _ALLOWED[t] - _OPTIONAL[t] for t in _TYPES.values()}


def _canonical_order(keys: Iterable[str]) -> tuple[str, ...]:
    """Text keys in deterministic CBOR order (RFC 8949 §4.2.1)."""
    return tuple(sorted(keys, key=text_key_order))


# Every valid key layout of an entry map, as deterministic CBOR orders it -> its type. A decoded
# map's keys are in that order (strict_loads checked the encoding), so one lookup checks them all.
_LAYOUTS = {
    _canonical_order(_REQUIRED[t] | set(chosen)): t
    for t in _TYPES.values()
    for n in range(len(_OPTIONAL[t]) + 1)
    for chosen in itertools.combinations(sorted(_OPTIONAL[t]), n)
}


_KEY_ORDER = {t.TYPE: _canonical_order(_ALLOWED[t]) for t in _TYPES.values()}


def _encode_map(entry: Entry, sig: bytes | None = None, batch: BatchProof | None = None) -> bytes:
    """Deterministic CBOR of the entry map (with "sig" and "batch" when given). The map is built in
    deterministic key order and holds only unsigned integers, text, byte strings and the "batch"
    array (the field checks guarantee it: no floats, no nested maps), for which cbor2's plain encoder
    writes exactly the deterministic bytes, three times faster than its canonical mode."""
    values = entry.__dict__  # the dataclass fields
    m: dict[str, Any] = {}
    for key in _KEY_ORDER[entry.TYPE]:
        if key == "v":
            m[key] = VERSION
        elif key == "type":
            m[key] = entry.TYPE
        elif key == "sig":
            if sig is not None:
                m[key] = sig
        elif key == "batch":
            if batch is not None:
                m[key] = [batch.index, batch.size, list(batch.proof)]
        elif values[key] is not None:  # optional fields are left out, never null
            m[key] = values[key]
    return cbor2.dumps(m)


def signing_bytes(entry: Entry) -> bytes:
    """What the issuer signs: the label, then the canonical CBOR map of the entry without "sig".
    In a batch it is also the data of the entry's leaf in the batch tree (``sign_batch``)."""
    return SIGNATURE_LABEL + _encode_map(entry)


def batch_signing_bytes(size: int, root: bytes) -> bytes:
    """What a batch signature covers: the label, the batch size as uint64 big-endian, the root of
    the RFC 9162 tree over the batch's signing bytes. The size is bound so that a root can never be
    presented as the root of a tree of another size."""
    return BATCH_SIGNATURE_LABEL + size.to_bytes(8, "big") + root


@dataclass(frozen=True)
class BatchProof:
    """Where an entry sits in the batch its signature covers: leaf ``index`` of a tree of ``size``
    leaves, and the RFC 9162 §2.1.3 inclusion proof of that leaf (bottom first)."""

    index: int
    size: int
    proof: tuple[bytes, ...]

    def __post_init__(self) -> None:
        proof = self.proof
        if type(proof) is not tuple or {*map(type, proof)} - {bytes} or {*map(len, proof)} - {32}:
            raise EntryError("batch proof must be a sequence of 32-byte hashes")
        self._check_place()

    def _check_place(self) -> None:
        """The checks of everything but the hashes themselves (``_match_issuance`` cut those out as
        32-byte strings already)."""
        index, size, proof = self.index, self.size, self.proof
        if type(size) is not int or not 1 <= size <= MAX_SIGNING_BATCH:
            raise EntryError(f"batch size must be an integer in 1..{MAX_SIGNING_BATCH}, got {size!r}")
        if type(index) is not int or not 0 <= index < size:
            raise EntryError(f"batch index {index!r} is out of range for batch size {size}")
        want = inclusion_proof_length(index, size)
        if len(proof) != want:
            raise EntryError(f"batch inclusion proof has {len(proof)} hashes; index {index} in a batch of "
                             f"{size} needs exactly {want} (RFC 9162 §2.1.3)")


@dataclass(frozen=True)
class SignedEntry:
    """An entry and its issuer signature: over the entry's signing bytes (``batch`` is None) or over
    the batch message of the tree that ``batch`` proves the entry's leaf is in."""

    entry: Entry
    signature: bytes
    batch: BatchProof | None = None

    def __post_init__(self) -> None:
        sig = self.signature
        if not (type(sig) is bytes and len(sig) == 64):
            _bytes("sig", sig, 64)
        if self.batch is not None:
            if type(self.batch) is not BatchProof:
                raise EntryError("field 'batch' must be a BatchProof")
            if type(self.entry) is not Issuance:
                raise EntryError(f"only issuances are batch-signed; an {self.entry.TYPE} entry carries its own signature")

    def encode(self) -> bytes:
        return encode_entry(self)

    def leaf_hash(self) -> bytes:
        """RFC 9162 leaf hash of the encoded entry (the log's content address for it)."""
        return leaf_hash(self.encode())

    @property
    def signer_public_key(self) -> bytes | None:
        """For a registration, the key that must have signed it; issuances name it by key id only."""
        return self.entry.issuer_public_key if isinstance(self.entry, IssuerRegistration) else None


# "v": 1 and the head of the "sig" item (a 64-byte byte string), the "type": "issuance" item and the
# head of the "batch" item (key, then a 3-item array), as deterministic CBOR writes them.
_VERSION_ITEM = b"\x61v" + bytes([VERSION])
_SIG_ITEM_HEAD = b"\x63sig\x58\x40"
_AFTER_SIG = 1 + len(_VERSION_ITEM) + len(_SIG_ITEM_HEAD) + 64
_ISSUANCE_TYPE_ITEM = b"\x64type\x68issuance"
_BATCH_ITEM_HEAD = b"\x65batch\x83"
# SIGNATURE_LABEL, the head of a map of n items (n < 24: one byte) and "v": 1, for every n.
_SIGNED_PREFIX = [SIGNATURE_LABEL + bytes([0xA0 | n]) + _VERSION_ITEM for n in range(24)]


def _uint_size(n: int) -> int:
    """Bytes of a deterministic CBOR head for the unsigned integer n < 2^32."""
    return 1 if n < 24 else 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5


def _signed_part(data: bytes, items: int, batch: BatchProof | None) -> bytes | None:
    """``signing_bytes`` of a decoded entry, cut from its canonical leaf bytes without re-encoding.

    Deterministic CBOR orders map keys by encoded length first, so "v" (the only 1-character key)
    comes first and "sig" (the only 3-character key) second, then "type" (4) and, in a batch-signed
    issuance, "batch" (5, the only 5-character key). Dropping the "sig" and "batch" items and
    counting that many items less in the map head (one byte: an entry has fewer than 24 fields)
    therefore gives exactly the canonical encoding of the map without them. None if the bytes are
    not laid out so (never for bytes ``decode_entry`` accepted; the caller then encodes)."""
    if not 2 < items < 24 or data[0] != 0xA0 | items or not data.startswith(_VERSION_ITEM + _SIG_ITEM_HEAD, 1):
        return None
    if batch is None:
        return _cut_signed_part(data, items, None)
    start = _AFTER_SIG + len(_ISSUANCE_TYPE_ITEM)
    end = start + len(_BATCH_ITEM_HEAD) + _uint_size(batch.index) + _uint_size(batch.size) + 1 + 34 * len(batch.proof)
    if not data.startswith(_ISSUANCE_TYPE_ITEM, _AFTER_SIG) or not data.startswith(_BATCH_ITEM_HEAD, start):
        return None
    return _cut_signed_part(data, items, end)


def _cut_signed_part(data: bytes, items: int, batch_end: int | None) -> bytes:
    """The cut ``_signed_part`` makes, for leaf bytes of ``items`` items laid out as it requires,
    whose "batch" item (if any) ends at ``batch_end``."""
    if batch_end is None:
        return _SIGNED_PREFIX[items - 1] + data[_AFTER_SIG:]
    return _SIGNED_PREFIX[items - 2] + _ISSUANCE_TYPE_ITEM + data[batch_end:]


# --- fast exact recognizer for canonical issuances ---------------------------------------------


def _head(value: Any, payload: int) -> bytes:
    """The deterministic CBOR head cbor2 writes before the ``payload`` content bytes of ``value``."""
    data = cbor2.dumps(value)
    return data[:len(data) - payload]


def _item(value: Any) -> bytes:
    """A regex matching exactly the deterministic CBOR encoding of ``value``."""
    return re.escape(cbor2.dumps(value))


def _bstr(group: str, size: int) -> bytes:
    """A regex for a byte string of exactly ``size`` bytes (its one canonical head), content captured."""
    return re.escape(_head(bytes(size), size)) + b"(?P<%s>.{%d})" % (group.encode(), size)


# An unsigned integer in its shortest head only (RFC 8949 §4.2.1): the value in the initial byte
# below 24, else 1, 2, 4 or 8 argument bytes holding a value too large for the next shorter form.
_UINT = (rb"(?:[\x00-\x17]|\x18[\x18-\xff]|\x19[\x01-\xff].|\x1a(?:[\x01-\xff].|\x00[\x01-\xff]).."
         rb"|\x1b(?:[\x01-\xff]...|\x00[\x01-\xff]..|\x00\x00[\x01-\xff].|\x00\x00\x00[\x01-\xff])....)")
_MAX_PROOF = (MAX_SIGNING_BATCH - 1).bit_length()  # the longest inclusion proof in a signing batch
_HASH_ITEM = re.escape(_head(bytes(32), 32)) + b".{32}"
_ISSUANCE_VALUES = {  # issuance key -> regex of its value, in the one canonical encoding
    "v": _item(VERSION),
    "sig": _bstr("sig", 64),
    "type": _item(Issuance.TYPE),
    "batch": re.escape(_head([0, 0, []], 3)) + b"(?P<index>" + _UINT + b")(?P<size>" + _UINT + b")(?P<proof>"
             + b"|".join(re.escape(_head([bytes(32)] * n, 34 * n)) + b"(?:%s){%d}" % (_HASH_ITEM, n)
                         for n in range(_MAX_PROOF + 1)) + b")",
    "policy": b"(?P<policy>" + b"|".join(_item(p) for p in POLICIES) + b")",
    "issued_at": b"(?P<issued_at>" + _UINT + b")",
    "backbone_id": _bstr("backbone_id", 32),
    "device_uuid": _bstr("device_uuid", 16),
    "issuer_key_id": _bstr("issuer_key_id", 32),
    "fingerprint_hash": _bstr("fingerprint_hash", 32),
    "watermark_commitment": _bstr("watermark_commitment", 32),
    "secret_mark_salt": _bstr("secret_mark_salt", 16),
    "secret_mark_commitment": _bstr("secret_mark_commitment", 32),
}
# The map head byte, then every key in deterministic order with its value; optional keys may be
# missing (the head byte must then count the items present, checked after the match).
_ISSUANCE_RE = re.compile(b"." + b"".join(
    (b"(?:%s)?" if key in _OPTIONAL[Issuance] else b"%s") % (_item(key) + _ISSUANCE_VALUES[key])
    for key in _KEY_ORDER[Issuance.TYPE]), re.DOTALL)
# Cuts the hashes out of a matched proof array of n hashes: skip the array head, then each hash's head.
_PROOF_HASHES = [struct.Struct("x" + "2x32s" * n) for n in range(_MAX_PROOF + 1)]
_POLICY_OF_ITEM = {cbor2.dumps(p): p for p in POLICIES}
_ISSUANCE_REQUIRED_ITEMS = len(_REQUIRED[Issuance])


def _uint(item: bytes) -> int:
    """The value of an unsigned integer item ``_UINT`` matched."""
    return item[0] if len(item) == 1 else int.from_bytes(item[1:], "big")


def _filled(cls: type[Any], values: dict[str, Any], check: Callable[[Any], None] | None = None) -> Any:
    """An instance of the frozen dataclass ``cls`` holding ``values``, checked by its __post_init__
    (or by ``check``). Filled without the generated __init__ (one object.__setattr__ per field, a
    third of the cost)."""
    obj = object.__new__(cls)
    obj.__dict__.update(values)
    (check or cls.__post_init__)(obj)
    return obj


def _match_issuance(data: bytes) -> SignedEntry | None:
    """The fast path of ``decode_entry`` for the usual leaf, a canonical issuance (any policy, single-
    or batch-signed): one anchored regex over the exact canonical bytes instead of decoding,
    re-encoding and comparing.

    Invariant: for every input it returns exactly what ``_decode_strict`` returns (an equal
    SignedEntry with the same cached signed part), or None, declining; it never accepts what the
    strict path rejects and never raises. It holds because the regex reads the bytes item by item as
    CBOR does, admitting only canonical forms (literal keys in deterministic order, byte strings of
    the exact sizes with their one head, integers in their shortest head, the policy as one of its
    texts, the proof array with the head that counts its hashes, nothing after the map), and the
    objects are then built and checked by the same __post_init__ as on the strict path (for the
    batch proof, all but the hash types and sizes, which cutting them out of the match fixed); any
    EntryError there makes it decline, so the strict path names the problem. Matching is linear in
    the input: every alternative starts with a different byte and every repetition has a fixed count."""
    m = _ISSUANCE_RE.fullmatch(data)
    if m is None:
        return None
    g = m.group
    sig, index, size, proof, policy, issued_at = g("sig"), g("index"), g("size"), g("proof"), g("policy"), g("issued_at")
    fingerprint, watermark = g("fingerprint_hash"), g("watermark_commitment")
    salt, secret_commit = g("secret_mark_salt"), g("secret_mark_commitment")
    items = _ISSUANCE_REQUIRED_ITEMS + (index is not None) + (fingerprint is not None) + (watermark is not None) \
        + (salt is not None) + (secret_commit is not None)
    if data[0] != 0xA0 | items:
        return None
    try:
        entry = _filled(Issuance, {"device_uuid": g("device_uuid"), "backbone_id": g("backbone_id"),
                                   "watermark_commitment": watermark, "fingerprint_hash": fingerprint,
                                   "policy": _POLICY_OF_ITEM[policy], "issued_at": _uint(issued_at),
                                   "issuer_key_id": g("issuer_key_id"), "secret_mark_salt": salt,
                                   "secret_mark_commitment": secret_commit})
        batch = None if index is None else _filled(BatchProof, {
            "index": _uint(index), "size": _uint(size), "proof": _PROOF_HASHES[proof[0] & 0x1F].unpack(proof)},
            BatchProof._check_place)
        signed = _filled(SignedEntry, {"entry": entry, "signature": sig, "batch": batch})
    except EntryError:
        return None
    # The regex fixed the layout _signed_part requires ("v", "sig", "type", then "batch" if any).
    signed.__dict__["_signed_part"] = _cut_signed_part(data, items, None if batch is None else m.end("proof"))
    return signed


def encode_entry(signed: SignedEntry) -> bytes:
    """The log leaf data: canonical CBOR of the entry map with "sig" (and "batch") added."""
    data = _encode_map(signed.entry, signed.signature, signed.batch)
    if len(data) > MAX_ENTRY_SIZE:
        raise EntryError(f"entry is {len(data)} bytes, over the {MAX_ENTRY_SIZE}-byte limit")
    return data


def _decode_batch(value: Any) -> BatchProof:
    if type(value) is not list or len(value) != 3:
        raise EntryError("field 'batch' must be an array [index, size, proof]")
    index, size, proof = value
    if type(index) is not int or type(size) is not int:
        raise EntryError("field 'batch' must start with two unsigned integers (index, size)")
    if type(proof) is not list:
        raise EntryError("field 'batch' must end with an array of 32-byte hashes")
    return BatchProof(index, size, tuple(proof))


def _entry_type(obj: Any) -> EntryType:
    """The entry type of a decoded map, or an EntryError naming the first thing that is wrong with
    its shape (keys, nulls, version, type, unknown and missing fields)."""
    if type(obj) is not dict:
        raise EntryError("entry must be a CBOR map")
    keys = obj.keys()
    if any(type(k) is not str for k in keys):
        raise EntryError("entry map keys must be text strings")
    if None in obj.values():
        nulls = sorted(k for k, v in obj.items() if v is None)
        raise EntryError(f"field(s) {', '.join(nulls)} are null: optional fields are left out, never null")
    if "v" not in obj:
        raise EntryError("entry has no version field 'v'")
    if type(obj["v"]) is not int or obj["v"] != VERSION:
        raise EntryError(f"unsupported entry version {obj['v']!r} (this decoder knows {VERSION})")
    if "type" not in obj:
        raise EntryError("entry has no field 'type'")
    cls = _TYPES.get(obj["type"]) if type(obj["type"]) is str else None
    if cls is None:
        raise EntryError(f"unknown entry type {obj['type']!r}")
    if not keys <= _ALLOWED[cls]:
        raise EntryError(f"unknown field(s) in {cls.TYPE} entry: {', '.join(sorted(keys - _ALLOWED[cls]))}")
    if not _REQUIRED[cls] <= keys:
        raise EntryError(f"missing field(s) in {cls.TYPE} entry: {', '.join(sorted(_REQUIRED[cls] - keys))}")
    return cls


def decode_entry(data: bytes) -> SignedEntry:
    """Strict decode of log leaf data (the signature is not checked here; see verify_entry_signature).
    A canonical issuance is recognised directly (``_match_issuance``); everything else, including
    every invalid input, takes the generic strict path, which names what is wrong."""
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise EntryError("entry must be bytes")
        data = bytes(data)
    if len(data) > MAX_ENTRY_SIZE:
        raise EntryError(f"entry is {len(data)} bytes, over the {MAX_ENTRY_SIZE}-byte limit")
    if not data:
        raise EntryError("entry is empty")
    return _match_issuance(data) or _decode_strict(data)


def _decode_strict(data: bytes) -> SignedEntry:
    """The generic path of ``decode_entry`` for 1..MAX_ENTRY_SIZE bytes: decode, re-encode and
    compare (``strict_loads``), then check the schema."""
    obj = strict_loads(data, "entry", 3, EntryError)
    cls = _LAYOUTS.get(tuple(obj)) if type(obj) is dict else None
    # The usual case in three tests: a known key layout (so text keys, none unknown or missing),
    # its own type, version 1, no nulls. Anything else takes the checks that name the problem.
    if cls is None or obj["type"] != cls.TYPE or obj["v"] != VERSION or type(obj["v"]) is not int \
            or None in obj.values():
        cls = _entry_type(obj)
    entry = _filled(cls, {n: obj.get(n) for n in _FIELD_NAMES[cls]})
    batch = obj.get("batch")
    signed = _filled(SignedEntry, {"entry": entry, "signature": obj["sig"],
                                   "batch": None if batch is None else _decode_batch(batch)})
    # Cache what the signature covers (an attribute, not a field: equality and repr are unchanged;
    # the entry is frozen, so it cannot go stale). verify_entry_signature then needs no re-encode.
    signed.__dict__["_signed_part"] = _signed_part(data, len(obj), signed.batch)
    return signed


def sign_entry(entry: Entry, private_key: Ed25519PrivateKey) -> SignedEntry:
    """Sign with the issuer key; a registration must be signed by the key it registers, an
    issuance or attribution by the key its issuer_key_id names."""
    public = private_key.public_key().public_bytes_raw()
    if isinstance(entry, IssuerRegistration) and public != entry.issuer_public_key:
        raise EntryError("a registration must be signed by the key it registers")
    if not isinstance(entry, IssuerRegistration) and issuer_key_id(public) != entry.issuer_key_id:
        raise EntryError(f"signing key does not match the {entry.TYPE}'s issuer_key_id")
    signed = SignedEntry(entry, private_key.sign(signing_bytes(entry)))
    encode_entry(signed)  # refuse to produce an entry the log would refuse (size)
    return signed


def sign_batch(entries: Sequence[Issuance], private_key: Ed25519PrivateKey) -> list[SignedEntry]:
    """Sign 1..MAX_SIGNING_BATCH distinct issuances with one Ed25519 signature (spec/entry.md,
    "Batch signatures"): the signature covers the RFC 9162 root of the tree whose leaf i is the
    signing bytes of ``entries[i]``, and every returned entry carries it with its inclusion proof, in
    the order given. Even a batch of one carries "batch" (its proof is empty)."""
    if not 1 <= len(entries) <= MAX_SIGNING_BATCH:
        raise EntryError(f"a signing batch holds 1..{MAX_SIGNING_BATCH} issuances, got {len(entries)}")
    public = private_key.public_key().public_bytes_raw()
    key_id = issuer_key_id(public)
    messages = []
    for i, entry in enumerate(entries):
        if type(entry) is not Issuance:
            raise EntryError(f"batch item {i}: only issuances are batch-signed, got {type(entry).__name__}")
        if entry.issuer_key_id != key_id:
            raise EntryError(f"batch item {i}: signing key does not match the issuance's issuer_key_id")
        messages.append(signing_bytes(entry))
    if len(set(messages)) != len(messages):
        raise EntryError("a signing batch must not hold the same issuance twice (it would get two encodings)")
    levels = tree_levels([leaf_hash(message) for message in messages])
    size = len(messages)
    signature = private_key.sign(batch_signing_bytes(size, levels[-1][0]))
    signed_entries = []
    for i, (entry, message, proof) in enumerate(zip(entries, messages, inclusion_paths(levels), strict=True)):
        batch = BatchProof(i, size, proof)
        signed = SignedEntry(entry, signature, batch)
        encode_entry(signed)  # refuse to produce an entry the log would refuse (size)
        object.__setattr__(signed, "_signed_part", message)  # as decode_entry caches it
        signed_entries.append(signed)
    return signed_entries


def verify_entry_signature(signed: SignedEntry, public_key: Ed25519PublicKey,
                           verified: set[tuple[bytes, bytes, bytes]] | None = None) -> None:
    """Raise EntryError unless ``public_key`` is the entry's issuer key and its signature verifies.

    A batch-signed entry is checked by recomputing the batch root from its signing bytes and
    inclusion proof, then verifying the signature over the batch message. ``verified`` (owned by
    the caller, e.g. one set per request) remembers (public key, batch message, signature) triples
    that verified, so the other entries of a batch already seen cost hashing only; only successes
    are added, and single-signed entries neither use nor fill it."""
    _check_signature(signed, public_key, _key_names(public_key), verified)


def _key_names(public_key: Ed25519PublicKey) -> tuple[bytes, bytes]:
    """The raw 32 bytes of an Ed25519 public key and the issuer key id they give."""
    public = public_key.public_bytes_raw()
    return public, issuer_key_id(public)


def _message(signed: SignedEntry) -> bytes:
    """The entry's signing bytes: cached by decode_entry and sign_batch, else encoded."""
    return signed.__dict__.get("_signed_part") or signing_bytes(signed.entry)


def _check_signature(signed: SignedEntry, public_key: Ed25519PublicKey, names: tuple[bytes, bytes],
                     verified: set[tuple[bytes, bytes, bytes]] | None) -> None:
    """``verify_entry_signature`` with the key's ``_key_names`` already computed."""
    public, key_id = names
    entry = signed.entry
    if isinstance(entry, IssuerRegistration) and public != entry.issuer_public_key:
        raise EntryError("a registration is verified with the key it registers")
    if not isinstance(entry, IssuerRegistration) and key_id != entry.issuer_key_id:
        raise EntryError(f"key does not match the {entry.TYPE}'s issuer_key_id")
    message = _message(signed)
    batch = signed.batch
    if batch is None:
        try:
            public_key.verify(signed.signature, message)
        except InvalidSignature as exc:
            raise EntryError("entry signature does not verify") from exc
        return
    try:
        root = root_from_inclusion_proof(leaf_hash(message), batch.index, batch.size, batch.proof)
    except ProofError as exc:
        raise EntryError(f"batch inclusion proof is malformed: {exc}") from exc
    memo = (public, batch_signing_bytes(batch.size, root), signed.signature)
    if verified is not None and memo in verified:
        return
    try:
        public_key.verify(signed.signature, memo[1])
    except InvalidSignature as exc:
        raise EntryError("batch signature does not verify (the entry, its proof or the signature was changed)") from exc
    if verified is not None:
        verified.add(memo)


class EntryPositionError(EntryError):
    """An entry of a list failed its signature check: ``position`` is its index in the list and
    ``reason`` the message of its own check (``verify_entry_signature``)."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"entry {position}: {reason}")
        self.position, self.reason = position, reason


def verify_entry_signatures(entries: Sequence[SignedEntry], public_keys: Sequence[Ed25519PublicKey]) -> None:
    """Check a whole request's entries: ``public_keys[i]`` is the issuer key of ``entries[i]`` (the
    list may mix issuers, single- and batch-signed entries). Accepts and rejects exactly what
    ``verify_entry_signature`` on each entry in list order does: raises EntryPositionError for the
    first entry that fails, with that entry's own message.

    Why it is cheaper: the batch-signed entries of one complete signing batch (same key, signature
    and size; every index 0..size-1 once, how clients send them) are checked together: the batch
    tree is built once from their leaves (about one node hash per entry, where checking each proof
    costs about log2(size)), the one signature is verified over its root, and then every entry's
    proof must equal the path the tree gives (comparisons, no hashing). That is exactly what makes
    each entry's own check pass; if anything differs the group is checked entry by entry, so errors
    are the per-entry ones. The other entries are checked one by one (batch signatures memoised
    for the call); key bytes and issuer key ids are computed once per key object."""
    if len(entries) != len(public_keys):
        raise ValueError(f"{len(entries)} entries but {len(public_keys)} public keys")
    names: dict[int, tuple[bytes, bytes]] = {}  # id(key) -> _key_names(key); public_keys keeps them alive
    for key in public_keys:
        if id(key) not in names:
            names[id(key)] = _key_names(key)
    done = _complete_batches_verified(entries, public_keys, names)
    verified: set[tuple[bytes, bytes, bytes]] = set()
    for i, (signed, key) in enumerate(zip(entries, public_keys, strict=True)):
        if i not in done:
            try:
                _check_signature(signed, key, names[id(key)], verified)
            except EntryError as exc:
                raise EntryPositionError(i, str(exc)) from exc


def _complete_batches_verified(entries: Sequence[SignedEntry], public_keys: Sequence[Ed25519PublicKey],
                               names: dict[int, tuple[bytes, bytes]]) -> set[int]:
    """Positions of the entries that form complete signing batches passing the whole-batch check
    (``_complete_batch_verifies``): entries grouped by (public key, signature, batch size)."""
    groups: dict[tuple[bytes, bytes, int], list[int]] = {}
    for i, signed in enumerate(entries):
        if signed.batch is not None:
            groups.setdefault((names[id(public_keys[i])][0], signed.signature, signed.batch.size), []).append(i)
    done: set[int] = set()
    for (_, signature, size), positions in groups.items():
        key = public_keys[positions[0]]
        if len(positions) == size and _complete_batch_verifies(
                [entries[i] for i in positions], key, names[id(key)][1], signature, size):
            done.update(positions)
    return done


def _complete_batch_verifies(group: list[SignedEntry], public_key: Ed25519PublicKey, key_id: bytes,
                             signature: bytes, size: int) -> bool:
    """True if ``group`` (``size`` batch-signed entries sharing ``signature`` and ``size``) holds
    every index 0..size-1 once, every entry names ``key_id``, the signature verifies over the root
    of the tree of their signing bytes and each entry's proof is its path in that tree (RFC 9162
    §2.1.3.1: the siblings that exist, bottom first). Then every entry passes its own check."""
    if len(group) != size:
        return False
    slots: list[SignedEntry | None] = [None] * size
    for signed in group:
        index = signed.batch.index  # type: ignore[union-attr]
        if not 0 <= index < size or slots[index] is not None:
            return False
        slots[index] = signed
    if any(type(s.entry) is not Issuance or s.entry.issuer_key_id != key_id for s in group):
        return False
    levels = tree_levels([leaf_hash(_message(s)) for s in slots])  # type: ignore[arg-type]
    try:
        public_key.verify(signature, batch_signing_bytes(size, levels[-1][0]))
    except InvalidSignature:
        return False
    return [s.batch.proof for s in slots] == inclusion_paths(levels)  # type: ignore[union-attr]
