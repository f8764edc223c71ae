"""Regenerate the EMShield tlog vectors: `python spec/vectors/tlog/make_vectors.py`.

notes.json: published signed-note vectors from other implementations (copied data, origin
cited in each record) and our checkpoint/cosignature notes from fixed seeds. Ed25519 (RFC 8032)
is deterministic, so the same seed and text always give the same bytes; the tests re-sign and
compare byte for byte, and verify the published notes with our verifier.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from emshield.tlog.checkpoint import (
    Checkpoint,
    CosignatureSigner,
    NoteSigner,
    cosign_checkpoint,
    sign_checkpoint,
)
from emshield.tlog.merkle import leaf_hash, root_from_leaf_hashes

HERE = Path(__file__).resolve().parent
EM = "\u2014"

# RFC 6962 reference data set (the 8 leaves used by Certificate Transparency's and
# transparency-dev/merkle's tests), so the checkpoint commits to a root anyone can recompute.
RFC6962_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]

INTEROP = [
    {
        "source": "golang.org/x/mod/sumdb/note, package documentation and note_test.go (BSD-3-Clause)",
        "signer_key": "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "verifier_key": "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "text": "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n",
        "note": "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n"
                f"{EM} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n",
    },
    {
        "source": "golang.org/x/mod/sumdb/note, package documentation: the doubly-signed example (EnochRoot key "
                  "from note_test.go)",
        "signer_key": None,
        "verifier_key": "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop",
        "text": "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n",
        "note": "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n"
                f"{EM} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
                f"{EM} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n",
    },
    {
        "source": "c2sp.org/signed-note, section Example (C2SP/C2SP signed-note.md at commit d4c16da5)",
        "signer_key": None,
        "verifier_key": "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "text": "This is an example message.\n",
        "note": "This is an example message.\n\n"
                f"{EM} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n",
    },
]


def seed(label: str) -> bytes:
    """A fixed test seed: SHA-256 of a label. Never a real key."""
    return hashlib.sha256(label.encode()).digest()


def notes() -> dict:
    log_seed = seed("emshield/test-vector/log-key/v1")
    witness_seed = seed("emshield/test-vector/witness-key/v1")
    origin = "log.emshield.example/test"
    log = NoteSigner.from_private_key(origin, Ed25519PrivateKey.from_private_bytes(log_seed))
    root = root_from_leaf_hashes([leaf_hash(bytes.fromhex(h)) for h in RFC6962_LEAVES])
    cp = Checkpoint(origin, len(RFC6962_LEAVES), root)
    note = sign_checkpoint(cp, log)
    timestamp = 1_790_000_000
    witness = CosignatureSigner("witness.emshield.example/w1", Ed25519PrivateKey.from_private_bytes(witness_seed),
                                clock=lambda: timestamp)
    cosigned = cosign_checkpoint(note, log.verifier, witness)
    return {
        "produced_by": "spec/vectors/tlog/make_vectors.py",
        "interop": INTEROP,
        "checkpoint": {
            "seed_hex": log_seed.hex(),
            "origin": origin,
            "size": cp.size,
            "root_hex": root.hex(),
            "leaves_hex": RFC6962_LEAVES,
            "signer_key": log.signer_key(),
            "verifier_key": log.verifier_key(),
            "body": cp.body().decode(),
            "note": note.decode(),
        },
        "cosignature": {
            "seed_hex": witness_seed.hex(),
            "name": witness.name,
            "timestamp": timestamp,
            "verifier_key": witness.verifier_key(),
            "note": cosigned.decode(),
        },
    }


def main() -> None:
    (HERE / "notes.json").write_text(json.dumps(notes(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
