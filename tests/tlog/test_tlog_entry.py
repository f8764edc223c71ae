"""Log entries: fixed-key vectors byte for byte, strict decoding of every malformed case, signatures."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import uuid
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from emshield.tlog.entry import (
    MAX_ENTRY_SIZE,
    MAX_MARKING_PARAMS_SIZE,
    SIGNATURE_LABEL,
    Attribution,
    BatchProof,
    EntryError,
    Issuance,
    IssuerRegistration,
    SignedEntry,
    decode_entry,
    encode_entry,
    issuer_key_id,
    sign_entry,
    signing_bytes,
    verify_entry_signature,
)
from emshield.tlog.merkle import leaf_hash

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "spec" / "vectors" / "tlog" / "entries.json").read_text())
KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["issuer_seed_hex"]))
PUB = KEY.public_key().public_bytes_raw()
PARAMS = cbor2.dumps({"v": 1, "layers": [["q", 4, 4]]}, canonical=True)


def _issuance(policy: str = "both", **kw: object) -> Issuance:
    fields = dict(device_uuid=uuid.UUID(int=7).bytes, backbone_id=bytes(32),
                  watermark_commitment=b"w" * 32 if policy in ("watermark", "both") else None,
                  fingerprint_hash=b"f" * 32 if policy in ("fingerprint", "both") else None,
                  policy=policy, issued_at=1, issuer_key_id=issuer_key_id(PUB))
    fields.update(kw)
    return Issuance(**fields)  # type: ignore[arg-type]


# --- vectors --------------------------------------------------------------------------------------


def test_issuer_key_id_formula() -> None:
    assert PUB.hex() == VECTORS["issuer_public_key_hex"]
    want = hashlib.sha256(b"emshield/issuer-key-id/v1\x00" + PUB).digest()
    assert issuer_key_id(PUB) == want and want.hex() == VECTORS["issuer_key_id_hex"]


@pytest.mark.parametrize("vec", VECTORS["valid"], ids=lambda v: v["desc"])
def test_valid_vectors(vec: dict) -> None:
    data = bytes.fromhex(vec["cbor_hex"])
    signed = decode_entry(data)
    assert signed.entry.TYPE == vec["type"]
    assert encode_entry(signed) == data and signed.encode() == data
    assert signed.leaf_hash().hex() == vec["leaf_hash_hex"] == leaf_hash(data).hex()
    assert signing_bytes(signed.entry).hex() == vec["signing_bytes_hex"]
    verify_entry_signature(signed, KEY.public_key())
    # Independently of entry.py: the signature is Ed25519 over label || CBOR map without "sig".
    m = cbor2.loads(data)
    sig = m.pop("sig")
    assert bytes.fromhex(vec["signing_bytes_hex"]) == SIGNATURE_LABEL + cbor2.dumps(m, canonical=True)
    Ed25519PublicKey.from_public_bytes(PUB).verify(sig, SIGNATURE_LABEL + cbor2.dumps(m, canonical=True))
    # Ed25519 is deterministic: re-signing the decoded entry with the fixed key gives the same bytes.
    assert encode_entry(sign_entry(signed.entry, KEY)) == data


@pytest.mark.parametrize("vec", VECTORS["malformed"], ids=lambda v: v["desc"])
def test_malformed_vectors(vec: dict) -> None:
    with pytest.raises(EntryError) as err:
        decode_entry(bytes.fromhex(vec["cbor_hex"]))
    assert vec["error"] in str(err.value)


@pytest.mark.parametrize("vec", VECTORS["bad_signatures"], ids=lambda v: v["desc"])
def test_bad_signature_vectors(vec: dict) -> None:
    signed = decode_entry(bytes.fromhex(vec["cbor_hex"]))
    with pytest.raises(EntryError, match=vec["error"]):
        verify_entry_signature(signed, Ed25519PublicKey.from_public_bytes(bytes.fromhex(vec["public_key_hex"])))


def test_vector_set_covers_the_required_cases() -> None:
    descs = " ".join(v["desc"] for v in VECTORS["malformed"])
    for word in ["unknown field", "missing field", "wrong type", "trailing", "size limit", "non-shortest",
                 "out of order", "indefinite", "float", "tag", "duplicate"]:
        assert word in descs, word
    # every attribution field is made wrong at least once, and "batch" on an attribution is refused
    attr = " ".join(v["desc"] for v in VECTORS["malformed"] if v["desc"].startswith("attribution"))
    for name in [f.name for f in dataclasses.fields(Attribution)] + ["batch field", "unknown field", "missing"]:
        assert name in attr, name
    assert [v["type"] for v in VECTORS["valid"]].count("attribution") == 1


# --- round trips and rules ----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["watermark", "fingerprint", "both"])
def test_issuance_round_trip(policy: str) -> None:
    signed = sign_entry(_issuance(policy), KEY)
    back = decode_entry(signed.encode())
    assert back == signed
    verify_entry_signature(back, KEY.public_key())
    assert back.entry.device_uuid_text == "00000000-0000-0000-0000-000000000007"
    present = set(cbor2.loads(signed.encode()))
    assert ("watermark_commitment" in present) == (policy != "fingerprint")
    assert ("fingerprint_hash" in present) == (policy != "watermark")


def test_decoded_entries_are_verified_over_the_same_bytes_without_re_encoding() -> None:
    """decode_entry keeps the signed part cut from the leaf bytes; it must equal signing_bytes exactly."""
    rnd = random.Random(3)
    entries = [decode_entry(bytes.fromhex(v["cbor_hex"])) for v in VECTORS["valid"]]
    for n in range(50):
        policy = rnd.choice(["watermark", "fingerprint", "both"])
        entries.append(decode_entry(sign_entry(_issuance(policy, issued_at=rnd.randrange(2 ** 63)), KEY).encode()))
        name = "".join(rnd.choice("abcé漢 -") for _ in range(rnd.randint(1, 40))).strip() or "x"
        entries.append(decode_entry(sign_entry(IssuerRegistration(PUB, name, PARAMS, n), KEY).encode()))
    for signed in entries:
        assert signed.__dict__["_signed_part"] == signing_bytes(signed.entry)
        verify_entry_signature(signed, KEY.public_key())
    # a wrong signature is still refused when the signed part comes from the leaf bytes
    data = entries[-1].encode()
    forged = decode_entry(data.replace(entries[-1].signature, bytes(64)))
    assert forged.__dict__["_signed_part"] == signing_bytes(forged.entry)
    with pytest.raises(EntryError, match="does not verify"):
        verify_entry_signature(forged, KEY.public_key())


def test_registration_is_signed_by_the_registered_key() -> None:
    reg = IssuerRegistration(PUB, "Issuer", PARAMS, 5)
    signed = sign_entry(reg, KEY)
    assert decode_entry(signed.encode()).signer_public_key == PUB
    assert reg.key_id == issuer_key_id(PUB)
    other = Ed25519PrivateKey.from_private_bytes(bytes(32))
    with pytest.raises(EntryError, match="key it registers"):
        sign_entry(reg, other)
    with pytest.raises(EntryError, match="key it registers"):
        verify_entry_signature(signed, other.public_key())
    # A registration signature made by another key over the same fields does not verify.
    forged = SignedEntry(reg, other.sign(signing_bytes(reg)))
    with pytest.raises(EntryError, match="does not verify"):
        verify_entry_signature(forged, KEY.public_key())
    with pytest.raises(EntryError, match="issuer_key_id"):
        sign_entry(_issuance(), other)


def test_signatures_are_domain_separated() -> None:
    """A signature over the bare CBOR (no label) is not an entry signature."""
    e = _issuance()
    bare = SignedEntry(e, KEY.sign(signing_bytes(e)[len(SIGNATURE_LABEL):]))
    with pytest.raises(EntryError, match="does not verify"):
        verify_entry_signature(bare, KEY.public_key())


@pytest.mark.parametrize("kw", [
    {"device_uuid": bytes(17)}, {"backbone_id": "x"}, {"policy": "all"}, {"issued_at": -1}, {"issued_at": 2 ** 63},
    {"issued_at": True}, {"issuer_key_id": bytes(31)}, {"fingerprint_hash": None},
])
def test_issuance_fields_are_checked(kw: dict) -> None:
    with pytest.raises(EntryError):
        _issuance(**kw)


@pytest.mark.parametrize("args", [
    (bytes(31), "n", PARAMS, 0), (PUB, "", PARAMS, 0), (PUB, "é" * 65, PARAMS, 0), (PUB, "a\u200bb\x7f", PARAMS, 0),
    (PUB, "n", b"", 0), (PUB, "n", b"\x00" * (MAX_MARKING_PARAMS_SIZE + 1), 0),
    (PUB, "n", cbor2.dumps(cbor2.CBORTag(99, 1)), 0), (PUB, "n", b"\x81" * 1000 + b"\x00", 0),
    (PUB, "n", b"\xfb\x3f\xf8\x00\x00\x00\x00\x00\x00", 0),  # 1.5 as a non-shortest float
])
def test_registration_fields_are_checked(args: tuple) -> None:
    with pytest.raises(EntryError):
        IssuerRegistration(*args)


@pytest.mark.parametrize("data", [b"\x81" * 5000, b"\xa1\x61a" * 2000, b"\x5b" + b"\xff" * 8, b"\xbb" + b"\xff" * 8,
                                  b"\x7b\x00\x00\x00\x00\xff\xff\xff\xff", b"\xc6" * 3000 + b"\x00"])
def test_hostile_input_gives_entry_error(data: bytes) -> None:
    with pytest.raises(EntryError):
        decode_entry(data)


def test_size_limit_is_checked_before_decoding() -> None:
    with pytest.raises(EntryError, match="limit"):
        decode_entry(b"\x5a" + (MAX_ENTRY_SIZE).to_bytes(4, "big") + bytes(MAX_ENTRY_SIZE))
    with pytest.raises(EntryError):
        decode_entry("text")  # type: ignore[arg-type]


def test_random_mutations_never_give_a_second_encoding() -> None:
    """Leaf bytes are unique: any mutation either fails to decode or re-encodes to itself."""
    rnd = random.Random(1)
    seeds = [bytes.fromhex(v["cbor_hex"]) for v in VECTORS["valid"]]
    accepted = 0
    for _ in range(3000):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 3)):
            op = rnd.random()
            pos = rnd.randrange(len(data))
            if op < 0.6:
                data[pos] = rnd.randrange(256)
            elif op < 0.8:
                del data[pos]
            else:
                data.insert(pos, rnd.randrange(256))
        try:
            signed = decode_entry(bytes(data))
        except EntryError:
            continue
        accepted += 1
        assert encode_entry(signed) == bytes(data)
    assert accepted > 0  # some mutations (inside byte strings) stay valid CBOR, checked above


def test_cddl_schema_names_exactly_the_fields_the_code_uses() -> None:
    import re
    from dataclasses import fields

    cddl = (Path(__file__).resolve().parents[2] / "spec" / "entry.cddl").read_text()
    for cls in (IssuerRegistration, Issuance, Attribution):
        group = re.search(r"^" + cls.TYPE + r" = \{(.*?)^\}", cddl, re.S | re.M)
        assert group, cls.TYPE
        keys = set(re.findall(r'"([a-z0-9_]+)":', group.group(1)))
        assert keys == {"v", "type", "sig"} | {f.name for f in fields(cls)}
        assert f'"type": "{cls.TYPE}"' in group.group(1)


@pytest.mark.parametrize("policy", ["watermark", "both"])
def test_issuance_with_secret_mark_fields_round_trips_on_both_paths(policy: str) -> None:
    """The secret-mark fields: decoded by the fast recogniser and the strict path alike, single- and
    batch-signed, and refused alone or with a fingerprint-only policy."""
    from emshield.tlog.entry import _decode_strict, _match_issuance, sign_batch

    entry = _issuance(policy, secret_mark_salt=b"s" * 16, secret_mark_commitment=b"c" * 32)
    for signed in (sign_entry(entry, KEY), *sign_batch([entry, _issuance(policy, issued_at=2)], KEY)):
        data = signed.encode()
        fast, strict = _match_issuance(data), _decode_strict(data)
        assert fast == strict == signed and decode_entry(data) == signed
        assert fast.__dict__["_signed_part"] == strict.__dict__["_signed_part"] == signing_bytes(signed.entry)
        verify_entry_signature(decode_entry(data), KEY.public_key())
    with pytest.raises(EntryError, match="present together"):
        _issuance(policy, secret_mark_salt=b"s" * 16)
    with pytest.raises(EntryError, match="must be absent"):
        _issuance("fingerprint", secret_mark_salt=b"s" * 16, secret_mark_commitment=b"c" * 32)


def _attribution(**kw: object) -> Attribution:
    fields = dict(issuer_key_id=issuer_key_id(PUB), issuance_index=3, issuance_leaf_hash=b"h" * 32,
                  detection_key=b"k" * 32, detection_nonce=b"n" * 32, suspect_sha256=b"s" * 32, score_e6=7_250_000,
                  terms=24, attributed_at=1_790_000_400)
    fields.update(kw)
    return Attribution(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw", [{}, {"issuance_index": 2 ** 63 - 1, "score_e6": 2 ** 63 - 1, "terms": 65_535,
                                     "attributed_at": 2 ** 63 - 1}, {"issuance_index": 0, "score_e6": 0, "terms": 1}])
def test_attribution_round_trip(kw: dict) -> None:
    """Attributions take the strict path (the issuance recogniser declines them), keep their signed
    part cut from the leaf bytes, and verify with the key their issuer_key_id names."""
    from emshield.tlog.entry import _match_issuance

    signed = sign_entry(_attribution(**kw), KEY)
    data = signed.encode()
    assert _match_issuance(data) is None
    back = decode_entry(data)
    assert back == signed and type(back.entry) is Attribution and back.batch is None
    assert back.__dict__["_signed_part"] == signing_bytes(back.entry)
    verify_entry_signature(back, KEY.public_key())
    assert back.signer_public_key is None
    assert set(cbor2.loads(data)) == {"v", "type", "sig", *(f.name for f in dataclasses.fields(Attribution))}


def test_attribution_is_signed_by_the_key_it_names_and_never_batch_signed() -> None:
    from emshield.tlog.entry import sign_batch

    other = Ed25519PrivateKey.from_private_bytes(bytes(32))
    with pytest.raises(EntryError, match="attribution's issuer_key_id"):
        sign_entry(_attribution(), other)
    signed = sign_entry(_attribution(), KEY)
    with pytest.raises(EntryError, match="attribution's issuer_key_id"):
        verify_entry_signature(signed, other.public_key())
    with pytest.raises(EntryError, match="only issuances are batch-signed"):
        SignedEntry(_attribution(), signed.signature, BatchProof(0, 1, ()))
    with pytest.raises(EntryError, match="only issuances are batch-signed"):
        sign_batch([_attribution()], KEY)  # type: ignore[list-item]
    # the signature is bound to every field: the claimed score changed, it no longer verifies
    forged = SignedEntry(_attribution(score_e6=7_250_001), signed.signature)
    with pytest.raises(EntryError, match="does not verify"):
        verify_entry_signature(decode_entry(forged.encode()), KEY.public_key())


@pytest.mark.parametrize("kw", [
    {"issuer_key_id": bytes(31)}, {"issuance_index": -1}, {"issuance_index": 2 ** 63}, {"issuance_index": True},
    {"issuance_leaf_hash": "h" * 32}, {"detection_key": bytes(33)}, {"detection_nonce": None},
    {"suspect_sha256": bytearray(32)}, {"score_e6": 1.5}, {"score_e6": -1}, {"terms": 0}, {"terms": 65_536},
    {"attributed_at": 2 ** 63},
])
def test_attribution_fields_are_checked(kw: dict) -> None:
    with pytest.raises(EntryError):
        _attribution(**kw)
