"""spec/vectors/witness/witness.json: the auditor's state file format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _kit.paths import VECTORS as VECTOR_DIR
from verifier.audit.auditor import AuditError, load_state

VECTORS = json.loads((VECTOR_DIR / "witness" / "witness.json").read_text())


def test_audit_state_vectors(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(VECTORS["audit_state"]["valid"]))
    (state,) = load_state(path).values()
    assert (state.size, state.replayed_size) == (3, 3)
    path.write_text(json.dumps(VECTORS["audit_state"]["invalid_size_changed"]))
    with pytest.raises(AuditError) as exc:
        load_state(path)
    assert exc.value.exit_code == 7
