"""Regenerate the witness and auditor-state vectors: `python spec/vectors/witness/make_vectors.py`.

witness.json (spec/witness.md, spec/audit.md), all from fixed seeds (Ed25519 is deterministic and
the cosignature time is fixed, so the bytes are reproducible):
- `key_file`: a witness key file line, the verifier key it implies, and its key id;
- `add_checkpoint`: a log checkpoint of size 5 signed by a fixed log key, a request from old size
  3 with the RFC 9162 consistency proof, and the exact cosignature line the witness answers at
  time 1700000000;
- `audit_state`: a state file (version 1) that `load_state` accepts, and the same file with the
  saved size changed, which it must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from emshield.tlog import merkle
from emshield.tlog.checkpoint import (
    Checkpoint,
    CosignatureSigner,
    NoteSignature,
    NoteSigner,
    sign_checkpoint,
    split_note,
)
from witness.keyfile import witness_key_string

TIME = 1_700_000_000
ORIGIN = "vectors.emshield.example/log"


def seed(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"emshield-vector/" + label.encode()).digest())


def main() -> None:
    wkey = seed("witness")
    witness = CosignatureSigner("witness.vectors.example/w1", wkey, clock=lambda: TIME)
    log = NoteSigner(ORIGIN, seed("log"))
    leaves = [merkle.leaf_hash(b"vector leaf %d" % i) for i in range(5)]
    nodes: dict = {}
    rng = merkle.CompactRange()
    roots = {}
    for h in leaves:
        nodes.update(rng.append(h))
        roots[rng.size] = rng.root()
    proof = merkle.consistency_proof(3, 5, lambda ids: {i: nodes[i] for i in ids})
    note5 = sign_checkpoint(Checkpoint(ORIGIN, 5, roots[5]), log)
    note3 = sign_checkpoint(Checkpoint(ORIGIN, 3, roots[3]), log)
    text, _ = split_note(note5)
    line = NoteSignature(witness.name, witness.key_id, witness.sign(text)).line()
    body = b"old 3\n" + b"".join(base64.b64encode(h) + b"\n" for h in proof) + b"\n" + note5
    state = {"version": 1, "logs": {ORIGIN: {
        "origin": ORIGIN, "verifier_key": log.verifier_key(), "url": "http://127.0.0.1:8080", "size": 3,
        "root_hash": base64.b64encode(roots[3]).decode(), "checkpoint": note3.decode(), "verified_at": float(TIME),
        "replayed_size": 3}}}
    bad = json.loads(json.dumps(state))
    bad["logs"][ORIGIN]["size"] = 4
    doc = {
        "key_file": {"line": witness_key_string(witness.name, wkey), "verifier_key": witness.verifier_key(),
                     "key_id": witness.key_id.hex()},
        "add_checkpoint": {"log_verifier_key": log.verifier_key(), "time": TIME, "request": body.decode(),
                           "old_size": 3, "old_root": base64.b64encode(roots[3]).decode(),
                           "cosignature_line": line},
        "audit_state": {"valid": state, "invalid_size_changed": bad},
    }
    out = Path(__file__).with_name("witness.json")
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
