"""Batch-signed issuances: vectors byte for byte, strict "batch" field, tampering, the `verified` memo."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import struct
import uuid
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from emshield.tlog.entry import (
    BATCH_SIGNATURE_LABEL,
    MAX_ENTRY_SIZE,
    MAX_SIGNING_BATCH,
    SIGNATURE_LABEL,
    BatchProof,
    EntryError,
    Issuance,
    IssuerRegistration,
    SignedEntry,
    batch_signing_bytes,
    decode_entry,
    encode_entry,
    issuer_key_id,
    sign_batch,
    sign_entry,
    signing_bytes,
    verify_entry_signature,
)
from emshield.tlog.merkle import inclusion_proof, leaf_hash, root_from_leaf_hashes, verify_inclusion

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "spec" / "vectors" / "tlog" / "entries.json").read_text())
KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["issuer_seed_hex"]))
PUB = KEY.public_key().public_bytes_raw()
OTHER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"another issuer").digest())


def _issuance(i: int, policy: str = "both", key: Ed25519PrivateKey = KEY) -> Issuance:
    return Issuance(uuid.UUID(int=i).bytes, bytes(32), b"w" * 32 if policy != "fingerprint" else None,
                    b"f" * 32 if policy != "watermark" else None, policy, 1_800_000_000 + i,
                    issuer_key_id(key.public_key().public_bytes_raw()))


# --- vectors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("vec", VECTORS["batch"], ids=lambda v: v["desc"])
def test_batch_vectors(vec: dict) -> None:
    size = vec["size"]
    assert len(vec["entries"]) == size
    # Independently of entry.py: leaf i = RFC 9162 leaf hash of the signing bytes, the message is
    # label || uint64be(size) || root, and the signature is plain Ed25519 over it.
    leaves = [hashlib.sha256(b"\x00" + bytes.fromhex(e["signing_bytes_hex"])).digest() for e in vec["entries"]]
    assert [e["batch_leaf_hash_hex"] for e in vec["entries"]] == [h.hex() for h in leaves]
    root = root_from_leaf_hashes(leaves)
    assert root.hex() == vec["root_hex"]
    message = b"emshield/entry-batch-signature/v1\x00" + struct.pack(">Q", size) + root
    assert message.hex() == vec["message_hex"] == batch_signing_bytes(size, root).hex()
    sig = bytes.fromhex(vec["sig_hex"])
    Ed25519PublicKey.from_public_bytes(PUB).verify(sig, message)
    decoded = []
    for i, e in enumerate(vec["entries"]):
        data = bytes.fromhex(e["cbor_hex"])
        signed = decode_entry(data)
        decoded.append(signed)
        assert signed.batch == BatchProof(i, size, tuple(bytes.fromhex(h) for h in e["proof_hex"]))
        assert signed.signature == sig and encode_entry(signed) == data
        assert signed.leaf_hash().hex() == e["leaf_hash_hex"] == leaf_hash(data).hex()
        assert signing_bytes(signed.entry).hex() == e["signing_bytes_hex"]
        assert signed.__dict__["_signed_part"].hex() == e["signing_bytes_hex"]
        m = cbor2.loads(data)
        assert m["batch"] == [i, size, [bytes.fromhex(h) for h in e["proof_hex"]]]
        del m["sig"], m["batch"]
        assert SIGNATURE_LABEL + cbor2.dumps(m, canonical=True) == bytes.fromhex(e["signing_bytes_hex"])
        verify_inclusion(leaves[i], i, size, signed.batch.proof, root)
        verify_entry_signature(signed, KEY.public_key())
    # Ed25519 is deterministic: re-signing the decoded entries gives the same bytes.
    again = sign_batch([s.entry for s in decoded], KEY)
    assert [encode_entry(s) for s in again] == [bytes.fromhex(e["cbor_hex"]) for e in vec["entries"]]


def test_batch_vectors_cover_the_required_cases() -> None:
    assert any(v["size"] == 5 for v in VECTORS["batch"]) and any(v["size"] == 1 for v in VECTORS["batch"])
    descs = " ".join(v["desc"] for v in VECTORS["malformed"] if v["desc"].startswith("batch"))
    for word in ["hash short", "index >= size", "size 0", "extra item", "non-shortest", "out of order",
                 "registration", "31-byte"]:
        assert word in descs, word
    bad = " ".join(v["desc"] for v in VECTORS["bad_signatures"])
    for word in ["proof hash bit flipped", "entry field changed", "index changed", "size changed"]:
        assert word in bad, word


# --- sign_batch and verification -------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 64])
def test_sign_batch_round_trip(n: int) -> None:
    policies = ["both", "watermark", "fingerprint"]
    entries = [_issuance(i, policies[i % 3]) for i in range(n)]
    signed = sign_batch(entries, KEY)
    assert [s.entry for s in signed] == entries
    assert len({s.signature for s in signed}) == 1
    leaves = [leaf_hash(signing_bytes(e)) for e in entries]
    root = root_from_leaf_hashes(leaves)
    KEY.public_key().verify(signed[0].signature, BATCH_SIGNATURE_LABEL + n.to_bytes(8, "big") + root)
    for i, s in enumerate(signed):
        assert s.batch is not None and (s.batch.index, s.batch.size) == (i, n)
        verify_inclusion(leaves[i], i, n, s.batch.proof, root)
        back = decode_entry(s.encode())
        assert back == s
        verify_entry_signature(back, KEY.public_key())
        verify_entry_signature(s, KEY.public_key())


def test_batch_of_one_still_carries_batch() -> None:
    (signed,) = sign_batch([_issuance(1)], KEY)
    assert signed.batch == BatchProof(0, 1, ())
    assert cbor2.loads(signed.encode())["batch"] == [0, 1, []]
    KEY.public_key().verify(signed.signature, batch_signing_bytes(1, leaf_hash(signing_bytes(signed.entry))))
    verify_entry_signature(decode_entry(signed.encode()), KEY.public_key())


def test_tampered_entry_inside_a_valid_batch_fails() -> None:
    signed = sign_batch([_issuance(i) for i in range(6)], KEY)
    pk = KEY.public_key()
    verified: set[tuple[bytes, bytes, bytes]] = set()
    for s in signed:
        verify_entry_signature(s, pk, verified)
    assert len(verified) == 1
    for s in signed:
        for change in [{"issued_at": s.entry.issued_at + 1}, {"policy": "watermark", "fingerprint_hash": None},
                       {"device_uuid": uuid.UUID(int=99).bytes}]:
            forged = SignedEntry(dataclasses.replace(s.entry, **change), s.signature, s.batch)
            for memo in (None, verified):  # the memo of the genuine batch does not help a changed entry
                with pytest.raises(EntryError, match="does not verify"):
                    verify_entry_signature(decode_entry(forged.encode()), pk, memo)
        # another entry's proof, index or the batch size
        assert s.batch is not None
        for batch in [signed[(s.batch.index + 1) % 6].batch,
                      BatchProof(s.batch.index, 7, s.batch.proof) if len(s.batch.proof) == 3 else None]:
            if batch is None:
                continue
            with pytest.raises(EntryError, match="does not verify"):
                verify_entry_signature(SignedEntry(s.entry, s.signature, batch), pk, verified)
    assert len(verified) == 1


def test_verified_memo_skips_ed25519_and_remembers_only_successes() -> None:
    """The memo really replaces the Ed25519 call: a (key, message, signature) triple put in the set
    makes a signature that is not valid pass, but only for exactly that triple."""
    a = sign_batch([_issuance(i) for i in range(3)], KEY)
    b = sign_batch([_issuance(10 + i) for i in range(3)], KEY)
    pk = KEY.public_key()
    verified: set[tuple[bytes, bytes, bytes]] = set()
    verify_entry_signature(a[0], pk, verified)
    (memo,) = verified
    assert memo[0] == PUB and memo[2] == a[0].signature and memo[1].startswith(BATCH_SIGNATURE_LABEL)
    verify_entry_signature(a[1], pk, verified)
    verify_entry_signature(a[2], pk, verified)
    assert verified == {memo}
    # A different batch's entry with a forged signature still fails, and failures are not remembered.
    forged_b = SignedEntry(b[1].entry, a[0].signature, b[1].batch)
    for _ in range(2):
        with pytest.raises(EntryError, match="does not verify"):
            verify_entry_signature(forged_b, pk, verified)
    assert verified == {memo}
    # Proof that no Ed25519 call happens on a hit: a triple whose signature is garbage, once in the
    # set, lets an entry carrying that garbage pass; the same entry fails without the set, with
    # another key's triple, or with an empty set.
    bogus = bytes(64)
    fake = SignedEntry(b[0].entry, bogus, b[0].batch)
    with pytest.raises(EntryError, match="does not verify"):
        verify_entry_signature(fake, pk, verified)
    message = batch_signing_bytes(3, root_from_leaf_hashes([leaf_hash(signing_bytes(s.entry)) for s in b]))
    verify_entry_signature(fake, pk, {(PUB, message, bogus)})
    for other_memo in [set(), {(OTHER.public_key().public_bytes_raw(), message, bogus)}, {(PUB, message, bytes(63) + b"\x01")}]:
        with pytest.raises(EntryError, match="does not verify"):
            verify_entry_signature(fake, pk, other_memo)
    with pytest.raises(EntryError, match="does not verify"):
        verify_entry_signature(fake, pk)


def test_memo_does_not_bypass_the_issuer_check() -> None:
    a = sign_batch([_issuance(i) for i in range(2)], KEY)
    verified: set[tuple[bytes, bytes, bytes]] = set()
    verify_entry_signature(a[0], KEY.public_key(), verified)
    with pytest.raises(EntryError, match="issuer_key_id"):
        verify_entry_signature(a[1], OTHER.public_key(), verified)


def test_single_signatures_ignore_the_memo() -> None:
    single = sign_entry(_issuance(1), KEY)
    verified: set[tuple[bytes, bytes, bytes]] = set()
    verify_entry_signature(single, KEY.public_key(), verified)
    assert not verified
    forged = SignedEntry(single.entry, bytes(64))
    with pytest.raises(EntryError, match="does not verify"):
        verify_entry_signature(forged, KEY.public_key(), verified)


def test_batch_and_single_signatures_are_domain_separated() -> None:
    """A batch signature is no single signature and vice versa, even for a batch of one whose
    root is the entry's leaf hash."""
    e = _issuance(1)
    (batched,) = sign_batch([e], KEY)
    single = sign_entry(e, KEY)
    assert batched.signature != single.signature
    with pytest.raises(EntryError, match="does not verify"):
        verify_entry_signature(SignedEntry(e, batched.signature), KEY.public_key())
    with pytest.raises(EntryError, match="does not verify"):
        verify_entry_signature(SignedEntry(e, single.signature, batched.batch), KEY.public_key())
    # Ed25519 over the message without the label does not verify either.
    bare = KEY.sign(batch_signing_bytes(1, leaf_hash(signing_bytes(e)))[len(BATCH_SIGNATURE_LABEL):])
    with pytest.raises(EntryError, match="does not verify"):
        verify_entry_signature(SignedEntry(e, bare, batched.batch), KEY.public_key())


