"""`emshield-audit` against real `emshield-log serve` subprocesses on real stores (SQLite files and
PostgreSQL databases).

The auditor must pass an honest log run after run, and catch, with evidence a third party can
check: a database edited behind the server's back (row edited with the sqlite3 or psql tool
while the server is down), a fork (two servers holding the same key that diverge), a rollback, and a fork
at equal size. Exit codes and the state file are checked too.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from _kit.logs import ORIGIN, copy_store, init_log, issuance, registration, run_sql, sql_blob
from emshield.logclient.http import LogClient
from emshield.tlog import merkle
from emshield.tlog.checkpoint import NoteVerifier, verify_checkpoint
from verifier.audit.cli import main as audit_cli


def _kinds(out: dict) -> set[str]:
    return {f["kind"] for f in out["findings"]}


@pytest.fixture
def populated(log_files, server_factory, issuer_key):
    srv = server_factory(log_files)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    log.append_batch([issuance(issuer_key, n) for n in range(300)])
    return srv, log


def test_honest_log_passes_run_after_run_and_state_advances(run_audit, populated, log_files, issuer_key, tmp_path) -> None:
    srv, log = populated
    key = log_files.verifier.verifier_key()
    state = tmp_path / "audit.json"
    code, out = run_audit(srv.url, key, state, "--replay", "--jobs", "2")
    assert (code, out["ok"], out["replayed"], out["checkpoint"]["size"]) == (0, True, 301, 301), out
    saved = json.loads(state.read_text())["logs"][ORIGIN]
    assert (saved["size"], saved["verifier_key"], saved["replayed_size"]) == (301, key, 301)
    log.append_batch([issuance(issuer_key, n) for n in range(300, 700)])
    code, out = run_audit(srv.url, key, state, "--replay", "--incremental", "--jobs", "1")
    assert (code, out["previous"]["size"], out["replayed_from"], out["replayed"]) == (0, 301, 301, 400), out
    log.append_batch([issuance(issuer_key, n) for n in range(700, 800)])
    code, out = run_audit(srv.url, key, state)  # no replay: the next incremental one cannot resume
    assert (code, out["checkpoint"]["size"], out["replayed"]) == (0, 801, 0)
    code, out = run_audit(srv.url, key, state, "--replay", "--incremental")
    assert (code, out["replayed_from"], out["replayed"]) == (0, 0, 801)
    cp = verify_checkpoint(json.loads(state.read_text())["logs"][ORIGIN]["checkpoint"].encode(), log_files.verifier)
    assert cp == log.verified_checkpoint(log_files.verifier)
    # A damaged replay cache is never trusted: the replay starts over.
    _sqlite(state.with_name(state.name + ".replay.db"), "UPDATE leaf_hashes SET hash = zeroblob(32) WHERE idx = 7")
    log.append_batch([issuance(issuer_key, n) for n in range(800, 810)])
    code, out = run_audit(srv.url, key, state, "--replay", "--incremental")
    assert (code, out["replayed_from"], out["replayed"]) == (0, 0, 811)
    code, out = run_audit(srv.url, key, state, "--replay", "--incremental")
    assert (code, out["replayed_from"], out["replayed"]) == (0, 811, 0)
    # The human-readable form says the same.
    text = CliRunner().invoke(audit_cli, ["--log", srv.url, "--key", key, "--state", str(state), "--replay"])
    assert text.exit_code == 0 and "replayed 811 entries from index 0" in text.output
    assert f"OK: consistent; state saved to {state}" in text.output


def test_key_pinning_state_and_reachability_errors(run_audit, populated, log_files, tmp_path) -> None:
    srv, _ = populated
    key = log_files.verifier.verifier_key()
    state = tmp_path / "audit.json"
    assert run_audit(srv.url, key, state)[0] == 0
    before = state.read_bytes()
    # Another key for the same origin: refused against the pin (7, local state), state untouched.
    (tmp_path / "other").mkdir()
    other = init_log(tmp_path / "other")
    assert other.verifier.name == log_files.verifier.name and other.verifier.verifier_key() != key
    code, out = run_audit(srv.url, other.verifier.verifier_key(), state)
    assert code == 7 and out["error"] == "local_state" and "pinned" in out["detail"]
    # A fresh state with the wrong key: the checkpoint does not verify with it (3), nothing is saved.
    code, out = run_audit(srv.url, other.verifier.verifier_key(), tmp_path / "fresh.json")
    assert code == 3 and not (tmp_path / "fresh.json").exists()
    # Unreachable log: 4.
    srv.stop()
    code, out = run_audit(srv.url, key, state)
    assert code == 4 and out["error"] == "log_unavailable" and "cannot fetch" in out["detail"]
    assert state.read_bytes() == before
    # Corrupt or tampered state files: 7.
    state.write_text("{not json")
    assert run_audit(srv.url, key, state)[0] == 7
    doc = json.loads(before)
    doc["logs"][ORIGIN]["size"] += 1  # no longer matches the saved signed note
    state.write_text(json.dumps(doc))
    code, out = run_audit(srv.url, key, state)
    assert code == 7 and "corrupt" in out["detail"]


def _sqlite(db: Path, sql: str) -> None:
    """Edit the store with the sqlite3 command-line tool, as an attacker with file access would."""
    subprocess.run(["sqlite3", str(db), sql], check=True, capture_output=True, timeout=30)


def test_tampered_database_is_caught_by_replay(run_audit, populated, log_files, server_factory, tmp_path) -> None:
    srv, log = populated
    key = log_files.verifier.verifier_key()
    state = tmp_path / "audit.json"
    assert run_audit(srv.url, key, state, "--replay")[0] == 0
    victim = log.entries(42, 43)[0].data
    srv.stop()
    forged = bytearray(victim)
    forged[-1] ^= 0x01  # one bit of the issuer's signature
    run_sql(log_files.db, f"UPDATE leaves SET data = {sql_blob(log_files.db, bytes(forged))} WHERE idx = 42")
    srv2 = server_factory(log_files)
    assert LogClient(srv2.url).entries(42, 43)[0].data == bytes(forged)
    # Checkpoints and proofs come from the untouched tree nodes: without replay all looks fine.
    code, out = run_audit(srv2.url, key, state)
    assert code == 0, out
    before = state.read_bytes()
    code, out = run_audit(srv2.url, key, state, "--replay")
    assert code == 3 and not out["ok"]
    assert {"entry_hash_mismatch", "bad_entry", "rewritten_entries"} <= _kinds(out)
    mismatch = next(f for f in out["findings"] if f["kind"] == "entry_hash_mismatch")
    assert mismatch["evidence"]["index"] == 42
    assert base64.b64decode(mismatch["evidence"]["entry"]) == bytes(forged)
    assert base64.b64decode(mismatch["evidence"]["tile_leaf_hash"]) == merkle.leaf_hash(victim)
    assert state.read_bytes() == before, "a failed audit must not move the saved state"
    evidence = json.loads(Path(out["evidence_file"]).read_text())
    assert evidence["findings"] == out["findings"]

    # A smarter forger also rewrites the leaf hash: the tiles above and the root give it away.
    srv2.stop()
    run_sql(log_files.db, f"UPDATE leaves SET leaf_hash = {sql_blob(log_files.db, merkle.leaf_hash(bytes(forged)))}"
                          " WHERE idx = 42")
    srv3 = server_factory(log_files)
    code, out = run_audit(srv3.url, key, state, "--replay")
    assert code == 3
    assert "entry_hash_mismatch" not in _kinds(out)
    assert {"tile_mismatch", "bad_entry", "rewritten_entries"} <= _kinds(out)
    tile = next(f for f in out["findings"] if f["kind"] == "tile_mismatch")
    assert tile["evidence"]["tile"] == "tile/1/000.p/1" and tile["evidence"]["position"] == 0


def test_fork_between_two_servers_with_the_same_key(run_audit, populated, log_files, server_factory, issuer_key, tmp_path,
                                                   request) -> None:
    srv_a, log_a = populated
    key = log_files.verifier.verifier_key()
    cluster = request.getfixturevalue("postgres") if isinstance(log_files.db, str) else None
    srv_b = server_factory(copy_store(log_files, tmp_path / "twin", cluster))
    log_b = LogClient(srv_b.url)
    log_a.append_batch([issuance(issuer_key, n) for n in range(1000, 1050)])
    log_b.append_batch([issuance(issuer_key, n) for n in range(2000, 2080)])  # B diverges, grows larger

    state = tmp_path / "audit.json"
    assert run_audit(srv_a.url, key, state)[0] == 0
    code, out = run_audit(srv_b.url, key, state)
    assert code == 3 and _kinds(out) == {"fork"}
    ev = out["findings"][0]["evidence"]
    # The evidence convinces anyone with the log's key: two signed checkpoints, no consistency.
    verifier = NoteVerifier.from_verifier_key(key)
    old = verify_checkpoint(ev["saved_checkpoint"].encode(), verifier)
    new = verify_checkpoint(ev["new_checkpoint"].encode(), verifier)
    assert (old.size, new.size) == (351, 381)
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(old.size, new.size, [base64.b64decode(h) for h in ev["consistency_proof"]],
                                  old.root_hash, new.root_hash)
    text = CliRunner().invoke(audit_cli, ["--log", srv_b.url, "--key", key, "--state", str(state)])
    assert text.exit_code == 3 and "MISBEHAVIOUR [fork]" in text.output and "evidence written to" in text.output
    # The proof computed from B's tiles is the one B's /v1 API serves.
    code, out_api = run_audit(srv_b.url, key, state, "--proofs", "api")
    assert code == 3 and out_api["findings"][0]["evidence"]["consistency_proof"] == ev["consistency_proof"]

    # A smaller view is a rollback; the same size with another root is a fork.
    state_b = tmp_path / "audit-b.json"
    assert run_audit(srv_b.url, key, state_b)[0] == 0
    code, out = run_audit(srv_a.url, key, state_b)
    assert code == 3 and _kinds(out) == {"rollback"}
    log_a.append_batch([issuance(issuer_key, n) for n in range(1050, 1080)])  # now both 381
    code, out = run_audit(srv_a.url, key, state_b)
    assert code == 3 and _kinds(out) == {"fork"}
    assert "different roots" in out["findings"][0]["detail"]


def test_a_log_that_cannot_serve_its_tiles_proves_nothing(run_audit, populated, log_files, server_factory, tmp_path) -> None:
    """A tile the server fails to produce (its node row deleted) is an error to retry (exit 4), not a finding."""
    srv, _ = populated
    srv.stop()
    run_sql(log_files.db, "DELETE FROM nodes WHERE level = 8")
    srv2 = server_factory(log_files)
    state = tmp_path / "audit.json"
    code, out = run_audit(srv2.url, log_files.verifier.verifier_key(), state, "--replay")
    assert code == 4 and "tile/1/000.p/1" in out["detail"] and not state.exists()
