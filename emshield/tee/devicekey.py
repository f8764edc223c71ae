"""Device key material: one 32-byte device secret, two HPKE key pairs derived from it.

A key provider stores only the 32-byte secret (small enough for a TPM sealed object, a keyring
payload or a key file). From it we derive, with domain-separated HKDF-SHA256 (spec/sealed.md §Device
keys), an X25519 key pair for DHKEM(X25519) and an X-Wing seed for the hybrid ML-KEM-768+X25519 KEM,
so a device can open blobs of either suite and the two KEMs never share a private key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from emshield.tee.errors import ProviderError

SECRET_LEN = 32
X25519_PUBLIC_LEN = 32
XWING_PUBLIC_LEN = 1184 + 32  # ML-KEM-768 encapsulation key ‖ X25519 public key (X-Wing order)

LABEL_X25519 = b"emshield/device-key/x25519/v1"
LABEL_XWING = b"emshield/device-key/xwing-seed/v1"


def _hkdf(secret: bytes | bytearray, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(bytes(secret))


def _check_secret(secret: bytes | bytearray) -> None:
    if len(secret) != SECRET_LEN:
        raise ValueError(f"device secret must be {SECRET_LEN} bytes, got {len(secret)}")


def x25519_private_key(secret: bytes | bytearray) -> x25519.X25519PrivateKey:
    """DHKEM(X25519) private key of a device secret."""
    _check_secret(secret)
    return x25519.X25519PrivateKey.from_private_bytes(_hkdf(secret, LABEL_X25519))


def _xwing_components(secret: bytes | bytearray) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    """The X-Wing seed expanded with SHAKE256 to ML-KEM seed (d‖z, 64 bytes) ‖ X25519 scalar
    (32 bytes), as draft-connolly-cfrg-xwing-kem does."""
    _check_secret(secret)
    expanded = hashlib.shake_256(_hkdf(secret, LABEL_XWING)).digest(96)
    return (mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
            x25519.X25519PrivateKey.from_private_bytes(expanded[64:]))


def xwing_private_key(secret: bytes | bytearray) -> hpke.MLKEM768X25519PrivateKey:
    """X-Wing (ML-KEM-768+X25519) private key of a device secret."""
    return hpke.MLKEM768X25519PrivateKey(*_xwing_components(secret))


@dataclass(frozen=True)
class DevicePublicKey:
    """What an issuer seals to: the device's X25519 and X-Wing public keys (raw bytes)."""

    x25519: bytes
    xwing: bytes

    def __post_init__(self) -> None:
        if len(self.x25519) != X25519_PUBLIC_LEN:
            raise ValueError(f"X25519 public key must be {X25519_PUBLIC_LEN} bytes")
        if len(self.xwing) != XWING_PUBLIC_LEN:
            raise ValueError(f"X-Wing public key must be {XWING_PUBLIC_LEN} bytes")

    @classmethod
    def from_secret(cls, secret: bytes | bytearray) -> DevicePublicKey:
        m_key, x_key = _xwing_components(secret)
        return cls(
            x25519=x25519_private_key(secret).public_key().public_bytes_raw(),
            xwing=m_key.public_key().public_bytes_raw() + x_key.public_key().public_bytes_raw(),
        )

    def x25519_public_key(self) -> x25519.X25519PublicKey:
        return x25519.X25519PublicKey.from_public_bytes(self.x25519)

    def xwing_public_key(self) -> hpke.MLKEM768X25519PublicKey:
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(self.xwing[:1184]),
            x25519.X25519PublicKey.from_public_bytes(self.xwing[1184:]),
        )


def new_secret() -> bytearray:
    """A fresh device secret from the OS CSPRNG, in a bytearray so it can be wiped."""
    return bytearray(os.urandom(SECRET_LEN))


def wipe(buf: bytearray) -> None:
    """Overwrite a secret held in a bytearray (best effort: earlier immutable copies may exist)."""
    buf[:] = bytes(len(buf))


@contextmanager
def held_secret(secret: bytearray, source: str) -> Iterator[bytearray]:
    """Yield a device secret a provider just read, refusing a wrong length; wipe it afterwards."""
    try:
        if len(secret) != SECRET_LEN:
            raise ProviderError(f"{source} holds {len(secret)} bytes, not a {SECRET_LEN}-byte device secret")
        yield secret
    finally:
        wipe(secret)
