"""verify_entry_signatures (a whole request at once) accepts and rejects exactly what
verify_entry_signature on each entry in order does, with the same first position and message;
complete signing batches really take the whole-batch check."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import uuid

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from emshield.tlog import entry as entry_mod
from emshield.tlog.entry import (
    BatchProof,
    EntryError,
    EntryPositionError,
    Issuance,
    IssuerRegistration,
    SignedEntry,
    batch_signing_bytes,
    decode_entry,
    issuer_key_id,
    sign_batch,
    sign_entry,
    signing_bytes,
    verify_entry_signature,
    verify_entry_signatures,
)
from emshield.tlog.merkle import leaf_hash, root_from_leaf_hashes

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"verify-many issuer A").digest())
OTHER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"verify-many issuer B").digest())
PUB, OTHER_PUB = KEY.public_key(), OTHER.public_key()


def _issuances(n: int, key: Ed25519PrivateKey, seed: int) -> list[Issuance]:
    rnd = random.Random(seed)
    kid = issuer_key_id(key.public_key().public_bytes_raw())
    policies = ("both", "watermark", "fingerprint")
    return [Issuance(uuid.UUID(int=rnd.getrandbits(128)).bytes, rnd.randbytes(32),
                     rnd.randbytes(32) if policies[i % 3] != "fingerprint" else None,
                     rnd.randbytes(32) if policies[i % 3] != "watermark" else None,
                     policies[i % 3], 1_800_000_000 + i, kid) for i in range(n)]


def _batch(n: int, key: Ed25519PrivateKey = KEY, seed: int = 0, decoded: bool = True) -> list[SignedEntry]:
    signed = sign_batch(_issuances(n, key, seed), key)
    return [decode_entry(s.encode()) for s in signed] if decoded else signed


def _per_entry(entries: list[SignedEntry], keys: list[Ed25519PublicKey]) -> tuple[int, str] | None:
    """The reference: verify_entry_signature on each entry in order, one memo for the request."""
    verified: set[tuple[bytes, bytes, bytes]] = set()
    for i, (signed, key) in enumerate(zip(entries, keys, strict=True)):
        try:
            verify_entry_signature(signed, key, verified)
        except EntryError as exc:
            return i, str(exc)
    return None


def _same(entries: list[SignedEntry], keys: list[Ed25519PublicKey]) -> tuple[int, str] | None:
    """Assert verify_entry_signatures gives the reference outcome; return it."""
    want = _per_entry(entries, keys)
    try:
        verify_entry_signatures(entries, keys)
    except EntryPositionError as exc:
        assert str(exc) == f"entry {exc.position}: {exc.reason}"
        assert (exc.position, exc.reason) == want
    else:
        assert want is None, f"accepted what the per-entry check rejects: {want}"
    return want


def _whole_batch_positions(entries: list[SignedEntry], keys: list[Ed25519PublicKey]) -> set[int]:
    """The positions verify_entry_signatures clears with the whole-batch check (no per-entry check)."""
    names = {id(k): entry_mod._key_names(k) for k in keys}
    return entry_mod._complete_batches_verified(entries, keys, names)


def _with_proof(signed: SignedEntry, proof: tuple[bytes, ...]) -> SignedEntry:
    b = signed.batch
    assert b is not None
    return SignedEntry(signed.entry, signed.signature, BatchProof(b.index, b.size, proof))


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 2000])
def test_complete_batches(size: int) -> None:
    entries = _batch(size, seed=size)
    assert _same(entries, [PUB] * size) is None
    rnd = random.Random(size)
    shuffled = rnd.sample(entries, size)  # a complete batch in any order is still complete
    assert _same(shuffled, [PUB] * size) is None
    # The whole-batch check is what accepted them (not the per-entry fallback).
    assert _whole_batch_positions(shuffled, [PUB] * size) == set(range(size))


def test_whole_batch_check_refuses_what_it_cannot_vouch_for() -> None:
    entries = _batch(8, seed=1)
    kid, sig = issuer_key_id(PUB.public_bytes_raw()), entries[0].signature
    check = entry_mod._complete_batch_verifies
    assert check(entries, PUB, kid, sig, 8)
    assert not check(entries[:7] + [entries[6]], PUB, kid, sig, 8)  # index 6 twice, 7 missing
    assert not check(entries, OTHER_PUB, kid, sig, 8)
    assert not check(entries, PUB, issuer_key_id(OTHER_PUB.public_bytes_raw()), sig, 8)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not check(entries, PUB, kid, flipped, 8)
    proof = entries[3].batch.proof  # type: ignore[union-attr]
    bad = entries[:3] + [_with_proof(entries[3], (proof[0][:-1] + b"\x00",) + proof[1:])] + entries[4:]
    assert not check(bad, PUB, kid, sig, 8)


def test_tampered_proof_hash_reports_that_entry() -> None:
    for size, victim in ((5, 4), (13, 12), (13, 0), (2000, 1234)):
        entries = _batch(size, seed=size)
        proof = entries[victim].batch.proof  # type: ignore[union-attr]
        k = len(proof) - 1
        entries[victim] = _with_proof(entries[victim], proof[:k] + (bytes(32),))
        assert _same(entries, [PUB] * size) == (victim, "batch signature does not verify (the entry, its proof "
                                                        "or the signature was changed)")
        assert _whole_batch_positions(entries, [PUB] * size) == set()


def test_tampered_leaf_field() -> None:
    entries = _batch(13, seed=2, decoded=False)
    changed = dataclasses.replace(entries[7].entry, issued_at=entries[7].entry.issued_at + 1)
    entries[7] = SignedEntry(changed, entries[7].signature, entries[7].batch)  # no cached signing bytes
    got = _same(entries, [PUB] * 13)
    assert got is not None and got[0] == 7


def test_swapped_signatures() -> None:
    a, b = _batch(5, seed=3), _batch(5, seed=4)
    a[2] = SignedEntry(a[2].entry, b[2].signature, a[2].batch)  # one entry carries another batch's signature
    assert _same(a, [PUB] * 5)[0] == 2  # type: ignore[index]
    # A whole batch whose signature is a valid signature by another key over the same batch message.
    entries = _batch(5, seed=5)
    root = root_from_leaf_hashes([leaf_hash(signing_bytes(s.entry)) for s in entries])
    forged = OTHER.sign(batch_signing_bytes(5, root))
    entries = [SignedEntry(s.entry, forged, s.batch) for s in entries]
    assert _same(entries, [PUB] * 5)[0] == 0  # type: ignore[index]


def test_wrong_key() -> None:
    entries = _batch(8, seed=6)
    assert _same(entries, [OTHER_PUB] * 8) == (0, "key does not match the issuance's issuer_key_id")
    keys = [PUB] * 8
    keys[5] = OTHER_PUB
    assert _same(entries, keys) == (5, "key does not match the issuance's issuer_key_id")


def test_partial_interleaved_and_duplicate_batches() -> None:
    a, b = _batch(7, seed=7), _batch(8, seed=8, key=OTHER)
    assert _same(a[:4], [PUB] * 4) is None  # partial
    interleaved, keys = [], []
    for i in range(8):
        if i < 7:
            interleaved.append(a[i])
            keys.append(PUB)
        interleaved.append(b[i])
        keys.append(OTHER_PUB)
    assert _same(interleaved, keys) is None
    assert _whole_batch_positions(interleaved, keys) == set(range(15))
    dup = a[:6] + [a[5]]  # seven entries, index 5 twice, index 6 missing: each still verifies on its own
    assert _same(dup, [PUB] * 7) is None
    assert _same(a + a, [PUB] * 14) is None  # the batch twice
    assert _whole_batch_positions(dup, [PUB] * 7) == _whole_batch_positions(a + a, [PUB] * 14) == set()


def test_mixed_issuers_single_and_batch_and_registration() -> None:
    reg = sign_entry(IssuerRegistration(OTHER_PUB.public_bytes_raw(), "other", cbor2.dumps({"v": 1}), 3), OTHER)
    singles = [sign_entry(e, KEY) for e in _issuances(3, KEY, 9)]
    a, b = _batch(3, seed=10), _batch(5, seed=11, key=OTHER)
    entries = [singles[0], *b[:2], reg, *a, singles[1], *b[2:], singles[2]]
    keys = [PUB, OTHER_PUB, OTHER_PUB, OTHER_PUB, PUB, PUB, PUB, PUB, OTHER_PUB, OTHER_PUB, OTHER_PUB, PUB]
    assert _same(entries, keys) is None
    assert _whole_batch_positions(entries, keys) == {1, 2, 4, 5, 6, 8, 9, 10}
    keys[3] = PUB  # the registration checked with a key it does not register
    assert _same(entries, keys) == (3, "a registration is verified with the key it registers")
    keys[3] = OTHER_PUB
    bad_single = SignedEntry(singles[1].entry, bytes(64))
    assert _same(entries[:7] + [bad_single] + entries[8:], keys) == (7, "entry signature does not verify")
    # Equal keys as different objects group together and give the same outcome.
    copies = [Ed25519PublicKey.from_public_bytes(k.public_bytes_raw()) for k in keys]
    assert _same(entries, copies) is None


def test_random_requests() -> None:
    """Random mixes of complete, partial, shuffled and tampered batches from two issuers."""
    rnd = random.Random(12)
    pool = [(_batch(n, key=k, seed=100 + n), pub) for n in (1, 2, 3, 5, 8) for k, pub in ((KEY, PUB), (OTHER, OTHER_PUB))]
    singles = [(sign_entry(e, KEY), PUB) for e in _issuances(6, KEY, 13)]
    outcomes = set()
    for _ in range(200):
        items: list[tuple[SignedEntry, Ed25519PublicKey]] = []
        for batch, pub in rnd.sample(pool, rnd.randrange(1, 4)):
            chosen = batch if rnd.random() < 0.6 else rnd.sample(batch, rnd.randrange(1, len(batch) + 1))
            items += [(s, pub) for s in chosen]
        items += rnd.sample(singles, rnd.randrange(3))
        rnd.shuffle(items)
        entries, keys = [s for s, _ in items], [k for _, k in items]
        for _ in range(rnd.choice([0, 0, 1, 2])):  # tamper: wrong key, flipped proof hash or signature
            i = rnd.randrange(len(entries))
            how = rnd.randrange(3)
            if how == 0:
                keys[i] = OTHER_PUB if keys[i] is PUB else PUB
            elif how == 1 and entries[i].batch and entries[i].batch.proof:  # type: ignore[union-attr]
                proof = entries[i].batch.proof  # type: ignore[union-attr]
                entries[i] = _with_proof(entries[i], (bytes([proof[0][0] ^ 1]) + proof[0][1:],) + proof[1:])
            else:
                sig = entries[i].signature
                entries[i] = SignedEntry(entries[i].entry, bytes([sig[-1] ^ 1]) + sig[:-1], entries[i].batch)
        outcomes.add(_same(entries, keys) is None)
    assert outcomes == {True, False}


def test_lengths_must_agree() -> None:
    with pytest.raises(ValueError, match="2 entries but 1 public keys"):
        verify_entry_signatures(_batch(2), [PUB])
    verify_entry_signatures([], [])
