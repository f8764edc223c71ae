"""The secret tier end to end against a real log on 127.0.0.1: `emshield trace` (issuer side) ranks
the issuances and names the leaker of a copy whose public mark was stripped with the published
parameters, and of a 2-device average; `--disclose` logs an attribution; `emshield-verify` checks
it with no secret and names the device "by disclosed key". Attributions that do not hold for the
file they name are reported and name nobody."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import numpy as np
from _kit.cores import tiny_core
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from emshield.cli import main as emshield_main
from emshield.core import LoraFactors
from emshield.issue.keys import ISSUER_KEY_FILE, MARKING_SECRET_FILE
from emshield.marking import secret
from emshield.marking.strip import strip_public_mark
from emshield.tlog.entry import Attribution, sign_entry
from emshield.tlog.merkle import leaf_hash
from verifier.verify.digest import suspect_sha256

from .test_verify_e2e import merged_with


def issuer_dir(world, tmp_path: Path) -> Path:
    """The world's issuer keys as an issuer directory (the trace reads the marking secret from it)."""
    d = tmp_path / "issuer"
    d.mkdir(mode=0o700)
    pem = world.issuer_keys.signing_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    for name, data in ((ISSUER_KEY_FILE, pem), (MARKING_SECRET_FILE, world.issuer_keys.marking_secret)):
        (d / name).write_bytes(data)
        os.chmod(d / name, stat.S_IRUSR | stat.S_IWUSR)
    return d


def run_trace(world, keys: Path, suspect: Path, *extra: str) -> tuple[int, dict]:
    args = ["trace", str(suspect), "--log", world.url, "--log-key", world.log_key, "--backbone", str(world.backbone),
            "--dir", str(keys), "--json", *extra]
    result = CliRunner().invoke(emshield_main, args)
    out = json.loads(result.stdout)
    return result.exit_code, out


def full_rank(deltas: dict[str, np.ndarray]) -> dict[str, LoraFactors]:
    """ΔW as "factors" (A = ΔW, B = I) so that merged_with can merge any ΔW."""
    return {k: LoraFactors(d.astype(np.float32), np.eye(d.shape[0], dtype=np.float32), 1.0) for k, d in deltas.items()}


def test_a_stripped_leak_is_traced_disclosed_and_verified_by_anyone(world, tmp_path: Path) -> None:
    leaker = world.issued[0]
    stripped = strip_public_mark({k: f.delta() for k, f in leaker.core.items()}, world.params)
    suspect = merged_with(world, full_rank(stripped), tmp_path / "stripped.safetensors")
    code, out = world.verify(suspect, backbone=True)
    assert out["device"] is None and not out["disclosed"], out  # the public mark is gone

    keys = issuer_dir(world, tmp_path)
    code, traced = run_trace(world, keys, suspect)
    assert code == 0, traced
    assert [r["leaf_index"] for r in traced["named"]] == [leaker.index]
    assert traced["ranked"][0]["leaf_index"] == leaker.index and traced["ranked"][0]["p_value"] <= 1e-6
    assert all(r["p_value"] > 1e-6 for r in traced["ranked"][1:])
    assert traced["issuances_scored"] == 3 and traced["suspect_sha256"] == suspect_sha256(suspect).hex()
    assert not traced["disclosures"]  # nothing is published without --disclose

    code, disclosed = run_trace(world, keys, suspect, "--disclose")
    assert code == 0, disclosed
    (d,) = disclosed["disclosures"]
    assert d["created"] and d["verified"] and d["issuance_index"] == leaker.index

    code, out = world.verify(suspect, backbone=True)
    assert code == 0 and out["verdict"] == "disclosed", out
    (m,) = out["disclosed"]
    assert set(m) == {"attribution_index", "attribution_leaf_hash", "issuance_index", "issuance_leaf_hash", "device_uuid",
                      "issuer", "issuer_key_id", "signer", "signer_key_id", "signed_by_issuing_key", "score", "p_value",
                      "threshold_p", "terms", "disclosed_score", "attributed_at", "proofs"}  # spec/verify.md §5
    assert m["device_uuid"] == str(leaker.device) and m["issuance_index"] == leaker.index
    assert m["attribution_index"] == d["leaf_index"] and m["signed_by_issuing_key"]
    assert m["p_value"] <= 1e-6 and abs(m["score"] - m["disclosed_score"]) < 1e-3
    assert out["reason"].startswith("device named by disclosed key")

    # a static tile mirror (no API, no index) finds the attribution by replaying the tiles
    from _kit.logs import StaticSite, wait_for_mirror
    from emshield.tlog.checkpoint import NoteVerifier

    wait_for_mirror(world.tiles, world.client.verified_checkpoint(NoteVerifier.from_verifier_key(world.log_key)).size)
    static = StaticSite(directory=world.tiles).start()
    try:
        code, mirrored = world.verify(suspect, log=static.url, backbone=True)
    finally:
        static.stop()
    assert code == 0 and mirrored["verdict"] == "disclosed" and mirrored["log"]["mode"] == "static tiles", mirrored
    assert [(x["device_uuid"], x["attribution_index"]) for x in mirrored["disclosed"]] == [(m["device_uuid"],
                                                                                             m["attribution_index"])]
    assert mirrored["disclosed"][0]["proofs"][f"attribution leaf {m['attribution_index']}"].startswith("full replay")

    # disclosing again appends nothing
    code, again = run_trace(world, keys, suspect, "--disclose")
    assert code == 0 and [(x["created"], x["leaf_index"]) for x in again["disclosures"]] == [(False, d["leaf_index"])]


