"""Witness key files: ``PRIVATE+KEY+<name>+<key id>+base64(0x04 || 32-byte Ed25519 seed)``.

The signed-note private key layout with the tlog-cosignature algorithm byte; the key id is that of
the type 0x04 verifier key (spec/witness.md). Files are created 0600 and never overwritten, and
refused when group- or world-readable (`emshield.keyfile`).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from emshield.keyfile import read_private_text
from emshield.tlog.checkpoint import SIG_COSIGNATURE_ED25519, CosignatureSigner, NoteError

_KEY_PREFIX = "PRIVATE+KEY+"
_HEX8 = re.compile(r"[0-9a-f]{8}")


class WitnessKeyError(ValueError):
    """A witness key file is missing, too open, or malformed."""


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
