"""The replay's per-entry rules on real signed entries, without a server: issuers must be registered
earlier in the log, signatures must verify (also when no key hint was available), registrations
and leaves must not repeat."""

from __future__ import annotations

from emshield.tlog import merkle
from emshield.tlog.entry import issuer_key_id
from verifier.audit import AuditReport, _init_worker, _Replayer, check_entry


def _run(entries: list[bytes], hints: dict[bytes, bytes]) -> AuditReport:
    _init_worker(hints)
    report = AuditReport("o", "u", None)
    rep = _Replayer(report)
    for i, data in enumerate(entries):
        rep.entry(i, data, check_entry(data), merkle.leaf_hash(data))
    return report


def test_replay_rules(kit) -> None:
    a, b = kit.ed25519_key("a"), kit.ed25519_key("b")
    reg_a, reg_b = kit.registration(a, "A"), kit.registration(b, "B")
    good = [reg_a, kit.issuance(a, 1), reg_b, kit.issuance(b, 2), kit.issuance(a, 3)]
    all_hints = {issuer_key_id(kit.public_bytes(k)): kit.public_bytes(k) for k in (a, b)}
    for hints in ({}, all_hints, {issuer_key_id(kit.public_bytes(a)): kit.public_bytes(b)}):  # none, right, wrong
        assert _run(good, hints).ok, hints

    def findings(entries, hints=all_hints):
        return [(f.kind, f.evidence["index"], f.detail) for f in _run(entries, hints).findings]

    forged = bytearray(kit.issuance(b, 9))
    forged[-1] ^= 1
    for hints in ({}, all_hints):
        (kind, index, detail), = findings([reg_a, reg_b, bytes(forged)], hints)
        assert (kind, index) == ("bad_entry", 2) and "signature does not verify" in detail
    (kind, index, detail), = findings([kit.issuance(a, 1), reg_a])
    assert (kind, index) == ("bad_entry", 0) and "not registered earlier" in detail
    (kind, index, detail), = findings([reg_a, kit.registration(a, "A again")])
    assert (kind, index) == ("bad_entry", 1) and "again" in detail
    (kind, index, _), = findings([reg_a, kit.issuance(a, 1), kit.issuance(a, 1)])
    assert (kind, index) == ("duplicate_entry", 2)
    (kind, index, detail), = findings([reg_a, b"\xa0"])
    assert (kind, index) == ("bad_entry", 1) and "malformed entry" in detail
