"""Log entries: signed, versioned, deterministic CBOR maps (RFC 8949 §4.2.1; schema spec/entry.cddl).

The encoded signed entry is the log leaf data, so its bytes must be unique: the decoder accepts
only the one canonical encoding (it re-encodes what it decoded and compares), and rejects unknown
or missing fields, wrong types, out-of-range values, trailing bytes and oversized input with an
EntryError that says what was wrong. Every entry is signed with Ed25519 by the issuer over
``SIGNATURE_LABEL || canonical CBOR of the entry without "sig"`` (spec/entry.md).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from emshield.cbor import canonical, strict_loads
from emshield.tlog.merkle import leaf_hash

VERSION = 1
MAX_ENTRY_SIZE = 65_535  # fits the uint16 length prefix of C2SP tlog-tiles entry bundles
MAX_MARKING_PARAMS_SIZE = 60 * 1024
MAX_NAME_BYTES = 128
MAX_MARKING_PARAMS_DEPTH = 16
MAX_TIME = (1 << 63) - 1
SIGNATURE_LABEL = b"emshield/entry-signature/v1\x00"
ISSUER_KEY_ID_LABEL = b"emshield/issuer-key-id/v1\x00"
POLICIES = ("watermark", "fingerprint", "both")


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

    def __post_init__(self) -> None:
        _bytes("device_uuid", self.device_uuid, 16)
        _bytes("backbone_id", self.backbone_id, 32)
        if self.policy not in POLICIES or type(self.policy) is not str:
            raise EntryError(f"field 'policy' must be one of {', '.join(POLICIES)}")
        for name, needed in [("watermark_commitment", self.policy in ("watermark", "both")),
                             ("fingerprint_hash", self.policy in ("fingerprint", "both"))]:
            value = getattr(self, name)
            if needed and value is None:
                raise EntryError(f"field {name!r} is required with policy {self.policy!r}")
            if needed:
                _bytes(name, value, 32)
            elif value is not None:
                raise EntryError(f"field {name!r} must be absent with policy {self.policy!r}")
        _time("issued_at", self.issued_at)
        _bytes("issuer_key_id", self.issuer_key_id, 32)

    @property
    def device_uuid_text(self) -> str:
        """The canonical 8-4-4-4-12 form of the device UUID."""
        return str(uuid.UUID(bytes=self.device_uuid))


Entry = IssuerRegistration | Issuance
_TYPES: dict[str, type[IssuerRegistration] | type[Issuance]] = {t.TYPE: t for t in (IssuerRegistration, Issuance)}
_FIELD_NAMES = {t: tuple(f.name for f in fields(t)) for t in _TYPES.values()}


def _to_map(entry: Entry) -> dict[str, Any]:
    m: dict[str, Any] = {"v": VERSION, "type": entry.TYPE}
    for f in fields(entry):
        value = getattr(entry, f.name)
        if value is not None:  # optional fields are left out, never null
            m[f.name] = value
    return m


def signing_bytes(entry: Entry) -> bytes:
    """What the issuer signs: the label, then the canonical CBOR map of the entry without "sig"."""
    return SIGNATURE_LABEL + canonical(_to_map(entry))


@dataclass(frozen=True)
class SignedEntry:
    entry: Entry
    signature: bytes

    def __post_init__(self) -> None:
        _bytes("sig", self.signature, 64)

    def encode(self) -> bytes:
        return encode_entry(self)

    def leaf_hash(self) -> bytes:
        """RFC 9162 leaf hash of the encoded entry (the log's content address for it)."""
        return leaf_hash(self.encode())

    @property
    def signer_public_key(self) -> bytes | None:
        """For a registration, the key that must have signed it; issuances name it by key id only."""
        return self.entry.issuer_public_key if isinstance(self.entry, IssuerRegistration) else None


# "v": 1 and the head of the "sig" item (a 64-byte byte string), as deterministic CBOR writes them.
_VERSION_ITEM = b"\x61v" + bytes([VERSION])
_SIG_ITEM_HEAD = b"\x63sig\x58\x40"


def _signed_part(data: bytes, items: int, signature: bytes) -> bytes | None:
    """``signing_bytes`` of a decoded entry, cut from its canonical leaf bytes without re-encoding.

    Deterministic CBOR orders map keys by encoded length first, so "v" (the only 1-character key)
    comes first and "sig" (the only 3-character key) second; dropping the "sig" item and counting
    one item less in the map head (one byte: an entry has fewer than 24 fields) therefore gives
    exactly the canonical encoding of the map without "sig". None if the bytes are not laid out
    so (never for bytes ``decode_entry`` accepted; the caller then encodes)."""
    head = bytes([0xA0 | items]) + _VERSION_ITEM + _SIG_ITEM_HEAD + signature
    if items >= 24 or not data.startswith(head):
        return None
    return SIGNATURE_LABEL + bytes([0xA0 | (items - 1)]) + _VERSION_ITEM + data[len(head):]


def encode_entry(signed: SignedEntry) -> bytes:
    """The log leaf data: canonical CBOR of the entry map with "sig" added."""
    data = canonical({**_to_map(signed.entry), "sig": signed.signature})
    if len(data) > MAX_ENTRY_SIZE:
        raise EntryError(f"entry is {len(data)} bytes, over the {MAX_ENTRY_SIZE}-byte limit")
    return data


def decode_entry(data: bytes) -> SignedEntry:
    """Strict decode of log leaf data (the signature is not checked here; see verify_entry_signature)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EntryError("entry must be bytes")
    data = bytes(data)
    if len(data) > MAX_ENTRY_SIZE:
        raise EntryError(f"entry is {len(data)} bytes, over the {MAX_ENTRY_SIZE}-byte limit")
    if not data:
        raise EntryError("entry is empty")
    obj = strict_loads(data, "entry", 2, EntryError)
    if not isinstance(obj, dict):
        raise EntryError("entry must be a CBOR map")
    if any(type(k) is not str for k in obj):
        raise EntryError("entry map keys must be text strings")
    nulls = sorted(k for k, v in obj.items() if v is None)
    if nulls:
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
    names = _FIELD_NAMES[cls]
    optional = {"watermark_commitment", "fingerprint_hash"} if cls is Issuance else set()
    allowed = {"v", "type", "sig", *names}
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise EntryError(f"unknown field(s) in {cls.TYPE} entry: {', '.join(unknown)}")
    missing = sorted(allowed - optional - set(obj))
    if missing:
        raise EntryError(f"missing field(s) in {cls.TYPE} entry: {', '.join(missing)}")
    entry = cls(**{n: obj.get(n) for n in names})  # field checks run in __post_init__
    signed = SignedEntry(entry, obj["sig"])
    # Cache what the signature covers (an attribute, not a field: equality and repr are unchanged;
    # the entry is frozen, so it cannot go stale). verify_entry_signature then needs no re-encode.
    object.__setattr__(signed, "_signed_part", _signed_part(data, len(obj), signed.signature))
    return signed


def sign_entry(entry: Entry, private_key: Ed25519PrivateKey) -> SignedEntry:
    """Sign with the issuer key; a registration must be signed by the key it registers, an
    issuance by the key its issuer_key_id names."""
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    if isinstance(entry, IssuerRegistration) and public != entry.issuer_public_key:
        raise EntryError("a registration must be signed by the key it registers")
    if isinstance(entry, Issuance) and issuer_key_id(public) != entry.issuer_key_id:
        raise EntryError("signing key does not match the issuance's issuer_key_id")
    signed = SignedEntry(entry, private_key.sign(signing_bytes(entry)))
    encode_entry(signed)  # refuse to produce an entry the log would refuse (size)
    return signed


def verify_entry_signature(signed: SignedEntry, public_key: Ed25519PublicKey) -> None:
    """Raise EntryError unless ``public_key`` is the entry's issuer key and its signature verifies."""
    public = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    entry = signed.entry
    if isinstance(entry, IssuerRegistration) and public != entry.issuer_public_key:
        raise EntryError("a registration is verified with the key it registers")
    if isinstance(entry, Issuance) and issuer_key_id(public) != entry.issuer_key_id:
        raise EntryError("key does not match the issuance's issuer_key_id")
    message = signed.__dict__.get("_signed_part") or signing_bytes(entry)
    try:
        public_key.verify(signed.signature, message)
    except InvalidSignature as exc:
        raise EntryError("entry signature does not verify") from exc
