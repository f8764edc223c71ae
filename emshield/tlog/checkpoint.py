"""C2SP signed notes (Ed25519) and tlog-checkpoint bodies, byte-compatible with Go's sumdb/note.

Formats (spec/tlog.md, "Checkpoints"): c2sp.org/signed-note, c2sp.org/tlog-checkpoint and, for
witnesses, the Ed25519 timestamped cosignature of c2sp.org/tlog-cosignature. Key strings are the
ones golang.org/x/mod/sumdb/note reads and writes, so other transparency tooling can verify our
checkpoints and reuse our key files unchanged.

Parsing is strict and bounded: a note larger than MAX_NOTE_SIZE, with more than MAX_SIGNATURES
signature lines, invalid UTF-8, control characters, non-canonical base64, or a signature line
repeated for the same key is malformed. Signatures by keys the caller does not know are ignored;
a signature by a known key that fails to verify rejects the whole note.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from emshield.tlog.merkle import HASH_SIZE

SIG_ED25519 = 0x01  # c2sp.org/signed-note signature type: Ed25519 over the note text
SIG_COSIGNATURE_ED25519 = 0x04  # c2sp.org/tlog-cosignature: timestamped Ed25519 cosignature
MAX_NOTE_SIZE = 256 * 1024  # 16 post-quantum signatures (~6.6 kB of base64 each) fit easily
MAX_SIGNATURES = 100  # the cap golang.org/x/mod/sumdb/note applies
_SIG_PREFIX = "\u2014 "  # em dash, space
_HEX8 = re.compile(r"[0-9a-f]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_PRIVATE_PREFIX = "PRIVATE+KEY+"


class NoteError(ValueError):
    """A signed note is malformed, or no trusted signature on it verifies."""


class BadNoteSignature(NoteError):
    """A known key's signature line does not verify; ``key`` is its ``name+keyid`` (hex)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"invalid signature for key {key}")
        self.key = key


class CheckpointError(ValueError):
    """A checkpoint body is malformed, or its note is not signed by the expected log."""


# --- small strict codecs --------------------------------------------------------------------------


def _b64decode(text: str, what: str) -> bytes:
    """Standard padded base64 (RFC 4648 §4), canonical only: decoding then encoding gives it back."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise NoteError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def is_valid_key_name(name: str) -> bool:
    """Signed-note key names: non-empty, no Unicode spaces, no '+', no control characters."""
    return bool(name) and "+" not in name and not any(c.isspace() or c < " " for c in name)


_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")  # C0 controls but newline


def _check_text_chars(text: str, what: str) -> None:
    found = _CONTROL.search(text)
    if found:
        raise NoteError(f"{what} contains the control character U+{ord(found.group()):04X}")


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4], the signed-note key ID."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _format_vkey(name: str, sig_type: int, public_key: bytes) -> str:
    return f"{name}+{key_id(name, sig_type, public_key).hex()}+{_b64encode(bytes([sig_type]) + public_key)}"


def _parse_vkey(vkey: str, sig_type: int) -> tuple[str, Ed25519PublicKey]:
    """Parse ``name+hex8+base64(type||key)`` for one signature type; every part is checked."""
    name, sep1, rest = vkey.partition("+")
    hash16, sep2, key64 = rest.partition("+")
    if not (sep1 and sep2) or not is_valid_key_name(name):
        raise NoteError("malformed verifier key: want NAME+KEYID+BASE64KEY with a valid name")
    if not _HEX8.fullmatch(hash16):
        raise NoteError("malformed verifier key: the key ID must be 8 lowercase hex digits")
    key = _b64decode(key64, "verifier key")
    if not key or key[0] != sig_type:
        raise NoteError(f"verifier key has algorithm {key[0] if key else None}, want {sig_type}")
    if len(key) != 1 + 32:
        raise NoteError(f"verifier key has {len(key) - 1} key bytes, want 32")
    if key_id(name, sig_type, key[1:]).hex() != hash16:
        raise NoteError("verifier key ID does not match its name and key")
    return name, Ed25519PublicKey.from_public_bytes(key[1:])


# --- signers and verifiers -------------------------------------------------------------------------


class Verifier(Protocol):
    """What open_note needs from a trusted key: its name, 4-byte key ID, and a check."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def verify(self, msg: bytes, sig: bytes) -> bool: ...


