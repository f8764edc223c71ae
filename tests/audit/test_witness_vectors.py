"""spec/vectors/witness/witness.json: the witness key file, an exact add-checkpoint exchange, and the
auditor's state file format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emshield.tlog.checkpoint import NoteVerifier
from verifier.audit import AuditError, load_state
from verifier.witness import Witness, parse_witness_key

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "spec/vectors/witness/witness.json").read_text())


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


def test_audit_state_vectors(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(VECTORS["audit_state"]["valid"]))
    (state,) = load_state(path).values()
    assert (state.size, state.replayed_size) == (3, 3)
    path.write_text(json.dumps(VECTORS["audit_state"]["invalid_size_changed"]))
    with pytest.raises(AuditError) as exc:
        load_state(path)
    assert exc.value.exit_code == 5