def test_a_two_device_average_is_traced_to_its_colluders_only(world, tmp_path: Path) -> None:
    a, b = world.issued[1], world.issued[2]
    mix = {k: (a.core[k].delta() + b.core[k].delta()) / 2 for k in a.core}
    suspect = merged_with(world, full_rank(mix), tmp_path / "average.safetensors")
    code, traced = run_trace(world, issuer_dir(world, tmp_path), suspect, "--disclose")
    assert code == 0, traced
    named = {r["leaf_index"] for r in traced["named"]}
    assert named and named <= {a.index, b.index}, traced
    assert all(d["verified"] for d in traced["disclosures"])
    code, out = world.verify(suspect, backbone=True)
    assert code == 0 and {m["issuance_index"] for m in out["disclosed"]} == named, out


def test_an_unmarked_model_names_nobody(world, tmp_path: Path) -> None:
    suspect = merged_with(world, tiny_core(0), tmp_path / "unmarked.safetensors")
    code, traced = run_trace(world, issuer_dir(world, tmp_path), suspect, "--disclose")
    assert code == 1 and not traced["named"] and not traced["disclosures"], traced
    assert all(r["p_value"] > 1e-6 for r in traced["ranked"])


def test_a_disclosed_key_never_names_a_file_without_its_mark(world, tmp_path: Path) -> None:
    """An attribution whose key opens a real commitment, logged against a file that does not carry
    that issuance's mark (another device's copy): the verifier recomputes, rejects it, names nobody
    by it, and says why."""
    victim, other = world.issued[1], world.issued[0]
    suspect = merged_with(world, other.core, tmp_path / "other.safetensors")
    entry = next(h for h in world.client.issuances(device_uuid=str(victim.device)))
    from emshield.tlog.entry import decode_entry

    issuance = decode_entry(entry.leaf).entry
    dk = secret.detection_key(world.issuer_keys.marking_secret, world.params.backbone_id, issuance.device_uuid,
                              issuance.secret_mark_salt)
    att = Attribution(world.issuer_keys.key_id, entry.index, leaf_hash(entry.leaf), dk.key, dk.nonce,
                      suspect_sha256(suspect), 9_000_000, 128, int(time.time()))
    bogus = world.client.append(sign_entry(att, world.issuer_keys.signing_key).encode()).index
    code, out = world.verify(suspect, backbone=True)
    assert all(m["device_uuid"] != str(victim.device) for m in out["disclosed"]), out
    (r,) = [r for r in out["disclosures_rejected"] if r["attribution_index"] == bogus]
    assert "not present in this suspect" in r["reason"]
    assert out["verdict"] == "device" and out["device"]["device_uuid"] == str(other.device)  # its own public mark
