"""Bundle format vectors (spec/vectors/bundle/bundles.json) and strict parsing of bundles and tlog-proofs."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from emshield.bundle import (
    MAX_BUNDLE_SIZE,
    TLOG_PROOF_HEADER,
    BundleError,
    BundleVerificationError,
    TlogProof,
    parse_bundle,
    read_bundle_file,
    verify_bundle,
    write_bundle_file,
)
from emshield.device.deploy import DeployError, check_sealed_core
from emshield.tlog.checkpoint import NoteSigner, NoteVerifier

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "spec/vectors/bundle/bundles.json").read_text())
LOG_KEY = NoteVerifier.from_verifier_key(VECTORS["log_verifier_key"])
GOOD = bytes.fromhex(VECTORS["bundle"])
DEVICE = uuid.UUID(VECTORS["device_uuid"])


def test_good_bundle_parses_verifies_and_reencodes_byte_for_byte():
    bundle = parse_bundle(GOOD)
    assert bundle.encode() == GOOD
    v = verify_bundle(bundle, LOG_KEY, VECTORS["origin"])
    assert v.device_uuid == DEVICE
    assert v.backbone_id.hex() == VECTORS["backbone_id"]
    assert v.issuance_index == VECTORS["issuance_index"] and v.registration_index == VECTORS["registration_index"]
    assert v.issuance_leaf_hash.hex() == VECTORS["issuance_leaf_hash"]
    assert v.checkpoint.size == VECTORS["tree_size"] and v.checkpoint.origin == VECTORS["origin"]
    assert v.registration.issuer_public_key.hex() == VECTORS["issuer_public_key"]
    assert v.sealed_core == bytes.fromhex(VECTORS["sealed_core"])
    check_sealed_core(v, DEVICE)  # bound to this device, backbone and issuance
    assert v.fingerprint_record == bytes.fromhex(VECTORS["fingerprint_record"])


def test_bundle_checks_the_fingerprint_hash_as_marking_defines_it():
    from emshield.bundle import fingerprint_hash
    from emshield.marking.fingerprint import Fingerprint

    record = bytes.fromhex(VECTORS["fingerprint_record"])
    assert fingerprint_hash(record) == Fingerprint.from_cbor(record).hash() == parse_bundle(GOOD).issuance.fingerprint_hash


def test_issuance_proof_is_c2sp_tlog_proof_text():
    text = VECTORS["issuance_tlog_proof"].encode()
    assert parse_bundle(GOOD).issuance_proof.encode() == text
    head, checkpoint = text.split(b"\n\n", 1)
    lines = head.split(b"\n")
    assert lines[0] == b"c2sp.org/tlog-proof@v1" == TLOG_PROOF_HEADER
    assert lines[1] == b"index %d" % VECTORS["issuance_index"]
    assert all(len(base64.b64decode(h, validate=True)) == 32 for h in lines[2:]) and len(lines) > 2
    assert checkpoint.startswith(VECTORS["origin"].encode() + b"\n%d\n" % VECTORS["tree_size"])
    assert "\n\n\u2014 " + VECTORS["origin"] in checkpoint.decode()


def test_tlog_proof_extra_line_roundtrip():
    cp = parse_bundle(GOOD).issuance_proof.checkpoint
    p = TlogProof(7, (b"\x01" * 32,), cp, extra=b"hello")
    text = p.encode()
    assert text.split(b"\n")[:3] == [b"c2sp.org/tlog-proof@v1", b"extra aGVsbG8=", b"index 7"]
    assert TlogProof.parse(text) == p
    assert TlogProof.parse(TlogProof(0, (), cp).encode()).hashes == ()


@pytest.mark.parametrize("case", VECTORS["corruptions"], ids=lambda c: c["name"])
def test_each_named_corruption_fails_as_the_vector_says(case):
    data = bytes.fromhex(case["bundle"])
    stage, _, check = case["expect"].partition(":")
    if stage == "parse":
        with pytest.raises(BundleError) as exc:
            parse_bundle(data)
        assert not isinstance(exc.value, BundleVerificationError)
        return
    bundle = parse_bundle(data)
    if stage == "verify":
        with pytest.raises(BundleVerificationError) as exc:
            verify_bundle(bundle, LOG_KEY)
        assert exc.value.check == check
        return
    assert stage == "install"
    verified = verify_bundle(bundle, LOG_KEY)
    with pytest.raises(DeployError) as exc:
        check_sealed_core(verified, DEVICE)
    assert exc.value.check == check


def test_other_log_key_or_origin_is_refused():
    other = NoteSigner.generate(VECTORS["origin"]).verifier
    with pytest.raises(BundleVerificationError) as exc:
        verify_bundle(parse_bundle(GOOD), other)
    assert exc.value.check == "checkpoint"
    with pytest.raises(BundleVerificationError) as exc:
        verify_bundle(parse_bundle(GOOD), LOG_KEY, "another.example/log")
    assert exc.value.check == "checkpoint"


def test_every_bit_flip_before_the_sealed_core_is_refused():
    sealed_len = len(bytes.fromhex(VECTORS["sealed_core"]))
    signed_part = len(GOOD) - sealed_len - 8  # up to the sealed core's length field
    rng = random.Random(8)
    positions = sorted(rng.sample(range(signed_part), 400)) + list(range(0, 40))
    for pos in positions:
        data = bytearray(GOOD)
        data[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(BundleError):
            verify_bundle(parse_bundle(bytes(data)), LOG_KEY)


def test_every_truncation_is_a_parse_error():
    for n in range(0, len(GOOD), 7):
        with pytest.raises(BundleError):
            parse_bundle(GOOD[:n])


def test_files_roundtrip_and_oversized_file_refused_before_reading(tmp_path):
    path = write_bundle_file(tmp_path / "x.emshield-bundle", parse_bundle(GOOD))
    assert path.read_bytes() == GOOD and read_bundle_file(path).encode() == GOOD
    assert [p.name for p in tmp_path.iterdir()] == ["x.emshield-bundle"]  # no partial file left
    huge = tmp_path / "huge.emshield-bundle"
    with open(huge, "wb") as f:
        f.truncate(MAX_BUNDLE_SIZE + 1)  # sparse: reading it would take GiBs
    with pytest.raises(BundleError, match="over the"):
        read_bundle_file(huge)
    with pytest.raises(BundleError, match="cannot read"):
        read_bundle_file(tmp_path / "missing")


def test_bundle_module_imports_only_the_log_core():
    code = ("import sys, emshield.bundle; print(' '.join(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('emshield', 'log_server', 'torch', 'numpy', 'flask', 'peft', 'verifier'))))")
    mods = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert mods and all(m in ("emshield", "emshield.bundle", "emshield.cbor") or m.startswith("emshield.tlog")
                        for m in mods), mods
