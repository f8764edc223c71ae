"""The device bundle: one file that carries an issued core to its device (spec/bundle.md).

A bundle holds the sealed core, the signed issuance entry, the issuer's registration entry, for
both entries a C2SP ``tlog-proof@v1`` (inclusion proof + the log's signed checkpoint), and the
issuance's published fingerprint (so that an air-gapped verifier can compare fingerprints too). With
the log's public key alone, a device or an air-gapped verifier can check everything offline: the
issuer key (from the registration, itself proven in the log), the issuance signature by that key,
and that both entries are in a tree the log signed.

Parsing is strict and bounded (fixed section order, length limits, no trailing bytes, canonical
base64 and decimals in the proofs). Verification trusts nothing in the file except what the pinned
log key and the entries' own signatures vouch for. Whether the sealed core is bound to the same
device, backbone and leaf hash is checked by the device when it installs the bundle
(:mod:`emshield.device.deploy`), because reading a sealed header belongs to :mod:`emshield.tee`, which
verifiers must not import.

Imports only the log's pure core, the CBOR codec, the standard library and ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from emshield.tlog import merkle
from emshield.tlog.checkpoint import (
    MAX_NOTE_SIZE,
    Checkpoint,
    CheckpointError,
    NoteError,
    NoteVerifier,
    split_note,
    verify_checkpoint,
)
from emshield.tlog.entry import (
    MAX_ENTRY_SIZE,
    EntryError,
    Issuance,
    IssuerRegistration,
    SignedEntry,
    decode_entry,
    verify_entry_signature,
)

MAGIC = b"EMSHBNDL"
VERSION = 1
TLOG_PROOF_HEADER = b"c2sp.org/tlog-proof@v1"
MAX_PROOF_HASHES = 63  # an inclusion path in a tree of fewer than 2^63 leaves
MAX_INDEX = (1 << 63) - 1
MAX_EXTRA = 4096
MAX_PROOF_SIZE = MAX_NOTE_SIZE + 8192  # the checkpoint note plus 63 hash lines and the header lines
MAX_SEALED_CORE = (2 << 30) + (16 << 20)  # a 2 GiB core (emshield.core.MAX_CORE_BYTES) plus sealing overhead
MAX_FINGERPRINT_RECORD = 4 << 20  # emshield.marking.fingerprint.MAX_FINGERPRINT_BYTES
# The issuance's fingerprint_hash is SHA-256(label ‖ 0x00 ‖ fingerprint CBOR) (spec/fingerprint.md); the
# bytes are fixed by that spec, so the bundle checks its copy of the side record without importing marking.
FINGERPRINT_HASH_LABEL = b"emshield/fingerprint/v1"
_PREFIX = struct.Struct(">8sH")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
MAX_BUNDLE_SIZE = (_PREFIX.size + 4 * (_U32.size + max(MAX_ENTRY_SIZE, MAX_PROOF_SIZE)) + _U32.size + MAX_FINGERPRINT_RECORD
                   + _U64.size + MAX_SEALED_CORE)
FILE_SUFFIX = ".emshield-bundle"
_DECIMAL = re.compile(rb"0|[1-9][0-9]*")


class BundleError(ValueError):
    """A bundle (or a tlog-proof inside it) is malformed, over a limit, or of an unknown version."""


class BundleVerificationError(BundleError):
    """A well-formed bundle failed a check. ``check`` names which one (spec/bundle.md, "Verification")."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


# --- C2SP tlog-proof@v1 ----------------------------------------------------------------------------


