"""Regenerate the device-bundle test vectors (spec/bundle.md, "Test vectors").

    .venv/bin/python spec/vectors/bundle/generate.py [--force]

Keys, entries, the log tree, proofs and checkpoints are deterministic (Ed25519 signs
deterministically). The sealed core is not (HPKE encapsulation is randomised), so bundles.json is
kept as produced once: without --force the generator reuses the stored sealed cores and rebuilds
everything else (which comes out byte-identical unless the format changed). Every corruption is derived from the good bundle and names the error it must
raise: ``parse`` (BundleError from parse_bundle), ``verify:<check>`` (BundleVerificationError from
verify_bundle with that check) or ``install:<check>`` (emshield.device.deploy refuses the sealed core).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import sys
import uuid
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from emshield.bundle import Bundle, TlogProof, fingerprint_hash
from emshield.core import LoraFactors
from emshield.marking.fingerprint import fingerprint_factors
from emshield.marking.params import LayerSpec, MarkingParams, verification_key
from emshield.tee.blobformat import Binding
from emshield.tee.devicekey import DevicePublicKey
from emshield.tee.seal import seal_core
from emshield.tlog import entry as E
from emshield.tlog import merkle
from emshield.tlog.checkpoint import Checkpoint, NoteSigner, sign_checkpoint

HERE = Path(__file__).resolve().parent
ORIGIN = "vectors.emshield.example/log"
T0 = 1_790_000_000


def det(label: str, n: int) -> bytes:
    """Fixed pseudo-random test bytes: SHAKE256 of a label (NOT a key-generation method)."""
    return hashlib.shake_256(b"emshield/test-vector/bundle/" + label.encode()).digest(n)


def key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(det(label, 32))


def raw(k: Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


LOG = NoteSigner(ORIGIN, key("log-key"))
OTHER_LOG = NoteSigner(ORIGIN, key("other-log-key"))  # same origin, another key: a forged log
ISSUER, OTHER_ISSUER = key("issuer-key"), key("other-issuer-key")
DEVICE_SECRET = det("device-secret", 32)
DEVICE_UUID = uuid.UUID(bytes=det("device-uuid", 16), version=4)
OTHER_UUID = uuid.UUID(bytes=det("other-device-uuid", 16), version=4)
BACKBONE_ID = det("backbone-id", 32)
LAYERS = ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight")


def sample_core() -> dict[str, LoraFactors]:
    rng = np.random.default_rng(8)
    return {name: LoraFactors(rng.standard_normal((2, 8)).astype(np.float32),
                              rng.standard_normal((8, 2)).astype(np.float32), 2.0) for name in LAYERS}


def marking_params(name: str) -> MarkingParams:
    return MarkingParams(BACKBONE_ID.hex(), verification_key(det("marking-secret-" + name, 32), BACKBONE_ID.hex()),
                         tuple(LayerSpec(n, 8, 8) for n in LAYERS))


def registration(k: Ed25519PrivateKey, name: str) -> bytes:
    return E.sign_entry(E.IssuerRegistration(raw(k), name, marking_params(name).to_cbor(), T0), k).encode()


FINGERPRINT = fingerprint_factors(sample_core(), marking_params("Vector Issuer")).to_cbor()


def issuance(k: Ed25519PrivateKey, device: uuid.UUID, n: int, fp_hash: bytes | None = None) -> bytes:
    entry = E.Issuance(device.bytes, BACKBONE_ID, det(f"commitment-{n}", 32), fp_hash or det(f"fingerprint-{n}", 32),
                       "both", T0 + n, E.issuer_key_id(raw(k)))
    return E.sign_entry(entry, k).encode()


REG = registration(ISSUER, "Vector Issuer")
ISS = issuance(ISSUER, DEVICE_UUID, 2, fingerprint_hash(FINGERPRINT))
# The log: registration, an issuance to another device, ours, the other issuer's registration and one of its issuances.
OTHER_ISS = issuance(OTHER_ISSUER, DEVICE_UUID, 4)
LEAVES = [REG, issuance(ISSUER, OTHER_UUID, 1), ISS, registration(OTHER_ISSUER, "Other Issuer"), OTHER_ISS]


def tree_nodes(leaves: list[bytes]) -> dict[tuple[int, int], bytes]:
    """Every perfect subtree hash of the tree (the node store merkle.inclusion_proof reads)."""
    nodes = {(0, i): merkle.leaf_hash(d) for i, d in enumerate(leaves)}
    level = 0
    while (level, 1) in nodes:
        i = 0
        while (level, 2 * i + 1) in nodes:
            nodes[(level + 1, i)] = merkle.node_hash(nodes[(level, 2 * i)], nodes[(level, 2 * i + 1)])
            i += 1
        level += 1
    return nodes


def signed_checkpoint(leaves: list[bytes], signer: NoteSigner = LOG) -> bytes:
    root = merkle.root_from_leaf_hashes([merkle.leaf_hash(d) for d in leaves])
    return sign_checkpoint(Checkpoint(ORIGIN, len(leaves), root), signer)


def proof(index: int, leaves: list[bytes] = LEAVES, checkpoint: bytes | None = None) -> TlogProof:
    nodes = tree_nodes(leaves)
    path = merkle.inclusion_proof(index, len(leaves), lambda ids: {i: nodes[i] for i in ids})
    return TlogProof(index, tuple(path), checkpoint or signed_checkpoint(leaves))


def good_bundle(sealed: bytes) -> Bundle:
    return Bundle(REG, proof(0), ISS, proof(2), FINGERPRINT, sealed)


def sealed_core(device: uuid.UUID = DEVICE_UUID, leaf: bytes | None = None) -> bytes:
    public = DevicePublicKey.from_secret(DEVICE_SECRET)
    return seal_core(sample_core(), public, Binding(device, BACKBONE_ID, leaf or merkle.leaf_hash(ISS)))


def _resign(entry_bytes: bytes, flip_sig: bool = False, **changes) -> bytes:
    signed = E.decode_entry(entry_bytes)
    if changes:
        return E.sign_entry(dataclasses.replace(signed.entry, **changes), ISSUER).encode()
    sig = bytearray(signed.signature)
    sig[0] ^= 1
    return E.encode_entry(E.SignedEntry(signed.entry, bytes(sig)))


def corruptions(good: Bundle, sealed_other_device: bytes, sealed_other_leaf: bytes) -> list[tuple[str, bytes, str]]:
    data = good.encode()
    reg_proof_at = 14 + len(good.registration_entry) + 4  # magic, version, length, entry, length
    r = dataclasses.replace
    other_tree = LEAVES[:4] + [issuance(ISSUER, OTHER_UUID, 9)]  # same size, another root
    not_logged = _resign(ISS, issued_at=T0 + 77)
    forged_cp = good.issuance_proof.checkpoint.replace(b"\n5\n", b"\n6\n", 1)  # body changed under the old signature

    iss_proof = good.issuance_proof.encode()
    return [
        ("bad-magic", b"X" + data[1:], "parse"),
        ("version-2", data[:8] + b"\x00\x02" + data[10:], "parse"),
        ("truncated", data[:-1], "parse"),
        ("trailing-byte", data + b"\x00", "parse"),
        ("empty", b"", "parse"),
        ("section-length-huge", data[:10] + b"\xff\xff\xff\xff" + data[14:], "parse"),
        ("registration-proof-header-v2", data[:reg_proof_at] + b"c2sp.org/tlog-proof@v2" + data[reg_proof_at + 22:],
         "parse"),
        ("proof-index-leading-zero", _splice_issuance_proof(good, iss_proof.replace(b"index 2\n", b"index 02\n")), "parse"),
        ("proof-extra-line", _splice_issuance_proof(good, iss_proof.replace(b"index 2\n", b"extra AA==\nindex 2\n")),
         "parse"),
        ("proof-hash-noncanonical-base64", _splice_issuance_proof(good, _noncanonical_hash(iss_proof)), "parse"),
        ("proof-hash-short", _splice_issuance_proof(good, _short_hash(iss_proof)), "parse"),
        ("proof-no-checkpoint", _splice_issuance_proof(good, iss_proof.split(b"\n\n")[0] + b"\n\n"), "parse"),
        ("sections-swapped", _swap_entries(good), "parse"),
        ("registration-signature", r(good, registration_entry=_resign(REG, True)).encode(), "verify:registration-signature"),
        ("issuance-signature", r(good, issuance_entry=_resign(ISS, True)).encode(), "verify:issuance-signature"),
        ("issuer-mismatch", r(good, issuance_entry=OTHER_ISS, issuance_proof=proof(4), fingerprint_record=b"\xa0").encode(),
         "verify:issuer-mismatch"),
        ("fingerprint-record-altered", r(good, fingerprint_record=good.fingerprint_record[:-1] + b"\x00").encode(),
         "verify:fingerprint-record"),
        ("fingerprint-record-missing", _drop_fingerprint(good), "parse"),
        ("entry-not-in-log", r(good, issuance_entry=not_logged).encode(), "verify:inclusion"),
        ("proof-wrong-index", r(good, issuance_proof=r(good.issuance_proof, index=1)).encode(), "verify:inclusion"),
        ("proof-index-beyond-tree", r(good, issuance_proof=r(good.issuance_proof, index=5)).encode(), "verify:inclusion"),
        ("proof-hash-flipped", r(good, issuance_proof=r(good.issuance_proof, hashes=_flip_first(good.issuance_proof))).encode(),
         "verify:inclusion"),
        ("proof-hash-dropped", r(good, issuance_proof=r(good.issuance_proof, hashes=good.issuance_proof.hashes[:-1])).encode(),
         "verify:inclusion"),
        ("checkpoint-other-tree", r(good, issuance_proof=r(good.issuance_proof, checkpoint=signed_checkpoint(other_tree))).encode(),
         "verify:inclusion"),
        ("checkpoint-body-altered", r(good, issuance_proof=r(good.issuance_proof, checkpoint=forged_cp)).encode(),
         "verify:checkpoint"),
        ("checkpoint-other-log-key", r(good, issuance_proof=proof(2, checkpoint=signed_checkpoint(LEAVES, OTHER_LOG))).encode(),
         "verify:checkpoint"),
        ("registration-checkpoint-other-log-key",
         r(good, registration_proof=proof(0, checkpoint=signed_checkpoint(LEAVES, OTHER_LOG))).encode(), "verify:checkpoint"),
        ("sealed-core-other-device", r(good, sealed_core=sealed_other_device).encode(), "install:wrong-device"),
        ("sealed-core-other-issuance", r(good, sealed_core=sealed_other_leaf).encode(), "install:wrong-issuance"),
        ("sealed-core-not-a-blob", r(good, sealed_core=b"not a sealed blob").encode(), "install:malformed"),
    ]


def _splice_issuance_proof(good: Bundle, text: bytes) -> bytes:
    """The good bundle with its issuance-proof section replaced by ``text`` (length prefix fixed)."""
    head = good.encode()
    reg_len = struct.unpack(">I", head[10:14])[0]
    at = 14 + reg_len
    rp_len = struct.unpack(">I", head[at: at + 4])[0]
    at += 4 + rp_len
    ie_len = struct.unpack(">I", head[at: at + 4])[0]
    at += 4 + ie_len
    ip_len = struct.unpack(">I", head[at: at + 4])[0]
    return head[:at] + struct.pack(">I", len(text)) + text + head[at + 4 + ip_len:]


def _drop_fingerprint(good: Bundle) -> bytes:
    """The good bundle with an empty fingerprint section although the issuance has a fingerprint hash."""
    data = good.encode()
    at = len(data) - len(good.sealed_core) - 8 - len(good.fingerprint_record) - 4
    return data[:at] + struct.pack(">I", 0) + data[at + 4 + len(good.fingerprint_record):]


def _swap_entries(good: Bundle) -> bytes:
    """Registration and issuance entries (with their proofs) in each other's places."""
    parts = [good.issuance_entry, good.issuance_proof.encode(), good.registration_entry, good.registration_proof.encode(),
             good.fingerprint_record]
    out = [b"EMSHBNDL\x00\x01"] + [struct.pack(">I", len(p)) + p for p in parts]
    return b"".join(out) + struct.pack(">Q", len(good.sealed_core)) + good.sealed_core


