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
NEXT_KEY_FILE = "issuer.key.next"  # a rotation's new signing key until it is registered (spec/issue.md §8)
RETIRED_KEY_PREFIX = "issuer.key.retired-"  # + the retired key's id (hex): kept, never overwritten
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
    _write_new(directory / ISSUER_KEY_FILE, _pem(keys.signing_key), 0o600)
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
    key = _load_signing_key(directory / ISSUER_KEY_FILE)
    secret = _read_secret_file(directory / MARKING_SECRET_FILE)
    if len(secret) != MARKING_SECRET_LEN:
        raise IssueError("issuer-keys", f"{directory / MARKING_SECRET_FILE} must hold {MARKING_SECRET_LEN} bytes")
    return IssuerKeys(key, secret)


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(_read_secret_file(path), password=None)
    except (ValueError, TypeError) as exc:
        raise IssueError("issuer-keys", f"{path} is not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IssueError("issuer-keys", f"{path} is not an Ed25519 key")
    return key


def next_signing_key(directory: Path) -> IssuerKeys:
    """The rotation's new signing key with the unchanged marking secret: created once (0600) in
    NEXT_KEY_FILE, or the one an interrupted rotation left there."""
    directory = Path(directory)
    current = load_issuer(directory)
    path = directory / NEXT_KEY_FILE
    if not path.exists():
        _write_new(path, _pem(Ed25519PrivateKey.generate()), 0o600)
    return IssuerKeys(_load_signing_key(path), current.marking_secret)


def retire_current_key(directory: Path) -> tuple[bytes, bytes]:
    """Make NEXT_KEY_FILE the signing key; keep the old one as RETIRED_KEY_PREFIX + its key id.

    Two renames in one directory, each atomic, and the old key is renamed, never deleted or
    overwritten. Returns (old key id, new key id)."""
    directory = Path(directory)
    old, new = load_issuer(directory), next_signing_key(directory)
    retired = directory / f"{RETIRED_KEY_PREFIX}{old.key_id.hex()}"
    if not retired.exists():
        os.link(directory / ISSUER_KEY_FILE, retired)  # the old key stays on disk whatever happens next
    elif _read_secret_file(retired) != _read_secret_file(directory / ISSUER_KEY_FILE):  # else: a resumed rotation
        raise IssueError("exists", f"{retired} holds another key; refusing to overwrite a retired key")
    os.replace(directory / NEXT_KEY_FILE, directory / ISSUER_KEY_FILE)
    public = directory / (ISSUER_PUBLIC_FILE + ".tmp")
    public.unlink(missing_ok=True)
    _write_new(public, (new.public_key.hex() + "\n").encode(), 0o644)
    os.replace(public, directory / ISSUER_PUBLIC_FILE)
    return old.key_id, new.key_id