class Signer(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def sign(self, msg: bytes) -> bytes: ...


class _Ed25519Verifier:
    """A named Ed25519 public key for one signature type; subclasses say what is signed."""

    SIG_TYPE: int

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        if not is_valid_key_name(name):
            raise NoteError(f"invalid key name {name!r}")
        self._name = name
        self.public_key = public_key
        self._key_id = key_id(name, self.SIG_TYPE, _public_bytes(public_key))

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @classmethod
    def from_verifier_key(cls, vkey: str) -> Self:
        """Strict parse of ``name+hex8+base64(type||key)``; another signature type is an error."""
        return cls(*_parse_vkey(vkey, cls.SIG_TYPE))

    def verifier_key(self) -> str:
        return _format_vkey(self._name, self.SIG_TYPE, _public_bytes(self.public_key))

    def _verify_ed25519(self, sig: bytes, msg: bytes) -> bool:
        try:
            self.public_key.verify(sig, msg)
        except InvalidSignature:
            return False
        return True


class NoteVerifier(_Ed25519Verifier):
    """An Ed25519 (type 0x01) signed-note verifier key: the signature is over the note text."""

    SIG_TYPE = SIG_ED25519

    def verify(self, msg: bytes, sig: bytes) -> bool:
        return self._verify_ed25519(sig, msg)


def _cosigned_message(timestamp: int, text: bytes) -> bytes:
    return b"cosignature/v1\ntime %d\n" % timestamp + text


class CosignatureVerifier(_Ed25519Verifier):
    """A witness key (type 0x04, c2sp.org/tlog-cosignature): ``sig`` is timestamp(u64 BE) || Ed25519."""

    SIG_TYPE = SIG_COSIGNATURE_ED25519

    def verify(self, msg: bytes, sig: bytes) -> bool:
        if len(sig) != 8 + 64 or cosignature_timestamp(sig) >= 1 << 63:
            return False
        return self._verify_ed25519(sig[8:], _cosigned_message(cosignature_timestamp(sig), msg))


def cosignature_timestamp(sig: bytes) -> int:
    """The POSIX time a type 0x04 cosignature states (its first 8 bytes, big-endian)."""
    return struct.unpack(">Q", sig[:8])[0]


class _Ed25519Signer:
    """A named Ed25519 private key; ``verifier`` is the matching public key of the same type."""

    VERIFIER: type[_Ed25519Verifier]

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self.verifier = self.VERIFIER(name, private_key.public_key())  # checks the name
        self._private_key = private_key

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def key_id(self) -> bytes:
        return self.verifier.key_id

    def verifier_key(self) -> str:
        return self.verifier.verifier_key()


class NoteSigner(_Ed25519Signer):
    """An Ed25519 (type 0x01) signed-note signer; its key string is Go's PRIVATE+KEY format."""

    VERIFIER = NoteVerifier
    verifier: NoteVerifier

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_private_key(cls, name: str, private_key: Ed25519PrivateKey) -> NoteSigner:
        return cls(name, private_key)

    @classmethod
    def from_signer_key(cls, skey: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+name+hex8+base64(0x01||seed)``; the key ID must match the key."""
        if not skey.startswith(_PRIVATE_PREFIX):
            raise NoteError("malformed signer key: it must start with PRIVATE+KEY+")
        name, sep1, rest = skey[len(_PRIVATE_PREFIX):].partition("+")
        hash16, sep2, key64 = rest.partition("+")
        if not (sep1 and sep2) or not is_valid_key_name(name) or not _HEX8.fullmatch(hash16):
            raise NoteError("malformed signer key: want PRIVATE+KEY+NAME+KEYID+BASE64KEY")
        key = _b64decode(key64, "signer key")
        if not key or key[0] != SIG_ED25519:
            raise NoteError("signer key has an unknown algorithm")
        if len(key) != 1 + 32:
            raise NoteError(f"signer key has {len(key) - 1} seed bytes, want 32")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(key[1:]))
        if signer.key_id.hex() != hash16:
            raise NoteError("signer key ID does not match its name and key")
        return signer

    def signer_key(self) -> str:
        seed = self._private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_id.hex()}+{_b64encode(bytes([SIG_ED25519]) + seed)}"

    def sign(self, msg: bytes) -> bytes:
        return self._private_key.sign(msg)


class CosignatureSigner(_Ed25519Signer):
    """A witness signing key (type 0x04). ``clock`` gives the POSIX time put in each cosignature."""

    VERIFIER = CosignatureVerifier
    verifier: CosignatureVerifier

    def __init__(self, name: str, private_key: Ed25519PrivateKey, clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, private_key)
        self._clock = clock

    def sign(self, msg: bytes) -> bytes:
        timestamp = int(self._clock())
        return struct.pack(">Q", timestamp) + self._private_key.sign(_cosigned_message(timestamp, msg))


# --- notes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    """One parsed signature line (not yet verified)."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{_SIG_PREFIX}{self.name} {_b64encode(self.key_id + self.signature)}\n"


def _newline_terminated_utf8(data: bytes, what: str, error: type[ValueError]) -> str:
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not valid UTF-8") from exc
    if not s.endswith("\n"):
        raise error(f"{what} must end with a newline")
    return s


def _check_note_text(text: bytes) -> None:
    s = _newline_terminated_utf8(text, "note text", NoteError)
    if s.endswith("\n\n") or s == "\n":
        raise NoteError("note text must not end with an empty line (it would move the signature separator)")
    _check_text_chars(s, "note text")


def split_note(note: bytes) -> tuple[bytes, list[NoteSignature]]:
    """Parse a signed note into its text and signature lines, without verifying anything."""
    if len(note) > MAX_NOTE_SIZE:
        raise NoteError(f"note is {len(note)} bytes, over the {MAX_NOTE_SIZE}-byte limit")
    try:
        s = note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError("note is not valid UTF-8") from exc
    _check_text_chars(s, "note")
    split = s.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = s[: split + 1], s[split + 2:]
    if not block or not block.endswith("\n"):
        raise NoteError("note has no signature lines, or they do not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signatures, over the limit of {MAX_SIGNATURES}")
    sigs: list[NoteSignature] = []
    seen: set[tuple[str, bytes]] = set()
    for n, line in enumerate(lines, 1):
        if not line.startswith(_SIG_PREFIX):
            raise NoteError(f"signature line {n} does not start with an em dash and a space")
        name, sep, b64 = line[len(_SIG_PREFIX):].partition(" ")
        if not sep or not is_valid_key_name(name):
            raise NoteError(f"signature line {n} has no valid key name")
        raw = _b64decode(b64, f"signature line {n}")
        if len(raw) < 5:
            raise NoteError(f"signature line {n} is too short to hold a key ID and a signature")
        sig = NoteSignature(name, raw[:4], raw[4:])
        if (name, sig.key_id) in seen:
            raise NoteError(f"signature line {n} repeats key {name}+{sig.key_id.hex()}")
        seen.add((name, sig.key_id))
        sigs.append(sig)
    return text.encode("utf-8"), sigs


def sign_note(text: bytes, signers: Sequence[Signer], existing: Sequence[NoteSignature] = ()) -> bytes:
    """Sign ``text`` with every signer; ``existing`` signature lines (e.g. the log's signature on a
    checkpoint being cosigned) are kept first, except those replaced by one of ``signers``."""
    _check_note_text(text)
    if not signers and not existing:
        raise NoteError("a note needs at least one signature")
    ids = [(s.name, s.key_id) for s in signers]
    if len(set(ids)) != len(ids):
        raise NoteError("two signers share a key name and key ID")
    kept = [sig for sig in existing if (sig.name, sig.key_id) not in set(ids)]
    new = [NoteSignature(s.name, s.key_id, s.sign(text)) for s in signers]
    note = text + b"\n" + "".join(sig.line() for sig in kept + new).encode("utf-8")
    split_note(note)  # what we emit must parse: names, sizes and limits
    return note


def known_signatures(note: bytes, verifiers: Sequence[Verifier]) -> tuple[bytes, list[tuple[Verifier, NoteSignature]]]:
    """The note text and, in note order, each signature by one of ``verifiers`` with its verifier.

    Signatures by other keys (name and key ID) are ignored; a known key's signature that does not
    verify raises :class:`BadNoteSignature`. Shared by note opening and witness cosignature policies.
    """
    text, sigs = split_note(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    found: list[tuple[Verifier, NoteSignature]] = []
    for sig in sigs:
        v = known.get((sig.name, sig.key_id))
        if v is None:
            continue
        if not v.verify(text, sig.signature):
            raise BadNoteSignature(f"{sig.name}+{sig.key_id.hex()}")
        found.append((v, sig))
    return text, found


def open_note(note: bytes, verifiers: Sequence[Verifier]) -> tuple[bytes, list[Verifier]]:
    """Return the note text and the known verifiers whose signatures verified.

    Signatures by keys not in ``verifiers`` (name and key ID) are ignored. A known key's signature
    that does not verify rejects the note, and so does a note no known key signed.
    """
    seen: set[tuple[str, bytes]] = set()
    for v in verifiers:
        if (v.name, v.key_id) in seen:
            raise NoteError(f"two verifiers share key {v.name}+{v.key_id.hex()}")
        seen.add((v.name, v.key_id))
    text, found = known_signatures(note, verifiers)
    if not found:
        raise NoteError("note has no signature from a known key")
    return text, [v for v, _ in found]


# --- checkpoints ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A tlog-checkpoint body: origin line, decimal tree size, base64 root hash, extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin or any(c < " " for c in self.origin):
            raise CheckpointError("checkpoint origin must be one non-empty line without control characters")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise CheckpointError(f"checkpoint tree size must be a non-negative integer, got {self.size!r}")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"checkpoint root hash must be {HASH_SIZE} bytes")
        for ext in self.extensions:
            if not isinstance(ext, str) or not ext or any(c < " " for c in ext):
                raise CheckpointError("checkpoint extension lines must be non-empty, without control characters")

    def body(self) -> bytes:
        lines = [self.origin, str(self.size), _b64encode(self.root_hash), *self.extensions]
        return ("\n".join(lines) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        """Strict parse of a checkpoint note text; ``parse(cp.body()) == cp`` and nothing else parses."""
        s = _newline_terminated_utf8(body, "checkpoint", CheckpointError)
        lines = s[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("checkpoint needs origin, size and root hash lines")
        if any(not line for line in lines):
            raise CheckpointError("checkpoint lines must not be empty")
        origin, size_s, root_s, *ext = lines
        if not _DECIMAL.fullmatch(size_s):
            raise CheckpointError(f"checkpoint tree size {size_s!r} is not a decimal without leading zeros")
        try:
            root = _b64decode(root_s, "checkpoint root hash")
        except NoteError as exc:
            raise CheckpointError(str(exc)) from exc
        return cls(origin, int(size_s), root, tuple(ext))


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> bytes:
    """The log's signed checkpoint. The key name must be the origin, as tlog-checkpoint recommends,
    so that a verifier key alone says which log a checkpoint belongs to."""
    if signer.name != cp.origin:
        raise CheckpointError(f"log key name {signer.name!r} differs from checkpoint origin {cp.origin!r}")
    return sign_note(cp.body(), [signer])


def verify_checkpoint(note: bytes, verifier: NoteVerifier, origin: str | None = None) -> Checkpoint:
    """Open a checkpoint note signed by ``verifier`` (other signatures are ignored) and check its
    origin: ``origin`` if given, else the verifier's key name."""
    try:
        text, _ = open_note(note, [verifier])
    except NoteError as exc:
        raise CheckpointError(f"checkpoint note rejected: {exc}") from exc
    cp = Checkpoint.parse(text)
    want = verifier.name if origin is None else origin
    if cp.origin != want:
        raise CheckpointError(f"checkpoint origin {cp.origin!r} is not the expected {want!r}")
    return cp


def cosign_checkpoint(note: bytes, log: NoteVerifier, witness: CosignatureSigner) -> bytes:
    """Add a witness cosignature to a checkpoint note the log signed (other lines are kept)."""
    verify_checkpoint(note, log)
    text, sigs = split_note(note)
    return sign_note(text, [witness], existing=sigs)
