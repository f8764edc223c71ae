"""Issuances that carry the secret-tier mark fields, and attribution entries that open them
(spec/entry.md, "Attribution"), signed with test keys: what `emshield trace --disclose` appends."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from emshield.marking.secret import DetectionKey, detection_key
from emshield.tlog import entry as E
from emshield.tlog.merkle import leaf_hash

from .logs import public_bytes

ISSUER_SECRET = hashlib.sha256(b"emshield-test/issuer-marking-secret").digest()
BACKBONE_TEXT = "tiny-llama/test-backbone"


@dataclass(frozen=True)
class SecretIssuance:
    """A signed issuance with the secret-mark fields, and the detection key its commitment hides."""

    leaf: bytes
    key: DetectionKey

    @property
    def leaf_hash(self) -> bytes:
        return leaf_hash(self.leaf)


def secret_issuance(key: Ed25519PrivateKey, n: int) -> SecretIssuance:
    """Issuance ``n`` (device UUID n, policy watermark) with a secret mark whose detection key comes
    from the fixed test secret, as emshield.issue derives it."""
    device = uuid.UUID(int=0x5EC0_0000 + n).bytes
    salt = hashlib.sha256(b"salt" + n.to_bytes(8, "big")).digest()[:16]
    dk = detection_key(ISSUER_SECRET, BACKBONE_TEXT, device, salt)
    entry = E.Issuance(device, hashlib.sha256(BACKBONE_TEXT.encode()).digest(),
                       hashlib.sha256(b"wm" + n.to_bytes(8, "big")).digest(), None, "watermark", 1_700_000_000 + n,
                       E.issuer_key_id(public_bytes(key)), salt, dk.commitment)
    return SecretIssuance(E.sign_entry(entry, key).encode(), dk)


def attribution(key: Ed25519PrivateKey, index: int, issuance_leaf_hash: bytes, dk: DetectionKey,
                suspect: bytes = b"suspect model file", *, score_e6: int = 9_125_000, terms: int = 512,
                detection_key_bytes: bytes | None = None, nonce: bytes | None = None) -> bytes:
    """A signed attribution of the issuance at ``index`` (leaf hash ``issuance_leaf_hash``) to the
    file ``suspect``, disclosing ``dk`` (or the key / nonce given instead)."""
    entry = E.Attribution(E.issuer_key_id(public_bytes(key)), index, issuance_leaf_hash,
                          dk.key if detection_key_bytes is None else detection_key_bytes,
                          dk.nonce if nonce is None else nonce, hashlib.sha256(suspect).digest(), score_e6, terms,
                          1_790_000_000)
    return E.sign_entry(entry, key).encode()
