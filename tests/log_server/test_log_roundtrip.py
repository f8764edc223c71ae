"""Round trips over real HTTP (`emshield-log serve`) with every answer verified by the
pure core: checkpoint signatures, inclusion and consistency proofs, look-ups and side records."""

from __future__ import annotations

import hashlib

import pytest

from _kit.logs import ORIGIN, ed25519_key, issuance, public_bytes, registration
from emshield.logclient.http import LogClient, LogClientError
from emshield.tlog import entry as E
from emshield.tlog import merkle
from emshield.tlog.checkpoint import CheckpointError, NoteSigner, verify_checkpoint
from emshield.tlog.entry import decode_entry, issuer_key_id


def test_round_trip_with_verified_proofs(log_files, server_factory, issuer_key) -> None:
    srv = server_factory(log_files)
    log = LogClient(srv.url, operator_token=log_files.token)
    verifier = log_files.verifier

    cp0 = log.verified_checkpoint(verifier)
    assert (cp0.size, cp0.root_hash) == (0, merkle.EMPTY_ROOT)

    reg = registration(issuer_key)
    first = log.register_issuer(reg)
    assert (first.index, first.created, first.leaf_hash) == (0, True, merkle.leaf_hash(reg))
    assert log.register_issuer(reg) == first.__class__(0, first.leaf_hash, False)  # idempotent

    singles = [issuance(issuer_key, n) for n in range(5)]
    results = [log.append(e) for e in singles]
    assert [r.index for r in results] == [1, 2, 3, 4, 5] and all(r.created for r in results)
    again = log.append(singles[2])
    assert (again.index, again.created) == (3, False)

    cp1 = log.verified_checkpoint(verifier)
    assert cp1.size == 6
    batch = [issuance(issuer_key, n) for n in range(5, 40)] + [singles[0]]
    got = log.append_batch(batch)
    assert [r.index for r in got] == list(range(6, 41)) + [1]
    assert [r.created for r in got] == [True] * 35 + [False]

    cp2 = log.verified_checkpoint(verifier)
    assert cp2.size == 41
    all_leaves = [e.data for e in log.iter_entries(0, cp2.size)]
    assert all_leaves == [reg, *singles, *batch[:-1]]
    assert merkle.root_from_leaf_hashes([merkle.leaf_hash(d) for d in all_leaves]) == cp2.root_hash

    # Inclusion of every leaf, by index and by hash, at the latest and at an older checkpoint.
    for i, data in enumerate(all_leaves):
        for cp in (cp1, cp2):
            if i < cp.size:
                p = log.inclusion_proof(i, cp.size)
                merkle.verify_inclusion(merkle.leaf_hash(data), i, cp.size, list(p.hashes), cp.root_hash)
        assert log.prove_inclusion(data, cp2).index == i
    # Consistency from every earlier size to the latest, checked against roots of the leaf prefixes.
    for m in range(1, cp2.size + 1):
        root_m = merkle.root_from_leaf_hashes([merkle.leaf_hash(d) for d in all_leaves[:m]])
        p = log.consistency_proof(m, cp2.size)
        merkle.verify_consistency(m, cp2.size, list(p.hashes), root_m, cp2.root_hash)
    log.prove_consistency(cp0, cp2)
    log.prove_consistency(cp1, cp2)

    # A proof that does not match is caught by the verified helper.
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(merkle.leaf_hash(all_leaves[1]), 2, cp2.size,
                                list(log.inclusion_proof(2, cp2.size).hashes), cp2.root_hash)

    # Look-ups by the indexed fields find exactly the issuance entry.
    target = decode_entry(singles[3]).entry
    for kw in ({"watermark_commitment": target.watermark_commitment}, {"device_uuid": target.device_uuid_text}):
        hits = log.issuances(**kw)
        assert [(h.index, h.leaf) for h in hits] == [(4, singles[3])]
        assert hits[0].issuer_key_id == issuer_key_id(public_bytes(issuer_key))
    assert log.issuances(watermark_commitment=hashlib.sha256(b"none").digest()) == []

    issuers = log.issuers()
    assert [(i.index, i.name, i.revoked) for i in issuers] == [(0, "Acme Models", False)]
    assert log.side_record(4) is None


def test_checkpoint_is_a_c2sp_note_only_the_log_key_opens(log_files, server_factory, issuer_key) -> None:
    srv = server_factory(log_files, workers=1)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    note = log.checkpoint_note()
    text = note.decode()
    assert text.startswith(f"{ORIGIN}\n1\n") and "\n\n\u2014 " + ORIGIN + " " in text
    assert verify_checkpoint(note, log_files.verifier).size == 1
    other = NoteSigner.generate(ORIGIN)
    from emshield.tlog.checkpoint import NoteVerifier

    with pytest.raises(CheckpointError):
        verify_checkpoint(note, NoteVerifier.from_verifier_key(other.verifier_key()))
    with pytest.raises(CheckpointError):
        verify_checkpoint(note, log_files.verifier, origin="another.example/log")


def test_client_reports_api_errors(log_files, server_factory) -> None:
    srv = server_factory(log_files, workers=1)
    log = LogClient(srv.url)  # no operator token
    with pytest.raises(LogClientError) as exc:
        log.inclusion_proof(0, 5)
    assert (exc.value.status, exc.value.code) == (400, "out_of_range")
    with pytest.raises(LogClientError) as exc:
        log.register_issuer(registration(ed25519_key("x")))
    assert exc.value.code == "missing_credential"
    with pytest.raises(LogClientError) as exc:
        LogClient("http://127.0.0.1:1", timeout=2).checkpoint_note()
    assert exc.value.code == "unreachable"


def test_batch_signed_entries_are_appended_and_each_verifies_alone(log_files, server_factory, issuer_key) -> None:
    """Entries signed with one Merkle-tree batch signature (spec/entry.md) go through the batch
    path; a tampered one refuses the whole request and stores nothing; each logged entry verifies
    on its own with the issuer key."""
    srv = server_factory(log_files, workers=1)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    kid = issuer_key_id(public_bytes(issuer_key))

    def issuances(ns):
        return [E.Issuance(hashlib.sha256(b"dev%d" % n).digest()[:16], hashlib.sha256(b"backbone").digest(),
                           hashlib.sha256(b"wm%d" % n).digest(), None, "watermark", 1_700_000_000 + n, kid)
                for n in ns]

    first, second = E.sign_batch(issuances(range(7)), issuer_key), E.sign_batch(issuances(range(7, 10)), issuer_key)
    bodies = [s.encode() for s in first + second]
    forged = E.SignedEntry(first[3].entry, bytes(64), first[3].batch).encode()  # the batch proof, no valid signature
    with pytest.raises(LogClientError) as exc:
        log.append_batch(bodies[:3] + [forged])
    assert (exc.value.status, exc.value.code) == (400, "bad_signature")
    assert "entry 3" in str(exc.value)
    assert log.verified_checkpoint(log_files.verifier).size == 1  # nothing stored

    got = log.append_batch(bodies)
    assert [r.index for r in got] == list(range(1, 11)) and all(r.created for r in got)
    assert log.append(bodies[4]).index == 5  # the single path takes a batch-signed entry too
    public = issuer_key.public_key()
    for r in got:
        (leaf,) = log.entries(r.index, r.index + 1)
        assert leaf.data == bodies[r.index - 1]
        E.verify_entry_signature(E.decode_entry(leaf.data), public)  # no memo: each entry on its own
