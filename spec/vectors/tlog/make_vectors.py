"""Regenerate the EMShield tlog vectors: `python spec/vectors/tlog/make_vectors.py`.

entries.json: log entries signed with a fixed test key (exact CBOR and leaf hash), and malformed
encodings with the error each must give (a substring of the EntryError message).

notes.json: published signed-note vectors from other implementations (copied data, origin
cited in each record) and our checkpoint/cosignature notes from fixed seeds. Ed25519 (RFC 8032)
is deterministic, so the same seed and text always give the same bytes; the tests re-sign and
compare byte for byte, and verify the published notes with our verifier.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from emshield.tlog.checkpoint import (
    Checkpoint,
    CosignatureSigner,
    NoteSigner,
    cosign_checkpoint,
    sign_checkpoint,
)
from emshield.tlog.entry import (
    MAX_ENTRY_SIZE,
    MAX_SIGNING_BATCH,
    Attribution,
    Issuance,
    IssuerRegistration,
    SignedEntry,
    batch_signing_bytes,
    encode_entry,
    issuer_key_id,
    sign_batch,
    sign_entry,
    signing_bytes,
)
from emshield.tlog.merkle import leaf_hash, root_from_leaf_hashes

HERE = Path(__file__).resolve().parent
EM = "\u2014"

# RFC 6962 reference data set (the 8 leaves used by Certificate Transparency's and
# transparency-dev/merkle's tests), so the checkpoint commits to a root anyone can recompute.
RFC6962_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]

INTEROP = [
    {
        "source": "golang.org/x/mod/sumdb/note, package documentation and note_test.go (BSD-3-Clause)",
        "signer_key": "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "verifier_key": "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "text": "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n",
        "note": "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n"
                f"{EM} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n",
    },
    {
        "source": "golang.org/x/mod/sumdb/note, package documentation: the doubly-signed example (EnochRoot key "
                  "from note_test.go)",
        "signer_key": None,
        "verifier_key": "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop",
        "text": "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n",
        "note": "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n"
                f"{EM} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
                f"{EM} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n",
    },
    {
        "source": "c2sp.org/signed-note, section Example (C2SP/C2SP signed-note.md at commit d4c16da5)",
        "signer_key": None,
        "verifier_key": "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "text": "This is an example message.\n",
        "note": "This is an example message.\n\n"
                f"{EM} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n",
    },
]


def seed(label: str) -> bytes:
    """A fixed test seed: SHA-256 of a label. Never a real key."""
    return hashlib.sha256(label.encode()).digest()


def notes() -> dict:
    log_seed = seed("emshield/test-vector/log-key/v1")
    witness_seed = seed("emshield/test-vector/witness-key/v1")
    origin = "log.emshield.example/test"
    log = NoteSigner.from_private_key(origin, Ed25519PrivateKey.from_private_bytes(log_seed))
    root = root_from_leaf_hashes([leaf_hash(bytes.fromhex(h)) for h in RFC6962_LEAVES])
    cp = Checkpoint(origin, len(RFC6962_LEAVES), root)
    note = sign_checkpoint(cp, log)
    timestamp = 1_790_000_000
    witness = CosignatureSigner("witness.emshield.example/w1", Ed25519PrivateKey.from_private_bytes(witness_seed),
                                clock=lambda: timestamp)
    cosigned = cosign_checkpoint(note, log.verifier, witness)
    return {
        "produced_by": "spec/vectors/tlog/make_vectors.py",
        "interop": INTEROP,
        "checkpoint": {
            "seed_hex": log_seed.hex(),
            "origin": origin,
            "size": cp.size,
            "root_hex": root.hex(),
            "leaves_hex": RFC6962_LEAVES,
            "signer_key": log.signer_key(),
            "verifier_key": log.verifier_key(),
            "body": cp.body().decode(),
            "note": note.decode(),
        },
        "cosignature": {
            "seed_hex": witness_seed.hex(),
            "name": witness.name,
            "timestamp": timestamp,
            "verifier_key": witness.verifier_key(),
            "note": cosigned.decode(),
        },
    }


# --- entries --------------------------------------------------------------------------------------


def _head(major: int, n: int) -> bytes:
    """A CBOR head in its shortest form (RFC 8949 §3)."""
    if n < 24:
        return bytes([major << 5 | n])
    for ai, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | ai]) + struct.pack(fmt, n)
    raise ValueError(n)


def _item(v: object) -> bytes:
    return v if isinstance(v, RawItem) else cbor2.dumps(v)


class RawItem(bytes):
    """Bytes placed into a hand-built map as they are (to build non-canonical encodings)."""


def _map(pairs: list[tuple[object, object]]) -> bytes:
    """A definite-length map in exactly the given key order (the decoder must reject misorders)."""
    return _head(5, len(pairs)) + b"".join(_item(k) + _item(v) for k, v in pairs)


def entries() -> dict:
    key = Ed25519PrivateKey.from_private_bytes(seed("emshield/test-vector/issuer-key/v1"))
    pub = key.public_key().public_bytes_raw()
    params = cbor2.dumps({"v": 1, "note": "test vector; spec/watermark.md defines the real map"}, canonical=True)
    reg = sign_entry(IssuerRegistration(pub, "Example Issuer GmbH", params, 1_790_000_000), key)
    device = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e").bytes
    backbone = hashlib.sha256(b"example backbone").digest()
    both = sign_entry(Issuance(device, backbone, hashlib.sha256(b"wm").digest(), hashlib.sha256(b"fp").digest(),
                               "both", 1_790_000_100, issuer_key_id(pub)), key)
    fp_only = sign_entry(Issuance(device, backbone, None, hashlib.sha256(b"fp").digest(), "fingerprint",
                                  1_790_000_200, issuer_key_id(pub)), key)
    secret_tier = sign_entry(Issuance(device, backbone, hashlib.sha256(b"wm").digest(), hashlib.sha256(b"fp").digest(),
                                      "both", 1_790_000_300, issuer_key_id(pub), bytes(range(16)),
                                      hashlib.sha256(b"secret mark").digest()), key)
    attribution = sign_entry(Attribution(issuer_key_id(pub), 3, leaf_hash(encode_entry(secret_tier)),
                                         hashlib.sha256(b"test detection key").digest(),
                                         hashlib.sha256(b"test detection nonce").digest(),
                                         hashlib.sha256(b"suspect file").digest(), 7_250_000, 24, 1_790_000_400), key)
    valid = []
    for label, signed in [("issuer registration", reg), ("issuance, policy both", both),
                          ("issuance, policy fingerprint (no watermark_commitment)", fp_only),
                          ("issuance, policy both, with the secret-mark fields", secret_tier),
                          ("attribution of the secret-mark issuance (as if at leaf 3)", attribution)]:
        data = encode_entry(signed)
        valid.append({"desc": label, "cbor_hex": data.hex(), "leaf_hash_hex": leaf_hash(data).hex(),
                      "signing_bytes_hex": signing_bytes(signed.entry).hex(), "type": signed.entry.TYPE})

    good = cbor2.loads(encode_entry(both))  # a decoded valid issuance map, in canonical key order

    def variant(**changes: object) -> list[tuple[object, object]]:
        pairs = [(k, changes.get(k, v)) for k, v in good.items() if changes.get(k, v) is not DROP]
        return pairs + [(k, v) for k, v in changes.items() if k not in good]

    def canon(pairs: list[tuple[object, object]]) -> bytes:
        return cbor2.dumps(dict(pairs), canonical=True)

    sig = good["sig"]
    bad = [
        ("empty input", b"", "empty"),
        ("over the size limit", b"\xa0" + b"\x00" * MAX_ENTRY_SIZE, "limit"),
        ("trailing byte", encode_entry(both) + b"\x00", "trailing"),
        ("not a map", cbor2.dumps([1, 2]), "must be a CBOR map"),
        ("truncated", encode_entry(both)[:-1], "not well-formed"),
        ("keys out of order", _map(list(reversed(list(good.items())))), "deterministic"),
        ("non-shortest integer", _map([(k, RawItem(b"\x1b" + struct.pack(">Q", v)) if k == "issued_at" else v)
                                       for k, v in good.items()]), "deterministic"),
        ("indefinite-length byte string",
         _map([(k, RawItem(b"\x5f" + cbor2.dumps(v) + b"\xff") if k == "backbone_id" else v) for k, v in good.items()]),
         "indefinite"),
        ("indefinite-length map", b"\xbf" + _map(list(good.items()))[1:] + b"\xff", "indefinite"),
        ("duplicate key", _map(list(good.items()) + [("v", 1)]), "Duplicate"),
        ("float instead of integer", canon(variant(issued_at=1790000100.0)), "unsigned integer"),
        ("tagged time (tag 1)", _map(variant(issued_at=RawItem(b"\xc1" + cbor2.dumps(1_790_000_100)))),
         "tag"),
        ("bignum-tagged integer (tag 2)",
         _map([(k, RawItem(b"\xc2\x44" + struct.pack(">I", v)) if k == "issued_at" else v) for k, v in good.items()]),
         "deterministic"),
        ("negative time", canon(variant(issued_at=-1)), "0..2^63-1"),
        ("unknown field", canon(variant(extra=1)), "unknown field"),
        ("missing field", canon(variant(issuer_key_id=DROP)), "missing field"),
        ("missing signature", canon(variant(sig=DROP)), "missing field"),
        ("missing version", canon(variant(v=DROP)), "no version"),
        ("unknown version", canon(variant(v=2)), "unsupported entry version"),
        ("unknown type", canon(variant(type="issuer-revocation")), "unknown entry type"),
        ("wrong type: text for bytes", canon(variant(backbone_id="00" * 32)), "must be a byte string"),
        ("wrong size: 15-byte device UUID", canon(variant(device_uuid=bytes(15))), "must be 16 bytes"),
        ("short signature", canon(variant(sig=sig[:63])), "must be 64 bytes"),
        ("unknown policy", canon(variant(policy="none")), "policy"),
        ("policy forbids a field", canon(variant(policy="fingerprint")), "must be absent"),
        ("policy needs a missing field", canon(variant(policy="both", fingerprint_hash=DROP)), "required with policy"),
        ("null for an optional field", canon(variant(watermark_commitment=None, policy="fingerprint")),
         "null"),
        ("nested container", canon(variant(backbone_id=[1])), "must be a byte string"),
        ("integer map key", canon([(1, 1)] + list(good.items())), "keys must be text"),
        ("invalid UTF-8 text", _map([(k, RawItem(b"\x64\xff\xfe\xfd\xfc") if k == "policy" else v)
                                     for k, v in good.items()]), "not well-formed"),
        ("undefined simple value", _map(variant(policy=RawItem(b"\xf7"))), "unsupported item"),
        ("secret-mark salt without its commitment", canon(variant(secret_mark_salt=bytes(16))), "present together"),
        ("secret-mark commitment without its salt", canon(variant(secret_mark_commitment=bytes(32))),
         "present together"),
        ("secret-mark fields with policy fingerprint",
         canon(variant(policy="fingerprint", watermark_commitment=DROP, secret_mark_salt=bytes(16),
                       secret_mark_commitment=bytes(32))), "must be absent with policy"),
        ("wrong size: 15-byte secret-mark salt",
         canon(variant(secret_mark_salt=bytes(15), secret_mark_commitment=bytes(32))), "must be 16 bytes"),
        ("wrong size: 31-byte secret-mark commitment",
         canon(variant(secret_mark_salt=bytes(16), secret_mark_commitment=bytes(31))), "must be 32 bytes"),
    ]
    reg_map = cbor2.loads(encode_entry(reg))
    bad_reg = [
        ("name too long", {**reg_map, "name": "x" * 129}, "UTF-8 bytes"),
        ("control character in name", {**reg_map, "name": "a\nb"}, "control"),
        ("marking_params not CBOR", {**reg_map, "marking_params": b"\xff"}, "marking_params"),
        ("marking_params non-canonical", {**reg_map, "marking_params": b"\x18\x01"}, "deterministic"),
        ("marking_params with trailing bytes", {**reg_map, "marking_params": params + b"\x00"}, "trailing"),
    ]
    malformed = [{"desc": d, "cbor_hex": b.hex(), "error": e} for d, b, e in bad]
    malformed += [{"desc": d, "cbor_hex": cbor2.dumps(m, canonical=True).hex(), "error": e} for d, m, e in bad_reg]

    other = Ed25519PrivateKey.from_private_bytes(seed("emshield/test-vector/other-key/v1"))
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    bad_sigs = [
        {"desc": "signature bit flipped", "cbor_hex": canon(variant(sig=flipped)).hex(),
         "public_key_hex": pub.hex(), "error": "does not verify"},
        {"desc": "issuance field changed after signing", "cbor_hex": canon(variant(issued_at=1_790_000_101)).hex(),
         "public_key_hex": pub.hex(), "error": "does not verify"},
        {"desc": "verified with a key that is not the issuer's", "cbor_hex": encode_entry(both).hex(),
         "public_key_hex": other.public_key().public_bytes_raw().hex(), "error": "issuer_key_id"},
    ]
    attr_malformed, attr_bad_sigs = attribution_vectors(attribution, pub, other)
    batch, batch_malformed, batch_bad_sigs = batch_vectors(key, backbone)
    return {
        "produced_by": "spec/vectors/tlog/make_vectors.py",
        "issuer_seed_hex": seed("emshield/test-vector/issuer-key/v1").hex(),
        "issuer_public_key_hex": pub.hex(),
        "issuer_key_id_hex": issuer_key_id(pub).hex(),
        "valid": valid,
        "malformed": malformed + attr_malformed + batch_malformed,
        "bad_signatures": bad_sigs + attr_bad_sigs + batch_bad_sigs,
        "batch": batch,
    }


def attribution_vectors(attribution: SignedEntry, pub: bytes, other: Ed25519PrivateKey) -> tuple[list[dict], list[dict]]:
    """Malformed attributions (every field of the wrong type or size or out of range, missing,
    an extra field, a "batch" field) and well-formed ones whose signature must not verify."""
    good = cbor2.loads(encode_entry(attribution))

    def canon(**changes: object) -> bytes:
        return cbor2.dumps({k: v for k, v in {**good, **changes}.items() if v is not DROP}, canonical=True)

    malformed = [
        ("attribution: 31-byte issuer_key_id", canon(issuer_key_id=bytes(31)), "must be 32 bytes"),
        ("attribution: text issuer_key_id", canon(issuer_key_id="00" * 32), "must be a byte string"),
        ("attribution: text issuance_index", canon(issuance_index="3"), "unsigned integer"),
        ("attribution: negative issuance_index", canon(issuance_index=-1), "0..2^63-1"),
        ("attribution: issuance_index 2^63", canon(issuance_index=1 << 63), "0..2^63-1"),
        ("attribution: 33-byte issuance_leaf_hash", canon(issuance_leaf_hash=bytes(33)), "must be 32 bytes"),
        ("attribution: 31-byte detection_key", canon(detection_key=bytes(31)), "must be 32 bytes"),
        ("attribution: integer detection_key", canon(detection_key=1), "must be a byte string"),
        ("attribution: 16-byte detection_nonce", canon(detection_nonce=bytes(16)), "must be 32 bytes"),
        ("attribution: text detection_nonce", canon(detection_nonce="nonce"), "must be a byte string"),
        ("attribution: 20-byte suspect_sha256", canon(suspect_sha256=bytes(20)), "must be 32 bytes"),
        ("attribution: negative score_e6", canon(score_e6=-7_250_000), "0..2^63-1"),
        ("attribution: score_e6 2^63", canon(score_e6=1 << 63), "0..2^63-1"),
        ("attribution: float score_e6", canon(score_e6=7.25), "unsigned integer"),
        ("attribution: terms 0", canon(terms=0), "1..65535"),
        ("attribution: terms 65536", canon(terms=65_536), "1..65535"),
        ("attribution: text terms", canon(terms="24"), "unsigned integer"),
        ("attribution: negative attributed_at", canon(attributed_at=-1), "0..2^63-1"),
        ("attribution: bytes attributed_at", canon(attributed_at=bytes(8)), "unsigned integer"),
        ("attribution: missing field detection_nonce", canon(detection_nonce=DROP), "missing field"),
        ("attribution: missing field issuance_leaf_hash", canon(issuance_leaf_hash=DROP), "missing field"),
        ("attribution: missing signature", canon(sig=DROP), "missing field"),
        ("attribution: unknown field", canon(p_value=1), "unknown field"),
        ("attribution: an issuance's field", canon(device_uuid=bytes(16)), "unknown field"),
        ("attribution: batch field (attributions are never batch-signed)", canon(batch=[0, 1, []]), "unknown field"),
    ]
    flipped = bytes([good["sig"][0] ^ 1]) + good["sig"][1:]
    bad_sigs = [
        ("attribution: signature bit flipped", canon(sig=flipped), pub, "does not verify"),
        ("attribution: detection key changed after signing", canon(detection_key=bytes(32)), pub, "does not verify"),
        ("attribution: score changed after signing", canon(score_e6=good["score_e6"] + 1), pub, "does not verify"),
        ("attribution: verified with a key that is not the signer's", encode_entry(attribution),
         other.public_key().public_bytes_raw(), "issuer_key_id"),
    ]
    return ([{"desc": d, "cbor_hex": b.hex(), "error": e} for d, b, e in malformed],
            [{"desc": d, "cbor_hex": b.hex(), "public_key_hex": k.hex(), "error": e} for d, b, k, e in bad_sigs])


BATCH_POLICIES = ["both", "watermark", "fingerprint", "both", "watermark"]


def batch_vectors(key: Ed25519PrivateKey, backbone: bytes) -> tuple[list[dict], list[dict], list[dict]]:
    """Batch-signed issuances (spec/entry.md, "Batch signatures"): a batch of 5 (not a power of two)
    and a batch of 1, every entry with its bytes, its batch-tree leaf and proof; malformed "batch"
    fields the decoder must refuse; well-formed entries whose batch signature must not verify."""
    pub = key.public_key().public_bytes_raw()

    def issuance(i: int, policy: str) -> Issuance:
        return Issuance(uuid.UUID(int=0x0F8FAD5B_D9CB_469F_A165_708677289500 + i).bytes, backbone,
                        hashlib.sha256(b"wm%d" % i).digest() if policy != "fingerprint" else None,
                        hashlib.sha256(b"fp%d" % i).digest() if policy != "watermark" else None,
                        policy, 1_790_001_000 + i, issuer_key_id(pub))

    five = sign_batch([issuance(i, p) for i, p in enumerate(BATCH_POLICIES)], key)
    one = sign_batch([issuance(9, "both")], key)
    batches = []
    for desc, signed in [("batch of 5 issuances (not a power of two)", five), ("batch of 1 issuance", one)]:
        leaves = [leaf_hash(signing_bytes(s.entry)) for s in signed]
        root = root_from_leaf_hashes(leaves)
        batches.append({
            "desc": desc, "size": len(signed), "root_hex": root.hex(),
            "message_hex": batch_signing_bytes(len(signed), root).hex(), "sig_hex": signed[0].signature.hex(),
            "entries": [{"index": s.batch.index, "cbor_hex": encode_entry(s).hex(), "leaf_hash_hex": leaf_hash(encode_entry(s)).hex(),
                         "signing_bytes_hex": signing_bytes(s.entry).hex(), "batch_leaf_hash_hex": leaf.hex(),
                         "proof_hex": [h.hex() for h in s.batch.proof]}
                        for s, leaf in zip(signed, leaves, strict=True) if s.batch is not None],
        })

    good = cbor2.loads(encode_entry(five[2]))  # index 2 of 5: a proof of 3 hashes
    index, size, proof = good["batch"]

    def canon(**changes: object) -> bytes:
        return cbor2.dumps({k: v for k, v in {**good, **changes}.items() if v is not DROP}, canonical=True)

    h = proof[0]
    malformed = [
        ("batch: proof one hash short", canon(batch=[index, size, proof[:-1]]), "needs exactly 3"),
        ("batch: proof one hash long", canon(batch=[index, size, proof + [h]]), "needs exactly 3"),
        ("batch: index >= size", canon(batch=[size, size, proof]), "out of range"),
        ("batch: negative index", canon(batch=[-1, size, proof]), "out of range"),
        ("batch: size 0", canon(batch=[0, 0, []]), "batch size must be"),
        ("batch: size over MAX_SIGNING_BATCH", canon(batch=[0, MAX_SIGNING_BATCH + 1, [h] * 17]), "batch size must be"),
        ("batch: extra item in the array", canon(batch=[index, size, proof, 0]), "must be an array [index, size, proof]"),
        ("batch: two items", canon(batch=[index, size]), "must be an array [index, size, proof]"),
        ("batch: not an array", canon(batch=b"\x00" * 32), "must be an array [index, size, proof]"),
        ("batch: text index", canon(batch=["2", size, proof]), "two unsigned integers"),
        ("batch: float size", canon(batch=[index, 5.0, proof]), "two unsigned integers"),
        ("batch: proof not an array", canon(batch=[index, size, h]), "must end with an array"),
        ("batch: 31-byte proof hash", canon(batch=[index, size, [h[:31]] + proof[1:]]), "32-byte hashes"),
        ("batch: proof hash nested in an array", canon(batch=[index, size, [[h]] + proof[1:]]), "not well-formed"),
        ("batch: null", canon(batch=None), "null"),
        ("batch: non-shortest index", _map([(k, RawItem(b"\x83\x18\x02" + cbor2.dumps(size) + cbor2.dumps(proof))
                                             if k == "batch" else v) for k, v in good.items()]), "deterministic"),
        ("batch: key out of order (before type)",
         _map(sorted(good.items(), key=lambda kv: (kv[0] != "v", kv[0] != "sig", kv[0] != "batch"))), "deterministic"),
        ("batch: on an issuer registration",
         cbor2.dumps({**cbor2.loads(encode_entry(sign_entry(IssuerRegistration(pub, "Example Issuer GmbH",
                      cbor2.dumps({"v": 1}, canonical=True), 1_790_000_000), key))), "batch": [0, 1, []]},
                     canonical=True), "unknown field"),
    ]
    flipped = bytes([h[0] ^ 1]) + h[1:]
    single = encode_entry(sign_entry(five[2].entry, key))
    bad_sigs = [
        ("batch: proof hash bit flipped", canon(batch=[index, size, [flipped] + proof[1:]]), pub, "does not verify"),
        ("batch: entry field changed after signing", canon(issued_at=good["issued_at"] + 1), pub, "does not verify"),
        ("batch: index changed (same proof length)", canon(batch=[index + 1, size, proof]), pub, "does not verify"),
        ("batch: size changed (same proof length)", canon(batch=[index, size + 1, proof]), pub, "does not verify"),
        ("batch: signature flipped", canon(sig=bytes([good["sig"][0] ^ 1]) + good["sig"][1:]), pub, "does not verify"),
        ("batch signature without the batch field", canon(batch=DROP), pub, "does not verify"),
        ("single signature with a batch field", cbor2.dumps({**cbor2.loads(single), "batch": good["batch"]},
                                                            canonical=True), pub, "does not verify"),
    ]
    return (
        batches,
        [{"desc": d, "cbor_hex": b.hex(), "error": e} for d, b, e in malformed],
        [{"desc": d, "cbor_hex": b.hex(), "public_key_hex": k.hex(), "error": e} for d, b, k, e in bad_sigs],
    )


DROP = object()


def main() -> None:
    (HERE / "entries.json").write_text(json.dumps(entries(), indent=2) + "\n", encoding="utf-8")
    (HERE / "notes.json").write_text(json.dumps(notes(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
