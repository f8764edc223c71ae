"""spec/vectors/witness/witness.json: the witness key file and an exact add-checkpoint exchange."""

from __future__ import annotations

import json
from pathlib import Path

from _kit.paths import VECTORS as VECTOR_DIR
from emshield.tlog.checkpoint import NoteVerifier
from witness.keyfile import parse_witness_key
from witness.service import Witness

VECTORS = json.loads((VECTOR_DIR / "witness" / "witness.json").read_text())


def test_key_file_vector() -> None:
    v = VECTORS["key_file"]
    signer = parse_witness_key(v["line"])
    assert (signer.verifier_key(), signer.key_id.hex()) == (v["verifier_key"], v["key_id"])


def test_add_checkpoint_vector(tmp_path: Path) -> None:
    v = VECTORS["add_checkpoint"]
    signer = parse_witness_key(VECTORS["key_file"]["line"], clock=lambda: v["time"])
    witness = Witness(signer, [NoteVerifier.from_verifier_key(v["log_verifier_key"])], tmp_path / "w.db")
    old_note = VECTORS["audit_state"]["valid"]["logs"]["vectors.emshield.example/log"]["checkpoint"].encode()
    assert witness.add_checkpoint(b"old 0\n\n" + old_note).status == 200  # the witness learns size 3
    answer = witness.add_checkpoint(v["request"].encode())
    assert (answer.status, answer.body.decode()) == (200, v["cosignature_line"])