def test_sign_batch_refusals() -> None:
    e = _issuance(1)
    with pytest.raises(EntryError, match="1..65536"):
        sign_batch([], KEY)
    with pytest.raises(EntryError, match="1..65536"):
        sign_batch([e] * (MAX_SIGNING_BATCH + 1), KEY)
    reg = IssuerRegistration(PUB, "Issuer", cbor2.dumps({"v": 1}), 1)
    with pytest.raises(EntryError, match="only issuances"):
        sign_batch([e, reg], KEY)  # type: ignore[list-item]
    with pytest.raises(EntryError, match="issuer_key_id"):
        sign_batch([e, _issuance(2, key=OTHER)], KEY)
    with pytest.raises(EntryError, match="same issuance twice"):
        sign_batch([e, _issuance(2), e], KEY)
    with pytest.raises(EntryError, match="only issuances are batch-signed"):
        SignedEntry(reg, bytes(64), BatchProof(0, 1, ()))


@pytest.mark.parametrize("args, error", [
    ((0, 0, ()), "batch size"), ((0, MAX_SIGNING_BATCH + 1, ()), "batch size"), ((0, True, ()), "batch size"),
    ((1, 1, ()), "out of range"), ((-1, 2, ()), "out of range"), ((False, 2, (bytes(32),)), "out of range"),
    ((0, 2, ()), "needs exactly 1"), ((0, 2, (bytes(32),) * 2), "needs exactly 1"),
    ((0, 2, [bytes(32)]), "32-byte hashes"), ((0, 2, (bytes(31),)), "32-byte hashes"),
    ((0, 2, (bytearray(32),)), "32-byte hashes"), ((4, 5, (bytes(32),) * 2), "needs exactly 1"),
])
def test_batch_proof_fields_are_checked(args: tuple, error: str) -> None:
    with pytest.raises(EntryError, match=error):
        BatchProof(*args)


