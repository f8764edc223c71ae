"""Sealed-blob header (spec/sealed.md §Header): fixed layout, strict decoding, suite table.

Pure functions over bytes; the streaming crypto lives in :mod:`emshield.tee.seal`.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.hazmat.primitives import hpke

from emshield.tee.errors import (
    MalformedBlobError,
    TruncatedBlobError,
    UnsupportedSuiteError,
    UnsupportedVersionError,
)

MAGIC = b"EMSHSEAL"
VERSION = 1
TAG_LEN = 16
KEY_LEN = 32

MIN_CHUNK = 16
MAX_CHUNK = 64 << 20
DEFAULT_CHUNK = 1 << 20
MAX_PLAINTEXT = 1 << 40

CONTENT_OPAQUE = 0
CONTENT_CORE = 1
CONTENT_TYPES = {CONTENT_OPAQUE: "opaque", CONTENT_CORE: "emshield-core-safetensors-v1"}

LABEL_HEADER = b"emshield/sealed-header/v1"
LABEL_WRAP = b"emshield/sealed-key/v1"
LABEL_PAYLOAD_KEY = b"emshield/sealed-payload-key/v1"
LABEL_CHUNK = b"emshield/sealed-chunk/v1"

# magic, version, kem, kdf, aead, content type, chunk size, plaintext length, uuid, backbone, leaf, wrapped len
_FIXED = struct.Struct(">8sHHHHHIQ16s32s32sH")
FIXED_LEN = _FIXED.size


@dataclass(frozen=True)
class Suite:
    """An HPKE suite by its RFC 9180 / IANA code points."""

    name: str
    kem_id: int
    kdf_id: int
    aead_id: int

    @property
    def hpke(self) -> hpke.Suite:
        return hpke.Suite(_KEMS[self.kem_id], hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

    @property
    def wrapped_len(self) -> int:
        """HPKE single-shot output for a 32-byte data key: enc ‖ ciphertext ‖ tag."""
        return _KEMS[self.kem_id].enc_length() + KEY_LEN + TAG_LEN


_KEMS = {0x0020: hpke.KEM.X25519, 0x647A: hpke.KEM.MLKEM768_X25519}
SUITES = {
    "x25519": Suite("x25519", 0x0020, 0x0001, 0x0002),
    "mlkem768-x25519": Suite("mlkem768-x25519", 0x647A, 0x0001, 0x0002),
}
DEFAULT_SUITE = "x25519"


def suite_by_ids(kem_id: int, kdf_id: int, aead_id: int) -> Suite:
    for s in SUITES.values():
        if (s.kem_id, s.kdf_id, s.aead_id) == (kem_id, kdf_id, aead_id):
            return s
    raise UnsupportedSuiteError(
        f"unsupported HPKE suite kem=0x{kem_id:04x} kdf=0x{kdf_id:04x} aead=0x{aead_id:04x}; "
        f"this build offers {', '.join(SUITES)}")


@dataclass(frozen=True)
class Binding:
    """What a blob is bound to: the device, the public backbone and the issuance (log leaf hash)."""

    device_uuid: uuid.UUID
    backbone_id: bytes
    leaf_hash: bytes

    def __post_init__(self) -> None:
        if len(self.backbone_id) != 32 or len(self.leaf_hash) != 32:
            raise ValueError("backbone id and leaf hash must be 32 bytes each")


@dataclass(frozen=True)
class Header:
    suite: Suite
    content_type: int
    chunk_size: int
    plaintext_length: int
    binding: Binding
    wrapped_key: bytes

    def __post_init__(self) -> None:
        if self.content_type not in CONTENT_TYPES:
            raise MalformedBlobError(f"unknown content type {self.content_type}")
        if not MIN_CHUNK <= self.chunk_size <= MAX_CHUNK:
            raise MalformedBlobError(f"chunk size {self.chunk_size} outside [{MIN_CHUNK}, {MAX_CHUNK}]")
        if not 0 <= self.plaintext_length <= MAX_PLAINTEXT:
            raise MalformedBlobError(f"plaintext length {self.plaintext_length} exceeds {MAX_PLAINTEXT}")
        if len(self.wrapped_key) not in (0, self.suite.wrapped_len):
            raise MalformedBlobError(
                f"wrapped key is {len(self.wrapped_key)} bytes; suite {self.suite.name} needs {self.suite.wrapped_len}")

    def fixed_bytes(self) -> bytes:
        """Header up to and including the wrapped-key length: the HPKE `info` binds these bytes."""
        b = self.binding
        return _FIXED.pack(MAGIC, VERSION, self.suite.kem_id, self.suite.kdf_id, self.suite.aead_id,
                           self.content_type, self.chunk_size, self.plaintext_length, b.device_uuid.bytes,
                           b.backbone_id, b.leaf_hash, self.suite.wrapped_len)

    def encode(self) -> bytes:
        if len(self.wrapped_key) != self.suite.wrapped_len:
            raise ValueError("header has no wrapped key yet")
        return self.fixed_bytes() + self.wrapped_key

    def hash(self) -> bytes:
        """SHA-256 over the label and the whole encoded header; every chunk's AAD and the payload key
        commit to it."""
        return hashlib.sha256(LABEL_HEADER + self.encode()).digest()

    @property
    def chunk_count(self) -> int:
        """A zero-length plaintext still has one (empty, final) chunk, so truncation to nothing fails."""
        return max(1, -(-self.plaintext_length // self.chunk_size))

    @property
    def blob_length(self) -> int:
        return FIXED_LEN + self.suite.wrapped_len + self.plaintext_length + TAG_LEN * self.chunk_count

    @property
    def content_name(self) -> str:
        return CONTENT_TYPES[self.content_type]


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise TruncatedBlobError(f"blob ends inside the {what} ({len(data)} of {n} bytes)")
    return data


def read_header(src: BinaryIO) -> Header:
    """Decode and range-check a header from the start of a blob stream; leaves src at the first chunk."""
    fixed = src.read(FIXED_LEN)
    if len(fixed) < len(MAGIC) or fixed[: len(MAGIC)] != MAGIC:
        raise MalformedBlobError("not an EMShield sealed blob (bad magic)")
    if len(fixed) >= 10 and struct.unpack(">H", fixed[8:10])[0] != VERSION:
        raise UnsupportedVersionError(
            f"sealed blob version {struct.unpack('>H', fixed[8:10])[0]} is not supported (this build reads {VERSION})")
    if len(fixed) != FIXED_LEN:
        raise TruncatedBlobError(f"blob ends inside the header ({len(fixed)} of {FIXED_LEN} bytes)")
    (_, _, kem, kdf, aead, content, chunk, length, dev, backbone, leaf, wlen) = _FIXED.unpack(fixed)
    suite = suite_by_ids(kem, kdf, aead)
    if wlen != suite.wrapped_len:
        raise MalformedBlobError(f"wrapped key length {wlen} does not match suite {suite.name}")
    wrapped = _read_exact(src, wlen, "wrapped data key")
    return Header(suite, content, chunk, length, Binding(uuid.UUID(bytes=dev), backbone, leaf), wrapped)
