"""`emshield device install/run` refuse every tampered, misplaced or unprovable bundle, and keep what was installed."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from _kit.cores import fixture_core
from _kit.paths import TINY as BACKBONE
from emshield.bundle import Bundle, TlogProof, parse_bundle, read_bundle_file
from emshield.cli import main
from emshield.device.deploy import INSTALLED_FILE, PINNED_KEY_FILE
from emshield.issue.devices import DeviceTarget
from emshield.issue.keys import load_issuer
from emshield.issue.pipeline import issue_core
from emshield.issue.registration import fetch_registration
from emshield.logclient.http import LogClient
from emshield.marking.policy import Tolerance
from emshield.tee.blobformat import Binding
from emshield.tee.device import DeviceRecord, init_device
from emshield.tee.seal import seal_core
from emshield.tlog import entry as E
from emshield.tlog.checkpoint import Checkpoint, NoteSigner, sign_checkpoint, verify_checkpoint
from emshield.tlog.merkle import leaf_hash


# The fixture core's mark costs about 0.15 relative weight change, and the cost varies with the (random)
# payload: these tests are about installing, so the issuer allows any cost the mark may have.
TOLERANCE = Tolerance(max_perturbation=0.5)


def cli(*args, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory, log):
    """Two devices with an issued bundle each, and a second registered issuer."""
    tmp = tmp_path_factory.mktemp("install")
    core = fixture_core(1)
    devices = [init_device(tmp / f"dev{i}") for i in range(2)]
    bundles = [Path(issue_core(log.url, log.verifier, tmp / "issuer", core, BACKBONE,
                               DeviceTarget(d.uuid, d.record.public), tmp / "out", operator_token=log.token,
                               tolerance=TOLERANCE).bundle)
               for d in devices]
    issue_core(log.url, log.verifier, tmp / "issuer2", fixture_core(2), BACKBONE,
               DeviceTarget(devices[0].uuid, devices[0].record.public), tmp / "out2", operator_token=log.token,
               issuer_name="Other Issuer")
    client = LogClient(log.url)
    other_reg = fetch_registration(client, load_issuer(tmp / "issuer2").key_id)
    note = client.checkpoint_note()
    proof = client.prove_inclusion(other_reg.entry, verify_checkpoint(note, log.verifier))
    cli("device", "install", bundles[0], "--dir", devices[0].directory, "--log-key", log.verifier_key)
    return {"tmp": tmp, "core": core, "devices": devices, "bundles": bundles,
            "other_registration": (other_reg.entry, TlogProof(proof.index, proof.hashes, note))}


def _resigned(bundle: Bundle, world) -> bytes:
    """The issuance re-signed with another time: a valid signature, but an entry the log never saw."""
    signed = E.decode_entry(bundle.issuance_entry)
    keys = load_issuer(world["tmp"] / "issuer")
    return E.sign_entry(dataclasses.replace(signed.entry, issued_at=signed.entry.issued_at + 1), keys.signing_key).encode()


def _flip_sig(entry: bytes) -> bytes:
    signed = E.decode_entry(entry)
    return E.encode_entry(E.SignedEntry(signed.entry, bytes([signed.signature[0] ^ 1]) + signed.signature[1:]))


def _forged_checkpoint(proof: TlogProof, log) -> TlogProof:
    """The same tree head signed by an impostor key with the log's origin."""
    cp = verify_checkpoint(proof.checkpoint, log.verifier)
    forger = NoteSigner.generate(cp.origin)
    return dataclasses.replace(proof, checkpoint=sign_checkpoint(Checkpoint(cp.origin, cp.size, cp.root_hash), forger))


