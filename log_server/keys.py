"""The log's secrets: its checkpoint signing key (a 0600 file) and the operator credential.

The signing key lives in a file beside the database, not in it, so copies of the database
(backups, replicas, a PostgreSQL dump) never carry the key. The operator credential is a random
bearer token; the store keeps only its domain-separated SHA-256, so reading the database does not
reveal it. A token has at least 128 bits of entropy, so one fast hash is enough (no password KDF).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from emshield.keyfile import read_private_text
from emshield.tlog.checkpoint import NoteSigner

TOKEN_ENV = "EMSHIELD_LOG_OPERATOR_TOKEN"
TOKEN_LABEL = b"emshield/log-operator-token/v1"
MIN_TOKEN_CHARS = 32
TOKEN_META_KEY = "operator_token_sha256"


class KeyFileError(RuntimeError):
    """The signing key file is missing, unreadable, too open, or not a signer key."""


def default_key_path(db_path: str | Path) -> Path:
    p = Path(db_path)
    return p.with_name(p.name + ".signer-key")


def write_signer_key(path: Path, signer: NoteSigner) -> None:
    """Create the key file with mode 0600 (O_EXCL: never overwrite an existing key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(signer.signer_key() + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_signer_key(path: Path) -> NoteSigner:
    try:
        return NoteSigner.from_signer_key(read_private_text(path, "signing key file", KeyFileError))
    except (UnicodeDecodeError, ValueError) as exc:
        raise KeyFileError(f"{path} does not hold a signed-note signer key: {exc}") from exc


def new_operator_token() -> str:
    """A fresh 256-bit token, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def check_token_strength(token: str) -> None:
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError(f"an operator token must be at least {MIN_TOKEN_CHARS} printable ASCII characters"
                         " without spaces")


def token_digest(token: str) -> bytes:
    return hashlib.sha256(TOKEN_LABEL + token.encode("utf-8")).digest()


def token_matches(presented: str, stored_digest: bytes) -> bool:
    """Constant-time comparison of the presented token's digest with the stored one."""
    return hmac.compare_digest(token_digest(presented), stored_digest)