def test_proof_lengths_are_rfc9162s() -> None:
    """BatchProof accepts exactly the length of the proofs sign_batch makes, for every index."""
    for n in [1, 2, 3, 4, 5, 7, 9, 16, 17]:
        signed = sign_batch([_issuance(i) for i in range(n)], KEY)
        for s in signed:
            assert s.batch is not None
            proof = s.batch.proof
            BatchProof(s.batch.index, n, proof)
            for wrong in (proof + (bytes(32),), proof[:-1] if proof else None):
                if wrong is not None:
                    with pytest.raises(EntryError, match="needs exactly"):
                        BatchProof(s.batch.index, n, wrong)


@pytest.mark.parametrize("size", [1, 2, 23, 24, 25, 255, 256, 257, 65_535, 65_536])
def test_signed_part_is_cut_right_for_every_head_width(size: int) -> None:
    """decode_entry cuts the signing bytes out of the leaf; with "batch" that depends on the encoded
    widths of index and size, so check every width against a full re-encode."""
    rnd = random.Random(size)
    for index in sorted({0, size - 1, rnd.randrange(size), min(23, size - 1), min(24, size - 1), min(256, size - 1)}):
        proof = tuple(rnd.randbytes(32) for _ in _proof_of_right_length(index, size))
        for policy in ("both", "watermark", "fingerprint"):
            signed = decode_entry(SignedEntry(_issuance(index, policy), rnd.randbytes(64), BatchProof(index, size, proof)).encode())
            assert signed.__dict__["_signed_part"] == signing_bytes(signed.entry)