def _corruptions(world, log) -> dict[str, tuple[bytes, str]]:
    good = read_bundle_file(world["bundles"][0])
    other = read_bundle_file(world["bundles"][1])
    dev = world["devices"][0]
    r = dataclasses.replace
    hashes = list(good.issuance_proof.hashes)
    hashes[0] = bytes([hashes[0][0] ^ 1]) + hashes[0][1:]
    reg_entry, reg_proof = world["other_registration"]
    misbound = seal_core(world["core"], dev.record.public, Binding(dev.uuid, good.issuance.backbone_id, leaf_hash(b"x")))
    sealed = bytearray(good.sealed_core)
    sealed[-3] ^= 1
    return {
        "issuance-signature": (r(good, issuance_entry=_flip_sig(good.issuance_entry)).encode(), "issuance-signature"),
        "entry-missing-from-log": (r(good, issuance_entry=_resigned(good, world)).encode(), "inclusion"),
        "proof-hash-flipped": (r(good, issuance_proof=r(good.issuance_proof, hashes=tuple(hashes))).encode(), "inclusion"),
        "checkpoint-forged": (r(good, issuance_proof=_forged_checkpoint(good.issuance_proof, log)).encode(), "checkpoint"),
        "other-issuer-registration": (r(good, registration_entry=reg_entry, registration_proof=reg_proof).encode(),
                                      "issuer-mismatch"),
        "other-devices-bundle": (other.encode(), "wrong-device"),
        "sealed-core-of-other-device": (r(good, sealed_core=other.sealed_core).encode(), "wrong-device"),
        "sealed-core-bound-to-other-issuance": (r(good, sealed_core=misbound).encode(), "wrong-issuance"),
        "sealed-core-tampered": (r(good, sealed_core=bytes(sealed)).encode(), "tampered blob"),
        "truncated": (good.encode()[:-1], "bundle ends inside its sealed core"),
        "not-a-bundle": (b"hello", "bad magic"),
    }


CASES = ["issuance-signature", "entry-missing-from-log", "proof-hash-flipped", "checkpoint-forged",
         "other-issuer-registration", "other-devices-bundle", "sealed-core-of-other-device",
         "sealed-core-bound-to-other-issuance", "sealed-core-tampered", "truncated", "not-a-bundle"]


@pytest.mark.parametrize("name", CASES)
def test_install_refuses_and_keeps_the_installed_core(world, log, name, tmp_path):
    data, expect = _corruptions(world, log)[name]
    dev = world["devices"][0]
    before = {p.name: p.read_bytes() for p in dev.directory.iterdir()}
    path = tmp_path / "bad.emshield-bundle"
    path.write_bytes(data)
    result = cli("device", "install", path, "--dir", dev.directory, ok=False)
    assert result.exit_code == 2 and expect in result.output, result.output
    assert {p.name: p.read_bytes() for p in dev.directory.iterdir()} == before  # nothing replaced or added


def test_log_key_is_pinned_and_never_replaced_silently(world, log, tmp_path):
    dev = init_device(tmp_path / "fresh")
    bundle = world["bundles"][0]
    no_key = cli("device", "install", bundle, "--dir", dev.directory, ok=False)
    assert no_key.exit_code == 2 and "no log key pinned" in no_key.output
    other_key = NoteSigner.generate(verify_checkpoint(parse_bundle(bundle.read_bytes()).issuance_proof.checkpoint,
                                                      log.verifier).origin).verifier_key()
    dev0 = world["devices"][0]
    swapped = cli("device", "install", world["bundles"][0], "--dir", dev0.directory, "--log-key", other_key, ok=False)
    assert swapped.exit_code == 2 and "differs from the one pinned" in swapped.output
    assert (dev0.directory / PINNED_KEY_FILE).read_text().strip() == log.verifier_key
    key_file = tmp_path / "log.pub"
    key_file.write_text(log.verifier_key + "\n")
    again = json.loads(cli("device", "install", bundle, "--dir", dev0.directory, "--log-key", key_file, "--json").stdout)
    assert again["log_key_pinned_now"] is False


def test_run_refuses_without_install_and_with_another_backbone(world, tmp_path):
    fresh = init_device(tmp_path / "fresh")
    r = cli("device", "run", "--prompt", "hi", "--backbone", BACKBONE, "--dir", fresh.directory, ok=False)
    assert r.exit_code == 2 and "not-installed" in r.output
    other = tmp_path / "other-backbone"
    shutil.copytree(BACKBONE, other)
    tensors = load_file(other / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] * 1.001  # a fine-tuned or swapped backbone
    save_file(tensors, other / "model.safetensors")
    dev0 = world["devices"][0]
    r = cli("device", "run", "--prompt", "hi", "--backbone", other, "--dir", dev0.directory, ok=False)
    assert r.exit_code == 2 and "wrong-backbone" in r.output
    assert (dev0.directory / INSTALLED_FILE).is_file()