def _b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def _unb64(text: bytes, what: str) -> bytes:
    """Standard padded base64, canonical only (decoding then encoding gives the same text)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw) != text:
        raise BundleError(f"{what} is not canonical base64")
    return raw


@dataclass(frozen=True)
class TlogProof:
    """A c2sp.org/tlog-proof@v1: leaf index, RFC 9162 inclusion path, the log's signed checkpoint
    note (verbatim, cosignatures included) and optional unauthenticated extra data."""

    index: int
    hashes: tuple[bytes, ...]
    checkpoint: bytes
    extra: bytes | None = None

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index <= MAX_INDEX:
            raise BundleError(f"tlog-proof index must be in 0..2^63-1, got {self.index!r}")
        if len(self.hashes) > MAX_PROOF_HASHES:
            raise BundleError(f"tlog-proof has {len(self.hashes)} hashes, over the limit of {MAX_PROOF_HASHES}")
        if any(not isinstance(h, bytes) or len(h) != merkle.HASH_SIZE for h in self.hashes):
            raise BundleError(f"tlog-proof hashes must be {merkle.HASH_SIZE} bytes each")
        if self.extra is not None and not 1 <= len(self.extra) <= MAX_EXTRA:
            raise BundleError(f"tlog-proof extra data must be 1..{MAX_EXTRA} bytes when present")
        try:
            split_note(self.checkpoint)  # a checkpoint note, well formed (signatures are checked later)
        except NoteError as exc:
            raise BundleError(f"tlog-proof checkpoint: {exc}") from exc

    def encode(self) -> bytes:
        lines = [TLOG_PROOF_HEADER]
        if self.extra is not None:
            lines.append(b"extra " + _b64(self.extra))
        lines.append(b"index %d" % self.index)
        lines.extend(_b64(h) for h in self.hashes)
        return b"\n".join(lines) + b"\n\n" + self.checkpoint

    @classmethod
    def parse(cls, data: bytes) -> TlogProof:
        """Strict parse: ``parse(p.encode()) == p`` and no other bytes parse to ``p``."""
        if len(data) > MAX_PROOF_SIZE:
            raise BundleError(f"tlog-proof is {len(data)} bytes, over the {MAX_PROOF_SIZE}-byte limit")
        end = data.find(b"\n\n")
        if end < 0:
            raise BundleError("tlog-proof has no empty line before its checkpoint")
        lines, checkpoint = data[:end].split(b"\n"), data[end + 2:]
        if lines[0] != TLOG_PROOF_HEADER:
            raise BundleError(f"tlog-proof must start with the line {TLOG_PROOF_HEADER.decode()!r}")
        pos, extra = 1, None
        if pos < len(lines) and lines[pos].startswith(b"extra "):
            extra = _unb64(lines[pos][len(b"extra "):], "tlog-proof extra line")
            if not extra:
                raise BundleError("tlog-proof extra line is empty (leave the line out instead)")
            pos += 1
        if pos >= len(lines) or not lines[pos].startswith(b"index "):
            raise BundleError("tlog-proof has no 'index N' line")
        digits = lines[pos][len(b"index "):]
        if not _DECIMAL.fullmatch(digits) or len(digits) > 19:
            raise BundleError("tlog-proof index is not a decimal without leading zeros")
        index = int(digits)
        hashes = []
        for n, line in enumerate(lines[pos + 1:], 1):
            h = _unb64(line, f"tlog-proof hash line {n}")
            if len(h) != merkle.HASH_SIZE:
                raise BundleError(f"tlog-proof hash line {n} is {len(h)} bytes, want {merkle.HASH_SIZE}")
            hashes.append(h)
        return cls(index, tuple(hashes), checkpoint, extra)


def verify_tlog_proof(proof: TlogProof, leaf_hash: bytes, log_verifier: NoteVerifier,
                      origin: str | None = None) -> Checkpoint:
    """C2SP tlog-proof verification, steps 2 and 4: the checkpoint is signed by the log key for
    ``origin`` (default: the key's name), and the path leads from ``leaf_hash`` to its root.
    Witness cosignatures are not required (no witness policy yet). Raises BundleVerificationError."""
    try:
        cp = verify_checkpoint(proof.checkpoint, log_verifier, origin)
    except CheckpointError as exc:
        raise BundleVerificationError("checkpoint", str(exc)) from exc
    if proof.index >= cp.size:
        raise BundleVerificationError("inclusion", f"index {proof.index} is not in a tree of size {cp.size}")
    try:
        merkle.verify_inclusion(leaf_hash, proof.index, cp.size, list(proof.hashes), cp.root_hash)
    except merkle.ProofError as exc:
        raise BundleVerificationError("inclusion", str(exc)) from exc
    return cp


# --- the bundle -------------------------------------------------------------------------------------


def _decode(data: bytes, want: type, section: str) -> SignedEntry:
    try:
        signed = decode_entry(data)
    except EntryError as exc:
        raise BundleError(f"{section}: {exc}") from exc
    if not isinstance(signed.entry, want):
        raise BundleError(f"{section} is of type {signed.entry.TYPE!r}, want {want.TYPE!r}")
    return signed


@dataclass(frozen=True)
class Bundle:
    """The six sections of a bundle, in file order. Entries are the exact log leaf bytes;
    ``fingerprint_record`` is the issuance's published side record (empty iff it has no fingerprint)."""

    registration_entry: bytes
    registration_proof: TlogProof
    issuance_entry: bytes
    issuance_proof: TlogProof
    fingerprint_record: bytes
    sealed_core: bytes

    def __post_init__(self) -> None:
        _decode(self.registration_entry, IssuerRegistration, "registration entry")
        issuance = _decode(self.issuance_entry, Issuance, "issuance entry").entry
        if len(self.fingerprint_record) > MAX_FINGERPRINT_RECORD:
            raise BundleError(f"fingerprint record is over the {MAX_FINGERPRINT_RECORD}-byte limit")
        if (issuance.fingerprint_hash is None) != (not self.fingerprint_record):  # type: ignore[union-attr]
            raise BundleError("the fingerprint record must be present exactly when the issuance has a fingerprint hash")
        if not 1 <= len(self.sealed_core) <= MAX_SEALED_CORE:
            raise BundleError(f"sealed core must be 1..{MAX_SEALED_CORE} bytes, got {len(self.sealed_core)}")
        if self.registration_proof.extra is not None or self.issuance_proof.extra is not None:
            raise BundleError("bundle proofs carry no extra data (the entries are in the bundle)")

    @property
    def registration(self) -> IssuerRegistration:
        return decode_entry(self.registration_entry).entry  # type: ignore[return-value]

    @property
    def issuance(self) -> Issuance:
        return decode_entry(self.issuance_entry).entry  # type: ignore[return-value]

    @property
    def issuance_leaf_hash(self) -> bytes:
        return merkle.leaf_hash(self.issuance_entry)

    def encode(self) -> bytes:
        out = [_PREFIX.pack(MAGIC, VERSION)]
        for section in (self.registration_entry, self.registration_proof.encode(), self.issuance_entry,
                        self.issuance_proof.encode(), self.fingerprint_record):
            out += [_U32.pack(len(section)), section]
        out += [_U64.pack(len(self.sealed_core)), self.sealed_core]
        return b"".join(out)


def parse_bundle(data: bytes | bytearray | memoryview) -> Bundle:
    """Strict decode of bundle bytes (no signature or proof is checked here: see verify_bundle)."""
    data = bytes(data)
    if len(data) > MAX_BUNDLE_SIZE:
        raise BundleError(f"bundle is {len(data)} bytes, over the {MAX_BUNDLE_SIZE}-byte limit")
    if len(data) < _PREFIX.size or data[:8] != MAGIC:
        raise BundleError("not an EMShield bundle (bad magic)")
    _, version = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise BundleError(f"unsupported bundle version {version} (this decoder knows {VERSION})")
    pos = _PREFIX.size
    sections: list[bytes] = []
    for name, width, low, limit in [
        ("registration entry", _U32, 1, MAX_ENTRY_SIZE), ("registration proof", _U32, 1, MAX_PROOF_SIZE),
        ("issuance entry", _U32, 1, MAX_ENTRY_SIZE), ("issuance proof", _U32, 1, MAX_PROOF_SIZE),
        ("fingerprint record", _U32, 0, MAX_FINGERPRINT_RECORD), ("sealed core", _U64, 1, MAX_SEALED_CORE),
    ]:
        if len(data) - pos < width.size:
            raise BundleError(f"bundle ends before the length of its {name}")
        (n,) = width.unpack_from(data, pos)
        pos += width.size
        if not low <= n <= limit:
            raise BundleError(f"{name} length {n} is outside {low}..{limit}")
        if len(data) - pos < n:
            raise BundleError(f"bundle ends inside its {name} ({len(data) - pos} of {n} bytes)")
        sections.append(data[pos: pos + n])
        pos += n
    if pos != len(data):
        raise BundleError(f"{len(data) - pos} trailing bytes after the sealed core")
    reg, reg_proof, iss, iss_proof, fingerprint, sealed = sections
    try:
        reg_p = TlogProof.parse(reg_proof)
    except BundleError as exc:
        raise BundleError(f"registration proof: {exc}") from exc
    try:
        iss_p = TlogProof.parse(iss_proof)
    except BundleError as exc:
        raise BundleError(f"issuance proof: {exc}") from exc
    return Bundle(reg, reg_p, iss, iss_p, fingerprint, sealed)


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signatures and proofs verified against the pinned log key."""

    bundle: Bundle
    registration: IssuerRegistration
    issuance: Issuance
    registration_index: int
    issuance_index: int
    issuance_leaf_hash: bytes
    registration_checkpoint: Checkpoint
    checkpoint: Checkpoint  # the one the issuance proof leads to

    @property
    def device_uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.issuance.device_uuid)

    @property
    def backbone_id(self) -> bytes:
        return self.issuance.backbone_id

    @property
    def sealed_core(self) -> bytes:
        return self.bundle.sealed_core

    @property
    def fingerprint_record(self) -> bytes | None:
        """The published fingerprint (canonical CBOR, spec/fingerprint.md), checked against the
        issuance's fingerprint_hash; None when the issuance has no fingerprint."""
        return self.bundle.fingerprint_record or None


def verify_bundle(bundle: Bundle, log_verifier: NoteVerifier, origin: str | None = None) -> VerifiedBundle:
    """Offline checks, in this order, each failure a BundleVerificationError naming its check:

    ``registration-signature`` (the registration is signed by the key it registers),
    ``issuer-mismatch`` (the issuance names that key), ``issuance-signature``, then for each entry
    ``checkpoint`` (signed by ``log_verifier`` for ``origin``, default the key's name) and
    ``inclusion`` (the entry's leaf hash is in that checkpoint's tree at the proof's index), and
    last ``fingerprint-record`` (the bundled side record hashes to the issuance's fingerprint_hash).
    """
    reg_signed = decode_entry(bundle.registration_entry)
    iss_signed = decode_entry(bundle.issuance_entry)
    reg, iss = reg_signed.entry, iss_signed.entry
    assert isinstance(reg, IssuerRegistration) and isinstance(iss, Issuance)  # Bundle checked the types
    issuer_key = Ed25519PublicKey.from_public_bytes(reg.issuer_public_key)
    try:
        verify_entry_signature(reg_signed, issuer_key)
    except EntryError as exc:
        raise BundleVerificationError("registration-signature", str(exc)) from exc
    if iss.issuer_key_id != reg.key_id:
        raise BundleVerificationError("issuer-mismatch", f"issuance names issuer {iss.issuer_key_id.hex()}, the bundle "
                                      f"registers {reg.key_id.hex()}")
    try:
        verify_entry_signature(iss_signed, issuer_key)
    except EntryError as exc:
        raise BundleVerificationError("issuance-signature", str(exc)) from exc
    reg_cp = _prove("registration", bundle.registration_proof, bundle.registration_entry, log_verifier, origin)
    iss_cp = _prove("issuance", bundle.issuance_proof, bundle.issuance_entry, log_verifier, origin)
    if iss.fingerprint_hash is not None and fingerprint_hash(bundle.fingerprint_record) != iss.fingerprint_hash:
        raise BundleVerificationError("fingerprint-record", "the bundled fingerprint does not match the issuance's "
                                      "fingerprint_hash")
    return VerifiedBundle(bundle, reg, iss, bundle.registration_proof.index, bundle.issuance_proof.index,
                          merkle.leaf_hash(bundle.issuance_entry), reg_cp, iss_cp)


def fingerprint_hash(record: bytes) -> bytes:
    return hashlib.sha256(FINGERPRINT_HASH_LABEL + b"\x00" + record).digest()


def _prove(what: str, proof: TlogProof, entry: bytes, log_verifier: NoteVerifier, origin: str | None) -> Checkpoint:
    try:
        return verify_tlog_proof(proof, merkle.leaf_hash(entry), log_verifier, origin)
    except BundleVerificationError as exc:
        raise BundleVerificationError(exc.check, f"{what} entry: {exc.detail}") from exc


# --- files -------------------------------------------------------------------------------------------


class LogKeyError(ValueError):
    """A log verifier key (or the file that should hold one) is unreadable or malformed."""


MAX_KEY_FILE = 4096


def parse_log_key(value: str) -> NoteVerifier:
    """The log's verifier key, given as the key string itself (``origin+keyid+base64``, as
    ``emshield-log init`` prints it) or as the path of a file holding it on one line."""
    text = value
    if "+" not in value or Path(value).is_file():
        path = Path(value)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_KEY_FILE + 1)
        except OSError as exc:
            raise LogKeyError(f"{value!r} is neither a verifier key nor a readable file ({exc.strerror})") from exc
        if len(raw) > MAX_KEY_FILE:
            raise LogKeyError(f"{path} is larger than {MAX_KEY_FILE} bytes")
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError as exc:
            raise LogKeyError(f"{path} is not an ASCII verifier key") from exc
    try:
        return NoteVerifier.from_verifier_key(text)
    except NoteError as exc:
        raise LogKeyError(f"bad log verifier key: {exc}") from exc



def read_bundle_file(path: str | os.PathLike) -> Bundle:
    """Read and parse a bundle file, refusing oversized files before reading them."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_BUNDLE_SIZE:
                raise BundleError(f"{path}: {size} bytes, over the {MAX_BUNDLE_SIZE}-byte bundle limit")
            data = f.read(MAX_BUNDLE_SIZE + 1)
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc.strerror or exc}") from exc
    return parse_bundle(data)


def write_bundle_file(path: str | os.PathLike, bundle: Bundle, mode: int = 0o644) -> Path:
    """Write atomically (temporary file, fsync, rename), so a reader never sees half a bundle."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bundle.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
