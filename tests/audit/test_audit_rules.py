"""The replay's per-entry rules on real signed entries, without a server: issuers must be registered
earlier in the log, signatures must verify (also when no key hint was available), registrations
and leaves must not repeat."""

from __future__ import annotations

from _kit.logs import ed25519_key, issuance, public_bytes, registration
from emshield.tlog import merkle
from emshield.tlog.entry import issuer_key_id
from verifier.audit.auditor import AuditReport, _init_worker, _Replayer, check_entry


def _run(entries: list[bytes], hints: dict[bytes, bytes]) -> AuditReport:
    _init_worker(hints)
    report = AuditReport("o", "u", None)
    rep = _Replayer(report)
    for i, data in enumerate(entries):
        rep.entry(i, data, check_entry(data), merkle.leaf_hash(data))
    return report


def test_replay_rules() -> None:
    a, b = ed25519_key("a"), ed25519_key("b")
    reg_a, reg_b = registration(a, "A"), registration(b, "B")
    good = [reg_a, issuance(a, 1), reg_b, issuance(b, 2), issuance(a, 3)]
    all_hints = {issuer_key_id(public_bytes(k)): public_bytes(k) for k in (a, b)}
    for hints in ({}, all_hints, {issuer_key_id(public_bytes(a)): public_bytes(b)}):  # none, right, wrong
        assert _run(good, hints).ok, hints

    def findings(entries, hints=all_hints):
        return [(f.kind, f.evidence["index"], f.detail) for f in _run(entries, hints).findings]

    forged = bytearray(issuance(b, 9))
    forged[-1] ^= 1
    for hints in ({}, all_hints):
        (kind, index, detail), = findings([reg_a, reg_b, bytes(forged)], hints)
        assert (kind, index) == ("bad_entry", 2) and "signature does not verify" in detail
    (kind, index, detail), = findings([issuance(a, 1), reg_a])
    assert (kind, index) == ("bad_entry", 0) and "not registered earlier" in detail
    (kind, index, detail), = findings([reg_a, registration(a, "A again")])
    assert (kind, index) == ("bad_entry", 1) and "again" in detail
    (kind, index, _), = findings([reg_a, issuance(a, 1), issuance(a, 1)])
    assert (kind, index) == ("duplicate_entry", 2)
    (kind, index, detail), = findings([reg_a, b"\xa0"])
    assert (kind, index) == ("bad_entry", 1) and "malformed entry" in detail


def test_replay_checks_batch_signed_entries_with_one_verification_per_batch() -> None:
    """Entries of one signing batch share a verified signature within a chunk, but an entry whose
    content was changed after signing still fails, even beside its verified siblings."""
    import hashlib

    from emshield.tlog import entry as E
    from verifier.audit.auditor import _check_chunk

    a = ed25519_key("a")
    kid = issuer_key_id(public_bytes(a))
    batch = E.sign_batch([E.Issuance(bytes([n]) * 16, hashlib.sha256(b"bb").digest(), hashlib.sha256(bytes([n])).digest(),
                                     None, "watermark", 1_700_000_000 + n, kid) for n in range(6)], a)
    entries = [registration(a, "A"), *(s.encode() for s in batch)]
    _init_worker({kid: public_bytes(a)})
    assert [c[0] for c in _check_chunk(entries)] == [None] * 7
    changed = E.SignedEntry(E.Issuance(**{**batch[4].entry.__dict__, "issued_at": 1}), batch[4].signature,
                            batch[4].batch).encode()
    checks = _check_chunk(entries[:5] + [changed])
    assert [c[0] for c in checks[:5]] == [None] * 5
    assert checks[5][0] == "issuance signature does not verify"


def test_replay_checks_attributions_against_the_issuance_they_open() -> None:
    """An attribution must name an earlier leaf by its hash, and its disclosed key must open that
    issuance's secret-mark commitment (the log's own admission rule, re-checked by the auditor)."""
    from _kit.attributions import attribution, secret_issuance

    a, b = ed25519_key("a"), ed25519_key("b")
    hints = {issuer_key_id(public_bytes(k)): public_bytes(k) for k in (a, b)}
    iss = secret_issuance(a, 1)
    base = [registration(a, "A"), registration(b, "B"), iss.leaf]
    good = attribution(b, 2, iss.leaf_hash, iss.key)  # another registered key may sign it (a rotation)
    assert _run([*base, good], hints).ok

    def findings(extra: bytes) -> list[str]:
        return [f.detail for f in _run([*base, extra], hints).findings]

    other = secret_issuance(a, 2).key
    (detail,) = findings(attribution(a, 2, iss.leaf_hash, other))
    assert "does not open the secret-mark commitment" in detail
    (detail,) = findings(attribution(a, 2, merkle.leaf_hash(base[0]), iss.key))
    assert "not an earlier entry with the leaf hash" in detail
    (detail,) = findings(attribution(a, 7, iss.leaf_hash, iss.key))
    assert "not an earlier entry" in detail
    forged = bytearray(good)
    forged[-1] ^= 1
    (detail,) = findings(bytes(forged))
    assert "attribution signature does not verify" in detail
