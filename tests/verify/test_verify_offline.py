"""`emshield-verify --bundle`: air-gapped verification of a suspect against one issuance bundle
(made by the issuance pipeline), with the pinned log key and no network."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from _kit.cores import tiny_core
from emshield.bundle import parse_bundle
from emshield.model.adapter import write_peft_adapter
from emshield.model.io import open_tensors, save_tensors
from emshield.tlog.checkpoint import NoteSigner


def offline(world, suspect: Path, bundle: Path, *extra: str, log_key: str | None = None,
            backbone: bool = False) -> tuple[int, dict]:
    return world.verify(suspect, "--bundle", str(bundle), *extra, log=None, backbone=backbone, log_key=log_key)


def merged_bf16(world, core, out: Path) -> Path:
    with open_tensors(world.backbone) as bb:
        tensors = {n: (bb.get(n).double() + (torch.from_numpy(core[n].delta()) if n in core else 0)).to(torch.bfloat16)
                   for n in bb.keys()}
    return save_tensors(tensors, out)


def test_leaked_copy_matches_its_own_bundle_only(world, tmp_path: Path) -> None:
    mine, sibling = world.issued[0], world.issued[1]
    suspect = merged_bf16(world, mine.core, tmp_path / "leak.safetensors")
    code, out = offline(world, suspect, mine.bundle, backbone=True)
    assert code == 0 and out["verdict"] == "device", out
    m = out["device"]
    assert (m["device_uuid"], m["leaf_index"], m["method"]) == (str(mine.device), mine.index, "watermark")
    assert m["proofs"]["inclusion"].startswith(f"bundle tlog-proof at leaf {mine.index} verified")
    assert out["log"]["mode"] == "offline" and m["issuer_revoked"] is None
    assert m["watermark"]["p_value"] <= m["watermark"]["p_value_threshold"]
    code, out = offline(world, suspect, sibling.bundle, backbone=True)
    assert code == 1 and out["device"] is None and out["core"] is None
    assert "another issuance" in out["reason"]


def test_another_devices_bundle_never_falls_back_to_the_fingerprint(world, tmp_path: Path) -> None:
    """The leak carries device 0's watermark; checked against device 1's bundle (the same core,
    another mark, fingerprint within threshold) it must not name device 1 by fingerprint — nor
    report device 1's core: the watermark shows it is another issuance (spec/verify.md §6)."""
    mine, sibling = world.issued[0], world.issued[1]
    suspect = write_peft_adapter(mine.core, tmp_path / "adapter")
    code, out = offline(world, suspect, sibling.bundle)
    assert code == 1 and out["verdict"] == "none", out
    assert out["watermark_readings"][0]["decoded"]
    assert str(sibling.device) not in json.dumps(out)


def test_fingerprint_only_bundle(world, tmp_path: Path) -> None:
    """The bundle carries the issuance's side record: a changed copy is compared fuzzily, offline,
    and identifies the bundle's core (exit 6), never its device."""
    target = world.issued[3]
    code, out = offline(world, write_peft_adapter(target.core, tmp_path / "adapter"), target.bundle)
    assert code == 6 and out["verdict"] == "core" and out["device"] is None
    assert out["core"]["distance"] == 0.0
    assert [i["leaf_index"] for i in out["core"]["issuances"]] == [target.index]
    suspect = merged_bf16(world, target.core, tmp_path / "leak.safetensors")
    code, out = offline(world, suspect, target.bundle, backbone=True)
    assert code == 6 and out["verdict"] == "core"
    assert 0 < out["core"]["distance"] <= out["core"]["threshold"]
    assert "offline" in out["reason"]
    other = merged_bf16(world, world.issued[4].core, tmp_path / "other.safetensors")
    code, out = offline(world, other, target.bundle, backbone=True)
    assert code == 1 and out["verdict"] == "none" and "closest published fingerprint" in out["reason"]


def test_unmarked_model_does_not_match_a_bundle(world, tmp_path: Path) -> None:
    suspect = write_peft_adapter(tiny_core(77), tmp_path / "adapter")
    code, out = offline(world, suspect, world.issued[0].bundle)
    assert code == 1 and out["verdict"] == "none" and "no watermark is read" in out["reason"]


def _tampered(bundle: Path, tmp: Path) -> dict[str, Path]:
    data = bundle.read_bytes()
    b = parse_bundle(data)
    out = {}
    proof_end = len(data) - len(b.sealed_core) - 8 - len(b.fingerprint_record) - 4  # sections' length prefixes
    flipped = bytearray(data)
    flipped[proof_end - 40] ^= 1  # inside the issuance proof's checkpoint signature
    out["checkpoint"] = flipped
    fp_at = data.index(b.fingerprint_record)
    flipped = bytearray(data)
    flipped[fp_at + len(b.fingerprint_record) // 2] ^= 1
    out["fingerprint-record"] = flipped
    entry_at = data.index(b.issuance_entry)
    flipped = bytearray(data)
    flipped[entry_at + len(b.issuance_entry) - 5] ^= 1  # the issuance entry's signature
    out["issuance-signature"] = flipped
    out["bundle ends"] = data[:-3]
    paths = {}
    for name, raw in out.items():
        paths[name] = tmp / f"{name.replace(' ', '-')}.emshield-bundle"
        paths[name].write_bytes(bytes(raw))
    return paths


def test_tampered_or_foreign_bundle_is_bad_input(world, tmp_path: Path) -> None:
    target = world.issued[0]
    suspect = write_peft_adapter(target.core, tmp_path / "adapter")
    for name, path in _tampered(target.bundle, tmp_path).items():  # name: what the refusal must name
        code, out = offline(world, suspect, path)
        assert code == 2 and out["error"] == "bad_input", (name, out)
        assert "does not verify" in out["detail"] and name in out["detail"], out["detail"]
    stranger = NoteSigner.generate(world.log_key.split("+", 1)[0]).verifier.verifier_key()
    code, out = offline(world, suspect, target.bundle, log_key=stranger)
    assert code == 2 and "checkpoint" in out["detail"]
    code, out = world.verify(suspect, "--bundle", str(target.bundle))  # and --log: one or the other
    assert code == 2 and "either --log" in out["detail"]