def _proof_of_right_length(index: int, size: int) -> tuple[bytes, ...]:
    """A proof of RFC 9162's length for (index, size), from merkle.inclusion_proof over dummy nodes."""
    return tuple(inclusion_proof(index, size, lambda ids: dict.fromkeys(ids, bytes(32))))


def test_largest_batch_entry_fits_the_entry_limit() -> None:
    """A maximal proof (16 hashes, size 2^16) adds about 560 bytes: far below MAX_ENTRY_SIZE."""
    proof = _proof_of_right_length(0, MAX_SIGNING_BATCH)
    assert len(proof) == 16
    data = SignedEntry(_issuance(1), bytes(64), BatchProof(0, MAX_SIGNING_BATCH, proof)).encode()
    single = SignedEntry(_issuance(1), bytes(64)).encode()
    assert len(data) - len(single) < 600 and len(data) < MAX_ENTRY_SIZE
    assert decode_entry(data).batch == BatchProof(0, MAX_SIGNING_BATCH, proof)


def test_cddl_and_spec_describe_the_batch_form() -> None:
    cddl = (ROOT / "spec" / "entry.cddl").read_text()
    assert '"batch": batch-proof' in cddl
    assert f"size: 1..{MAX_SIGNING_BATCH}" in cddl
    spec = (ROOT / "spec" / "entry.md").read_text()
    assert '"emshield/entry-batch-signature/v1" || 0x00' in spec
    assert "MAX_SIGNING_BATCH" in spec and "draft-ietf-tls-batch-signing" in spec