def _flip_first(p: TlogProof) -> tuple[bytes, ...]:
    first = bytearray(p.hashes[0])
    first[0] ^= 1
    return (bytes(first), *p.hashes[1:])


def _noncanonical_hash(text: bytes) -> bytes:
    """The first hash line with non-zero padding bits (decodes to the same bytes, but is not canonical)."""
    lines = text.split(b"\n")
    line = lines[2]  # header, index, first hash
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(line[-2:-1])
    lines[2] = line[:-2] + alphabet[last ^ 1: (last ^ 1) + 1] + b"="
    return b"\n".join(lines)


def _short_hash(text: bytes) -> bytes:
    lines = text.split(b"\n")
    lines[2] = b"AAAA"
    return b"\n".join(lines)


def main() -> None:
    path = HERE / "bundles.json"
    if path.exists() and "--force" not in sys.argv:
        stored = json.loads(path.read_text())
        sealed = bytes.fromhex(stored["sealed_core"])
        other_device = bytes.fromhex(stored["sealed_core_other_device"])
        other_leaf = bytes.fromhex(stored["sealed_core_other_issuance"])
    else:
        sealed, other_device = sealed_core(), sealed_core(OTHER_UUID)
        other_leaf = sealed_core(leaf=merkle.leaf_hash(LEAVES[1]))
    good = good_bundle(sealed)
    out = {
        "produced_by": "spec/vectors/bundle/generate.py (sealed cores are randomised: produced once)",
        "log_verifier_key": LOG.verifier_key(),
        "origin": ORIGIN,
        "device_secret": DEVICE_SECRET.hex(),
        "device_uuid": str(DEVICE_UUID),
        "backbone_id": BACKBONE_ID.hex(),
        "issuer_public_key": raw(ISSUER).hex(),
        "issuance_index": 2,
        "issuance_leaf_hash": merkle.leaf_hash(ISS).hex(),
        "registration_index": 0,
        "tree_size": len(LEAVES),
        "issuance_tlog_proof": good.issuance_proof.encode().decode(),
        "fingerprint_record": FINGERPRINT.hex(),
        "sealed_core": sealed.hex(),
        "sealed_core_other_device": other_device.hex(),
        "sealed_core_other_issuance": other_leaf.hex(),
        "bundle": good.encode().hex(),
        "corruptions": [{"name": n, "expect": e, "bundle": b.hex()}
                        for n, b, e in corruptions(good, other_device, other_leaf)],
    }
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({len(out['corruptions'])} corruptions)")


if __name__ == "__main__":
    main()