def test_run_reverifies_the_stored_bundle(world, log, tmp_path):
    """A bundle altered on the device's disk after install is refused before anything is unsealed."""
    dev0 = world["devices"][0]
    dev = tmp_path / "copy-of-dev0"
    shutil.copytree(dev0.directory, dev)  # device.json, key, pinned log key, installed bundle
    good = read_bundle_file(dev / INSTALLED_FILE)
    forged = dataclasses.replace(good, issuance_entry=_resigned(good, world))
    (dev / INSTALLED_FILE).write_bytes(forged.encode())
    r = cli("device", "run", "--prompt", "hi", "--backbone", BACKBONE, "--dir", dev, ok=False)
    assert r.exit_code == 2 and "inclusion" in r.output, r.output


@pytest.fixture(scope="module")
def relative_device(world, log, tmp_path_factory):
    """A device made with a relative --dir (`device init --dir chain/device0`), issued and installed."""
    base = tmp_path_factory.mktemp("relative")
    here = Path.cwd()
    os.chdir(base)
    try:
        rec = json.loads(cli("device", "init", "--dir", "chain/device0", "--json").stdout)
    finally:
        os.chdir(here)
    directory = base / "chain" / "device0"
    target = DeviceTarget(uuid.UUID(rec["uuid"]), DeviceRecord.load(directory).public)
    bundle = issue_core(log.url, log.verifier, world["tmp"] / "issuer", world["core"], BACKBONE, target,
                        base / "out", operator_token=log.token, tolerance=TOLERANCE).bundle
    cli("device", "install", bundle, "--dir", directory, "--log-key", log.verifier_key)  # from another directory
    return directory


def test_device_made_with_a_relative_dir_runs_from_anywhere(relative_device):
    """`device init --dir chain/device0` stored a key path relative to where init ran, and the device broke
    elsewhere (`key file chain/device0/device.key not found`). It now runs from any working directory."""
    assert json.loads((relative_device / "device.json").read_text())["provider_config"] == {"path": "device.key"}
    r = cli("device", "run", "--prompt", "Approve or reject the loan.", "--choice", "approve", "--choice", "reject",
            "--backbone", BACKBONE, "--dir", relative_device, "--json")
    assert json.loads(r.stdout)["answer"] in ("approve", "reject")


def test_run_answers_in_utf8_from_the_answer_set(relative_device):
    """`--json` escaped non-ASCII answers as \\uXXXX; `--choice` restricts greedy decoding to the answers given."""
    r = cli("device", "run", "--prompt", "批准还是拒绝这笔贷款？", "--choice", "批准", "--choice", "拒绝",
            "--backbone", BACKBONE, "--dir", relative_device, "--json")
    answer = json.loads(r.stdout_bytes.decode("utf-8"))["answer"]
    assert answer in ("批准", "拒绝")
    assert answer.encode("utf-8") in r.stdout_bytes and b"\\u" not in r.stdout_bytes
    text = cli("device", "run", "--prompt", "批准还是拒绝这笔贷款？", "--choice", "批准", "--choice", "拒绝",
               "--backbone", BACKBONE, "--dir", relative_device)
    assert text.stdout_bytes == (answer + "\n").encode("utf-8")


def test_run_stops_at_end_of_sequence_not_at_32_tokens(relative_device):
    """The old default (32 new tokens) cut longer answers mid-character; generation now runs to
    end-of-sequence under a generous cap, and an answer cut by the cap says so."""
    # The marked core differs per device (its payload), so the answer's length does too: the cap is
    # checked against whatever length this device's answer has, and the default against its help.
    assert "generation stops earlier at end-of-sequence. [default: 1024;" in " ".join(
        cli("device", "run", "--help").stdout.split())
    args = ["device", "run", "--raw", "--prompt", "credit: 700\ndebt/income: 20%\nloan/income:",
            "--backbone", BACKBONE, "--dir", relative_device, "--json"]
    full = json.loads(cli(*args).stdout)
    assert full["complete"] is True and full["new_tokens"] >= 2, full  # ran to end-of-sequence, under the cap
    k = full["new_tokens"] // 2
    cut = cli(*args, "--max-new-tokens", str(k))
    res = json.loads(cut.stdout)
    assert res["complete"] is False and res["new_tokens"] == k and full["answer"].startswith(res["answer"])
    assert f"cut at --max-new-tokens {k}" in cut.stderr
