"""C2SP tlog-witness: `emshield-witness serve` answers add-checkpoint as the spec says (status
codes, 409 size body, cosignature lines), a log configured with witnesses serves their
cosignatures, verifiers can require k of n, and a forked log cannot get its second history
cosigned (split-view protection). Real servers on 127.0.0.1, real stores (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import json
import select
import socket
import sqlite3
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from _kit.logs import copy_store, free_port, issuance, registration
from emshield.logclient.http import LogClient
from emshield.tlog import merkle
from emshield.tlog.checkpoint import (
    Checkpoint,
    NoteSignature,
    NoteSigner,
    open_note,
    sign_checkpoint,
    split_note,
    verify_checkpoint,
)
from verifier.audit.cli import main as audit_cli
from verifier.witness_policy import WitnessPolicyError, parse_witness_keys, verify_witnessed
from witness.cli import main as witness_cli


def _body(old: int, proof: list[bytes], note: bytes) -> bytes:
    return f"old {old}\n".encode() + b"".join(base64.b64encode(h) + b"\n" for h in proof) + b"\n" + note


def test_add_checkpoint_protocol(log_files, server_factory, issuer_key, witness_factory, tmp_path) -> None:
    srv = server_factory(log_files)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    log.append_batch([issuance(issuer_key, n) for n in range(10)])
    note11 = log.checkpoint_note()
    cp11 = verify_checkpoint(note11, log_files.verifier)
    w, wkey = witness_factory("witness.test/w1", [log_files.verifier.verifier_key()])

    # First contact: old 0, empty proof -> 200 and one cosignature line over the checkpoint text.
    r = w.post(_body(0, [], note11))
    assert r.status_code == 200, r.text
    assert r.text.startswith("\u2014 witness.test/w1 ") and r.text.endswith("\n")
    text, _ = split_note(note11)
    open_note(text + b"\n" + r.content, [wkey])
    # Same size and root again: cosigned again (idempotent).
    assert w.post(_body(11, [], note11)).status_code == 200
    # Wrong old size: 409 with the witness's size as text/x.tlog.size.
    r = w.post(_body(0, [], note11))
    assert (r.status_code, r.headers["Content-Type"], r.text) == (409, "text/x.tlog.size", "11\n")
    log.append_batch([issuance(issuer_key, n) for n in range(10, 30)])
    note31 = log.checkpoint_note()
    proof = list(log.consistency_proof(11, 31).hashes)
    # A wrong proof: 422, and the witness keeps its state.
    bad = [proof[0][:-1] + bytes([proof[0][-1] ^ 1])] + proof[1:]
    assert w.post(_body(11, bad, note31)).status_code == 422
    assert w.post(_body(11, [], note31)).status_code == 422
    # old > size: 400.
    assert w.post(_body(40, [], note31)).status_code == 400
    # The right proof: 200.
    r = w.post(_body(11, proof, note31))
    assert r.status_code == 200, r.text
    assert w.post(_body(11, proof, note31)).status_code == 409  # it moved on to 31
    # Same size, another root (a fork at equal size): 409 (not a size answer).
    forger = NoteSigner.from_signer_key(log_files.key_file.read_text().strip())
    forked = sign_checkpoint(Checkpoint(cp11.origin, 31, merkle.leaf_hash(b"other")), forger)
    r = w.post(_body(31, [], forked))
    assert r.status_code == 409 and r.headers["Content-Type"].startswith("text/plain")
    # Unknown origin: 404. Known origin, unknown key: 403. Tampered note: 403.
    stranger = NoteSigner.generate("other.example/log")
    other_note = sign_checkpoint(Checkpoint("other.example/log", 1, merkle.leaf_hash(b"x")), stranger)
    assert w.post(_body(0, [], other_note)).status_code == 404
    impostor = NoteSigner.generate(cp11.origin)
    assert w.post(_body(31, [], sign_checkpoint(Checkpoint(cp11.origin, 40, merkle.leaf_hash(b"y")), impostor))) \
        .status_code == 403
    tampered = note31.replace(b"\n31\n", b"\n32\n")
    assert w.post(_body(31, [], tampered)).status_code == 403
    # Malformed bodies: 400; old 0 with a proof: 400; other routes and methods; oversize: 413.
    for body in [b"", b"old 01\n\n" + note31, b"new 0\n\n" + note31, b"old 0\n" + note31,
                 b"old 31\nnot base64!\n\n" + note31, b"old 31\n" + b"AAAA\n\n" + note31,
                 _body(0, proof, note31), _body(31, [], b"garbage\n")]:
        assert w.post(body).status_code == 400, body[:40]
    wrong_method = requests.get(w.url + "/add-checkpoint", timeout=5)
    assert (wrong_method.status_code, wrong_method.headers.get("Allow")) == (405, "POST")
    assert requests.post(w.url + "/other", data=b"x", timeout=5).status_code == 404
    assert w.post(b"x" * 70_000).status_code == 413
    # Inconsistent but validly signed checkpoints are kept as evidence.
    w.stop()
    with sqlite3.connect(w.state) as db:
        reasons = [r for (r,) in db.execute("SELECT reason FROM conflicts ORDER BY id")]
        (size,) = db.execute("SELECT size FROM logs").fetchone()
    assert size == 31 and len(reasons) == 3 and "same size" in reasons[-1]


def _wait_cosigned(url: str, log_verifier, witnesses, quorum: int, size: int, timeout: float = 20) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        note = requests.get(url + "/checkpoint", timeout=5).content
        try:
            wc = verify_witnessed(note, log_verifier, witnesses, quorum)
            if wc.checkpoint.size >= size:
                return note
        except WitnessPolicyError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint of size {size} with {quorum} cosignatures: {note!r}")
        time.sleep(0.1)


def test_log_attaches_witness_cosignatures_and_verifiers_require_k_of_n(
        log_files, server_factory, issuer_key, witness_factory, witness_key) -> None:
    vkey = log_files.verifier.verifier_key()
    w1, k1 = witness_factory("witness.test/w1", [vkey])
    w2, k2 = witness_factory("witness.test/w2", [vkey])
    _, k3 = witness_key("witness.test/w3")  # configured nowhere
    srv = server_factory(log_files, witnesses=[f"{w1.url}={k1.verifier_key()}", f"{w2.url}={k2.verifier_key()}"],
                         witness_quorum=2)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    for n in range(0, 40, 10):
        log.append_batch([issuance(issuer_key, m) for m in range(n, n + 10)])
    note = _wait_cosigned(srv.url, log_files.verifier, [k1, k2], 2, 41)
    wc = verify_witnessed(note, log_files.verifier, parse_witness_keys([k1.verifier_key(), k2.verifier_key()]), 2)
    assert sorted(wc.cosigned_by) == sorted([k1.verifier_key(), k2.verifier_key()])
    assert all(abs(t - time.time()) < 120 for t in wc.timestamps)
    # k of n: 2 of {w1, w2, w3} holds; 3 of 3 does not; a freshness bound in the future fails.
    verify_witnessed(note, log_files.verifier, [k1, k2, k3], 2)
    with pytest.raises(WitnessPolicyError, match="2 valid witness cosignature"):
        verify_witnessed(note, log_files.verifier, [k1, k2, k3], 3)
    with pytest.raises(WitnessPolicyError):
        verify_witnessed(note, log_files.verifier, [k1, k2], 1, not_before=int(time.time()) + 3600)
    # A forged cosignature line for a listed witness rejects the note.
    text, sigs = split_note(note)
    forged = [NoteSignature(s.name, s.key_id, s.signature[:-1] + bytes([s.signature[-1] ^ 1]))
              if (s.name, s.key_id) == (k1.name, k1.key_id) else s for s in sigs]
    with pytest.raises(WitnessPolicyError, match="invalid cosignature by witness witness.test/w1"):
        verify_witnessed(text + b"\n" + "".join(s.line() for s in forged).encode(), log_files.verifier, [k1, k2], 1)
    # The auditor and plain verifiers still accept the cosigned note (they ignore unknown signers).
    assert verify_checkpoint(note, log_files.verifier).size == 41
    # The auditor can require the witnesses too (exit 4 when the policy is not met: nothing is proved).
    state = Path(w1.state).parent / "audit.json"
    base = ["--log", srv.url, "--key", vkey, "--state", str(state), "--json"]
    ok = CliRunner().invoke(audit_cli, [*base, "--witness", k1.verifier_key(), "--witness", k2.verifier_key(),
                                        "--quorum", "2"])
    assert ok.exit_code == 0, ok.output
    short = CliRunner().invoke(audit_cli, [*base, "--witness", k1.verifier_key(), "--witness", k2.verifier_key(),
                                           "--witness", k3.verifier_key(), "--quorum", "3"])
    assert short.exit_code == 4 and "witness policy not met" in json.loads(short.stdout)["detail"]
    # The witnesses' own state follows the log.
    for w in (w1, w2):
        with sqlite3.connect(w.state) as db:
            assert db.execute("SELECT size FROM logs").fetchone()[0] >= 41


def test_witness_refuses_a_forked_history(log_files, server_factory, issuer_key, witness_factory,
                                          tmp_path, request) -> None:
    """Two servers with the same key diverge; the witness cosigns only one history, so a verifier
    requiring its cosignature never accepts the other (the split view is stopped and recorded)."""
    vkey = log_files.verifier.verifier_key()
    w, k = witness_factory("witness.test/w1", [vkey])
    spec = [f"{w.url}={k.verifier_key()}"]
    srv_a = server_factory(log_files, witnesses=spec, witness_quorum=1)
    log_a = LogClient(srv_a.url, operator_token=log_files.token)
    log_a.register_issuer(registration(issuer_key))
    _wait_cosigned(srv_a.url, log_files.verifier, [k], 1, 1)
    srv_a.stop()
    cluster = request.getfixturevalue("postgres") if isinstance(log_files.db, str) else None
    twin = copy_store(log_files, tmp_path / "twin", cluster)
    srv_a = server_factory(log_files, witnesses=spec, witness_quorum=1)
    srv_b = server_factory(twin, witnesses=spec, witness_quorum=1)
    LogClient(srv_a.url).append_batch([issuance(issuer_key, n) for n in range(20)])
    _wait_cosigned(srv_a.url, log_files.verifier, [k], 1, 21)
    LogClient(srv_b.url).append_batch([issuance(issuer_key, n) for n in range(100, 130)])
    deadline = time.monotonic() + 30  # until the witness has refused B's fork (and kept the evidence)
    while not json.loads(CliRunner().invoke(witness_cli, ["conflicts", "--state", str(w.state), "--json"]).output):
        assert time.monotonic() < deadline, "B's cosigner never submitted its fork to the witness"
        time.sleep(0.1)
    note_b = requests.get(srv_b.url + "/checkpoint", timeout=5).content
    # B serves only its last checkpoint the witness cosigned: the common prefix, never its fork.
    assert verify_witnessed(note_b, log_files.verifier, [k], 1).checkpoint.size == 1
    with sqlite3.connect(w.state) as db:
        assert db.execute("SELECT size FROM logs").fetchone()[0] == 21
    result = CliRunner().invoke(witness_cli, ["conflicts", "--state", str(w.state), "--json"])
    assert result.exit_code == 0, result.output
    conflicts = json.loads(result.output)
    assert conflicts, "the witness kept no evidence of the forked checkpoint"
    request = base64.b64decode(conflicts[0]["request"])
    forked_note = request.split(b"\n\n", 1)[1]
    assert conflicts[0]["status"] == 422 and verify_checkpoint(forked_note, log_files.verifier).size == 31


def test_an_unreachable_witness_never_blocks_the_log(log_files, server_factory, issuer_key, witness_key,
                                                     tmp_path) -> None:
    _, k = witness_key("witness.test/down")
    srv = server_factory(log_files, witnesses=[f"http://127.0.0.1:{free_port()}={k.verifier_key()}"])
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    for n in range(5):
        assert log.append(issuance(issuer_key, n)).index == n + 1
    note = log.checkpoint_note()
    assert verify_checkpoint(note, log_files.verifier).size == 6
    with pytest.raises(WitnessPolicyError, match="0 valid witness cosignature"):
        verify_witnessed(note, log_files.verifier, [k], 1)


def test_stalled_bodies_do_not_stop_the_witness(witness_factory, log_files) -> None:
    """Three times as many stalled POSTs (headers sent, then one body byte) as the witness has
    request threads: the witness still answers, since its event loop, not a thread, waits for them."""
    w, _ = witness_factory("witness.test/w1", [log_files.verifier.verifier_key()])
    stalled = []
    for _ in range(12):  # the witness serves with 4 threads (`emshield-witness serve` default)
        s = socket.create_connection(("127.0.0.1", w.port), timeout=60)
        s.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\n\r\no")
        stalled.append(s)
    assert w.post(b"old 0\n\nnot a checkpoint\n").status_code == 400
    assert not select.select(stalled, [], [], 0)[0], "a stalled body was answered before the request after it"
    for s in stalled:
        s.close()
