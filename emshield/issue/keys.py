"""The issuer's secrets: its Ed25519 signing key and marking secret, two 0600 files in the issuer
directory (spec/issue.md §1), created once and never overwritten."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from emshield.tlog.entry import issuer_key_id

from .errors import IssueError

ISSUER_KEY_FILE = "issuer.key"  # PEM PKCS#8 Ed25519 private key, 0600
MARKING_SECRET_FILE = "marking.secret"  # 32 random bytes, 0600 (the file `emshield mark --secret-file` reads)
ISSUER_PUBLIC_FILE = "issuer.pub"  # hex of the raw Ed25519 public key
MARKING_SECRET_LEN = 32
MAX_KEY_FILE = 4096


@dataclass(frozen=True)
class IssuerKeys:
    signing_key: Ed25519PrivateKey
    marking_secret: bytes

    @property
    def public_key(self) -> bytes:
        return self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> bytes:
        return issuer_key_id(self.public_key)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def init_issuer(directory: Path) -> IssuerKeys:
    """Create the issuer's Ed25519 signing key and marking secret (0600, never overwritten)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = [n for n in (ISSUER_KEY_FILE, MARKING_SECRET_FILE) if (directory / n).exists()]
    if existing:
        raise IssueError("exists", f"{directory} already holds {', '.join(existing)}; refusing to overwrite issuer keys")
    keys = IssuerKeys(Ed25519PrivateKey.generate(), os.urandom(MARKING_SECRET_LEN))
    pem = keys.signing_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    _write_new(directory / ISSUER_KEY_FILE, pem, 0o600)
    _write_new(directory / MARKING_SECRET_FILE, keys.marking_secret, 0o600)
    _write_new(directory / ISSUER_PUBLIC_FILE, (keys.public_key.hex() + "\n").encode(), 0o644)
    return keys


def _read_secret_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise IssueError("issuer-keys", f"cannot open {path}: {exc.strerror} (run `emshield issuer init`)") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077 or st.st_uid != os.geteuid():
            raise IssueError("issuer-keys", f"{path} must be a regular file of this user with mode 0600")
        data = f.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise IssueError("issuer-keys", f"{path} is larger than {MAX_KEY_FILE} bytes")
    return data


def load_issuer(directory: Path) -> IssuerKeys:
    directory = Path(directory)
    pem = _read_secret_file(directory / ISSUER_KEY_FILE)
    secret = _read_secret_file(directory / MARKING_SECRET_FILE)
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise IssueError("issuer-keys", f"{directory / ISSUER_KEY_FILE} is not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IssueError("issuer-keys", f"{directory / ISSUER_KEY_FILE} is not an Ed25519 key")
    if len(secret) != MARKING_SECRET_LEN:
        raise IssueError("issuer-keys", f"{directory / MARKING_SECRET_FILE} must hold {MARKING_SECRET_LEN} bytes")
    return IssuerKeys(key, secret)
