"""`emshield-verify` end to end against a real log on 127.0.0.1: issued cores as adapters and as
merged models, the marking suite's attacks, unmarked models and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from _kit.cores import (
    finetune,
    int8_rows,
    int_rows,
    noise,
    prune,
    refactorise,
    tiny_core,
)

from emshield.core import LoraFactors
from emshield.marking import policy
from emshield.marking.params import payload_for_device
from emshield.model.adapter import save_core, write_peft_adapter
from emshield.model.io import open_tensors, save_sharded, save_tensors
from emshield.model.merge import write_merged
from emshield.tlog.checkpoint import NoteVerifier

BIN = Path(sys.executable).parent


def run_verify(world, suspect: Path, *extra: str, backbone: bool = True) -> tuple[int, dict]:
    """The CLI in-process (the console script itself is run once, in test_text_output)."""
    return world.verify(suspect, *extra, backbone=backbone)


def merged_with(world, core: dict[str, LoraFactors], out: Path, transform=None, dtype=torch.float32) -> Path:
    """Merge ``core`` into the backbone, apply ``transform`` to each merged marked weight (numpy, float64
    ΔW in, attacked ΔW out) and store every tensor in ``dtype``."""
    tensors = {}
    with open_tensors(world.backbone) as bb:
        for name in bb.keys():
            w = bb.get(name).to(torch.float64)
            if name in core:
                delta = core[name].delta()
                if transform is not None:
                    delta = transform(delta, w.numpy())
                w = w + torch.from_numpy(np.asarray(delta, dtype=np.float64))
            tensors[name] = w.to(dtype)
    return save_tensors(tensors, out)


def assert_names(out: dict, issued, method: str = "watermark") -> None:
    assert out["verdict"] == "device" and out["exit_code"] == 0, out
    m = out["device"]
    assert m["device_uuid"] == str(issued.device)
    assert m["leaf_index"] == issued.index
    assert m["method"] == method
    assert m["issuer"] == "Acme Edge Models"
    assert m["proofs"]["inclusion"].startswith(("inclusion proof at leaf", "full replay"))


def test_adapter_folder_names_its_device(world, tmp_path: Path) -> None:
    target = world.issued[1]
    folder = write_peft_adapter(target.core, tmp_path / "adapter")
    code, out = run_verify(world, folder, backbone=False)
    assert code == 0
    assert_names(out, target, "watermark")
    wm = out["device"]["watermark"]
    assert wm["bit_errors"] == 0 and wm["p_value"] <= wm["p_value_threshold"] <= 1e-9
    fp = out["device"]["fingerprint"]
    assert fp["match"] and fp["distance"] < 0.01 and fp["side_record"].startswith("verified")


def test_merged_safetensors_folder_and_pt(world, tmp_path: Path) -> None:
    target = world.issued[2]
    folder = write_merged(world.backbone, target.core, tmp_path / "merged")
    code, out = run_verify(world, folder)
    assert code == 0
    assert_names(out, target, "watermark")
    pt = tmp_path / "merged.pt"  # a plain fp16 state dict, as the demo leaks it
    with open_tensors(folder) as src:
        torch.save({k: v.to(torch.float16) for k, v in src.items()}, pt)
    code, out = run_verify(world, pt)
    assert code == 0
    assert_names(out, target, "watermark")
    with open_tensors(folder) as src:
        sharded = save_sharded(dict(src.items()), tmp_path / "sharded", max_shard_bytes=1 << 20)
    assert len(list(sharded.glob("*.safetensors"))) > 1
    code, out = run_verify(world, sharded)
    assert code == 0
    assert_names(out, target, "watermark")


def test_text_output(world, tmp_path: Path) -> None:
    target = world.issued[0]
    core_file = save_core(target.core, tmp_path / "core.safetensors")
    proc = subprocess.run([str(BIN / "emshield-verify"), str(core_file), "--log", world.url, "--log-key",
                           world.log_key], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"MATCH: device {target.device}" in proc.stdout
    assert f"leaf {target.index}" in proc.stdout


ATTACKS = {
    # name: (ΔW transform on the merged weights, dtype the merged model is stored in)
    "merged-bf16": (None, torch.bfloat16),
    "merged-fp16": (None, torch.float16),
    "int8": (lambda d, w: int8_rows((w + d).astype(np.float32)) - w, torch.float32),
    "prune-50%": (lambda d, w: prune(d, 0.5), torch.float32),
    "noise-100%": (lambda d, w: noise(d, 1.0, np.random.default_rng(7)), torch.float32),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attacked_merged_models_still_name_their_device(world, tmp_path: Path, attack: str) -> None:
    transform, dtype = ATTACKS[attack]
    target = world.issued[0]
    suspect = merged_with(world, target.core, tmp_path / "suspect.safetensors", transform, dtype)
    code, out = run_verify(world, suspect)
    assert code == 0, out
    assert_names(out, target, "watermark")
    wm = out["device"]["watermark"]
    assert wm["p_value"] <= wm["p_value_threshold"]


BREAKING = {  # past the mark's measured robustness (spec/watermark.md): the mark may not survive these
    "noise-400%": lambda d, w: noise(d, 4.0, np.random.default_rng(8)),
    "int4": lambda d, w: int_rows((w + d).astype(np.float32), 4) - w,
    "prune-99%": lambda d, w: prune(d, 0.99),
}


@pytest.mark.parametrize("attack", sorted(BREAKING))
def test_destroyed_marks_never_name_a_wrong_device(world, tmp_path: Path, attack: str) -> None:
    """Whatever survives, the verdict is the right device or nobody: never a sibling by guess."""
    target = world.issued[0]
    suspect = merged_with(world, target.core, tmp_path / "suspect.safetensors", BREAKING[attack])
    code, out = run_verify(world, suspect)
    assert code in (0, 1), out
    if code == 0:
        assert_names(out, target, out["device"]["method"])
    for sibling in world.issued[1:]:
        assert str(sibling.device) not in json.dumps(out)


def test_refactorised_adapter_names_its_device(world, tmp_path: Path) -> None:
    target = world.issued[2]
    rng = np.random.default_rng(11)
    core = {name: refactorise(f, rng) for name, f in target.core.items()}
    code, out = run_verify(world, write_peft_adapter(core, tmp_path / "adapter"), backbone=False)
    assert code == 0
    assert_names(out, target, "watermark")
    assert out["device"]["fingerprint"]["match"]  # ΔW unchanged: the fingerprint agrees too


def test_fine_tuned_adapter_names_its_device(world, tmp_path: Path) -> None:
    """The marking suite's simulated fine-tuning (Adam, 100 steps, lr 1e-4, pulled towards the
    unmarked core: the direction that removes the mark)."""
    target = world.issued[1]
    task = {k: f.delta() for k, f in tiny_core(0).items()}  # the unmarked core the three devices got
    tuned = finetune(target.core, task, 100, 1e-4, np.random.default_rng(14), decay=0.0)
    moved = max(np.linalg.norm(tuned[k].delta() - target.core[k].delta()) / np.linalg.norm(target.core[k].delta())
                for k in task)
    assert moved > 0.1  # the attack really moved the core
    code, out = run_verify(world, write_peft_adapter(tuned, tmp_path / "adapter"), backbone=False)
    assert code == 0, out
    assert_names(out, target, "watermark")


def assert_core(out: dict, issued: list) -> None:
    """A core lineage: exit 6, the listed issuances exactly ``issued``, and no device named."""
    assert out["verdict"] == "core" and out["exit_code"] == 6 and out["device"] is None, out
    assert [i["leaf_index"] for i in out["core"]["issuances"]] == [x.index for x in issued]
    assert [i["device_uuid"] for i in out["core"]["issuances"]] == [str(x.device) for x in issued]
    assert out["core"]["issuer"] == "Acme Edge Models"


def test_fingerprint_only_issuance_is_a_core_never_a_device(world, tmp_path: Path) -> None:
    """A fingerprint is a property of the core, not of a device: even a core issued to one device
    only is reported as that core lineage (exit 6), never as "match verified" (exit 0)."""
    target = world.issued[3]
    assert target.mode == "fingerprint"
    code, out = run_verify(world, write_peft_adapter(target.core, tmp_path / "adapter"), backbone=False)
    assert code == 6
    assert_core(out, [target])
    assert out["core"]["proofs"]["checkpoint"].startswith("signature verified")
    assert out["watermark_readings"][0]["decoded"] is False
    assert not out["core"]["indistinguishable"]
    # merged in bf16: the fingerprint moves a little but stays within the calibrated threshold
    code, out = run_verify(world, merged_with(world, target.core, tmp_path / "m.safetensors", dtype=torch.bfloat16))
    assert code == 6
    assert_core(out, [target])
    assert 0 < out["core"]["distance"] <= out["core"]["threshold"]


def test_fingerprint_only_without_replay_needs_the_exact_fingerprint(world, tmp_path: Path) -> None:
    target = world.issued[3]
    code, out = run_verify(world, write_peft_adapter(target.core, tmp_path / "adapter"), "--no-scan", backbone=False)
    assert code == 6  # the unchanged adapter has the logged fingerprint hash
    assert_core(out, [target])
    suspect = merged_with(world, target.core, tmp_path / "m.safetensors", dtype=torch.bfloat16)
    code, out = run_verify(world, suspect, "--no-scan")
    assert code == 1 and out["device"] is None and out["core"] is None


@pytest.mark.parametrize("seed", [99, 100])
def test_unmarked_models_match_nothing(world, tmp_path: Path, seed: int) -> None:
    core = tiny_core(seed)
    code, out = run_verify(world, merged_with(world, core, tmp_path / "m.safetensors"))
    assert code == 1
    assert out["verdict"] == "none" and out["device"] is None and out["core"] is None
    assert "no watermark is read" in out["reason"]
    assert out["watermark_readings"][0]["decoded"] is False
    assert "closest published fingerprint" in out["reason"]
    code, out = run_verify(world, write_peft_adapter(core, tmp_path / "adapter"), backbone=False)
    assert code == 1 and out["device"] is None


def test_the_backbone_itself_matches_nothing(world) -> None:
    code, out = run_verify(world, world.backbone)
    assert code == 1 and out["device"] is None
    assert "ΔW is zero" in out["watermark_readings"][0]["reason"]


def test_one_core_fingerprinted_for_two_devices_is_reported_indistinguishable(world, tmp_path: Path) -> None:
    """The same unmarked core went to two devices: the verdict lists both issuances of the core,
    says the copies are indistinguishable, and names neither device (it used to say "no match")."""
    first, second = world.issued[4], world.issued[5]
    assert first.mode == second.mode == "fingerprint"
    code, out = run_verify(world, write_peft_adapter(first.core, tmp_path / "adapter"), backbone=False)
    assert code == 6
    assert_core(out, [first, second])
    assert out["core"]["indistinguishable"] and "indistinguishable" in out["reason"]


def test_sibling_devices_are_told_apart(world, tmp_path: Path) -> None:
    """The same core went to three devices; each leaked copy names its own device only."""
    for n, target in enumerate(world.issued[:3]):
        suspect = merged_with(world, target.core, tmp_path / f"m{n}.safetensors", dtype=torch.bfloat16)
        code, out = run_verify(world, suspect)
        assert code == 0
        assert_names(out, target, "watermark")


def test_marked_but_never_logged_names_no_device(world, tmp_path: Path) -> None:
    """A core marked with the issuer's secret for a device the log has no issuance for (e.g. the
    entry was never appended): the mark is read, but no device is named; the fingerprint shows
    the core lineage the mark was put on."""
    ghost = uuid.UUID(int=0xDEAD)
    payload = payload_for_device(world.issuer_keys.marking_secret, ghost.bytes)
    marked = policy.mark(world.issued[0].core, payload, world.params, policy.Tolerance(max_perturbation=1.0))
    assert marked.record.mode == policy.MODE_BOTH
    code, out = run_verify(world, write_peft_adapter(marked.core, tmp_path / "adapter"), backbone=False)
    assert code in (1, 6) and out["device"] is None
    assert out["watermark_readings"][0]["decoded"]
    assert any("no proved issuance for it" in n for n in out["notes"])
    assert any("replayed all" in n for n in out["notes"])  # the replay confirms the log holds no such entry
    assert str(ghost) not in json.dumps(out)


def test_a_verification_loads_no_server_tee_or_peft_code(world, tmp_path: Path) -> None:
    """Beyond the import-linter contract (static imports): a whole run, in a fresh interpreter,
    leaves no forbidden module loaded."""
    suspect = write_merged(world.backbone, world.issued[1].core, tmp_path / "merged")
    script = (
        "import sys\n"
        "from verifier.verify.cli import main\n"
        "try:\n"
        f"    main({[str(suspect), '--log', world.url, '--log-key', world.log_key, '--backbone', str(world.backbone), '--json']!r})\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('peft', 'flask', 'log_server', 'transformers')\n"
        "             or m.startswith('emshield.tee'))\n"
        "print('EXIT', code, 'FORBIDDEN', bad, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert "EXIT 0 FORBIDDEN []" in proc.stderr, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["device"]["device_uuid"] == str(world.issued[1].device)


def test_verdict_json_has_the_documented_fields(world, tmp_path: Path) -> None:
    """The --json verdict is a versioned format (spec/verify.md §5): its field names are fixed."""
    code, out = run_verify(world, write_peft_adapter(world.issued[0].core, tmp_path / "a"), backbone=False)
    assert code == 0
    assert set(out) == {"v", "verdict", "exit_code", "device", "core", "reason", "suspect", "log", "watermark_readings",
                        "fingerprint", "issuers_considered", "notes", "disclosed", "disclosures_rejected"} and out["v"] == 3
    assert set(out["device"]) == {"method", "issuer", "issuer_key_id", "issuer_registration_index", "issuer_revoked",
                                  "device_uuid", "leaf_index", "leaf_hash", "issued_at", "issued_at_utc", "policy",
                                  "watermark", "fingerprint", "proofs"}
    assert set(out["device"]["watermark"]) == {
        "issuer", "issuer_key_id", "accepted", "decoded", "reason", "bit_errors", "code_bits", "score",
        "runner_up_score", "candidates", "issuances_counted", "p_value", "log10_p_value", "log10_p_value_any",
        "p_value_threshold", "watermark_commitment"}
    assert set(out["device"]["fingerprint"]) == {"distance", "threshold", "match", "side_record"}
    assert set(out["device"]["proofs"]) == {"checkpoint", "checkpoint_root", "issuer_registration", "entry_signature",
                                            "inclusion"}
    assert set(out["log"]) == {"url", "mode", "origin", "tree_size", "root_hash", "cosigned_by"}
    assert out["log"]["mode"] == "api"
    assert out["device"]["issued_at_utc"].endswith("Z") and len(out["device"]["leaf_hash"]) == 64
    code, out = run_verify(world, write_peft_adapter(world.issued[4].core, tmp_path / "b"), backbone=False)
    assert code == 6 and set(out["core"]) == {
        "issuer", "issuer_key_id", "issuer_registration_index", "issuer_revoked", "distance", "threshold",
        "runner_up_distance", "margin", "indistinguishable", "issuances", "proofs"}
    assert set(out["core"]["issuances"][0]) == {"leaf_index", "leaf_hash", "device_uuid", "policy", "issued_at",
                                                "issued_at_utc", "distance", "proof"}
    assert set(out["fingerprint"]) == {"distance", "threshold", "compared"}


def test_the_verifiers_p_value_ceiling_applies_on_top_of_the_issuers(world, tmp_path: Path) -> None:
    """A mark whose chance-match p-value is above --max-p-value names nobody by watermark. The mark
    is weakened (ΔW moved two thirds of the way back to the unmarked core) so that its p-value is
    moderate."""
    target = world.issued[2]
    plain = tiny_core(0)
    weak = {k: LoraFactors(np.hstack([f.a.T, plain[k].a.T]).T.astype(np.float32),
                           np.hstack([f.b / 3, plain[k].b * (2 / 3) * plain[k].scale / f.scale]).astype(np.float32),
                           f.scale) for k, f in target.core.items()}
    adapter = write_peft_adapter(weak, tmp_path / "adapter")
    code, out = run_verify(world, adapter, backbone=False)
    w = out["device"]["watermark"]
    p = w["p_value"]
    assert code == 0 and 1e-200 < p <= w["p_value_threshold"] == min(1e-9, 1e-6)  # issuer's, verifier's
    assert w["issuances_counted"] == out["log"]["tree_size"]
    code, out = run_verify(world, adapter, "--max-p-value", f"{p / 10:.3e}", backbone=False)
    reading = out["watermark_readings"][0]
    assert not reading["accepted"] and "above the threshold" in reading["reason"]
    assert out["device"] is None


REWRITES = {"heads": dict(heads=True), "mlp-units": dict(mlp=True), "residual": dict(resid=True),
            "rescale-fold": dict(scale=True), "dummy-units": dict(dummy=8),
            "all": dict(heads=True, mlp=True, resid=True, scale=True, dummy=8)}


@pytest.mark.parametrize("kind", sorted(REWRITES))
def test_function_preserving_rewrites_keep_the_verdict(world, tmp_path: Path, kind: str) -> None:
    """A leak rewritten without changing its outputs (heads, MLP units, residual stream, rescaled and
    folded norms, dummy units) names the same device as the unrewritten leak: the verifier aligns
    the suspect to the backbone before differencing (spec/verify.md §2.1)."""
    from _kit.rewrites import rewrite
    from transformers import AutoConfig

    target = world.issued[0]
    state = {}
    with open_tensors(world.backbone) as bb:
        for name in bb.keys():
            w = bb.get(name).to(torch.float64)
            state[name] = w + torch.from_numpy(target.core[name].delta()) if name in target.core else w
    rw = rewrite(state, AutoConfig.from_pretrained(world.backbone), np.random.default_rng(9), **REWRITES[kind])
    suspect = save_tensors({k: v.to(torch.float32) for k, v in rw.items()}, tmp_path / "rewritten.safetensors")
    code, out = run_verify(world, suspect)
    assert code == 0, out
    assert_names(out, target)
    assert out["device"]["watermark"]["bit_errors"] == 0
    assert out["device"]["fingerprint"]["match"]
    assert out["suspect"]["canonicalisation"].startswith("aligned to the backbone: ")


@pytest.mark.parametrize("fmt", ["legacy-pt", "gguf-q8_0"])
def test_re_saved_leaks_are_traced(world, tmp_path: Path, fmt: str) -> None:
    """A merged leak re-saved as a legacy (non-zip) torch pickle or converted to GGUF (llama.cpp's
    names and q/k row order, Q8_0) names its device."""
    from _kit.formats import save_gguf
    from transformers import AutoConfig

    target = world.issued[2]
    with open_tensors(write_merged(world.backbone, target.core, tmp_path / "merged")) as src:
        state = dict(src.items())
    if fmt == "legacy-pt":
        suspect = tmp_path / "leak.pt"
        torch.save({k: v.to(torch.float16) for k, v in state.items()}, suspect, _use_new_zipfile_serialization=False)
    else:
        suspect = save_gguf({k: v.double() for k, v in state.items()}, AutoConfig.from_pretrained(world.backbone),
                            tmp_path / "leak.gguf", "Q8_0")
    code, out = run_verify(world, suspect)
    assert code == 0, out
    assert_names(out, target)


def test_the_unmarked_core_a_foreign_key_core_and_a_stripped_leak_name_no_device(world, tmp_path: Path) -> None:
    """The core the three watermarked devices got, leaked before marking; the same core marked under
    a key that is in no registration; device 0's copy with the mark stripped using the published
    parameters: each carries the core lineage of the three issuances at most, and never a device
    (the fingerprint of one core is shared by all its issuances)."""
    from emshield.marking import watermark
    from emshield.marking.params import MarkingParams, verification_key
    from emshield.marking.strip import strip_public_mark

    siblings = world.issued[:3]
    foreign = MarkingParams(world.params.backbone_id, verification_key(bytes(range(7, 39)), world.params.backbone_id),
                            world.params.layers)
    foreign_core, _ = watermark.embed(tiny_core(0), 0xF0F0F0F0F0F0, foreign)
    stripped = strip_public_mark({k: f.delta() for k, f in siblings[0].core.items()}, world.params)
    suspects = {"unmarked": merged_with(world, tiny_core(0), tmp_path / "u.safetensors"),
                "foreign-key": merged_with(world, foreign_core, tmp_path / "f.safetensors"),
                # ΔW as full-rank "factors" (A = ΔW, B = I) so that merged_with can merge it
                "stripped": merged_with(world, {k: LoraFactors(d.astype(np.float32), np.eye(d.shape[0], dtype=np.float32),
                                                               1.0) for k, d in stripped.items()},
                                        tmp_path / "s.safetensors")}
    for what, suspect in suspects.items():
        code, out = run_verify(world, suspect)
        assert out["device"] is None, (what, out)
        # the stripped copy may have been traced and disclosed by test_verify_disclosed (the same bytes): then it
        # names its own device by disclosed key, never another
        assert {d["device_uuid"] for d in out["disclosed"]} <= ({str(siblings[0].device)} if what == "stripped" else set())
        assert (code == 0) if out["disclosed"] else (code in (1, 6)), (what, out)
        if code == 6:
            assert [i["leaf_index"] for i in out["core"]["issuances"]] == [s.index for s in siblings], what
        assert not out["watermark_readings"][0]["decoded"], what


def test_a_static_tile_mirror_names_the_device_by_replay(world, tmp_path: Path) -> None:
    """Against the log's static tiles served by `python -m http.server` (no /v1 API, no index): the
    issuers and the watermark's issuance are found by one replay of the tiles, whose root is the
    checkpoint's; what a mirror cannot publish (side records, revocations) is reported, not guessed."""
    from _kit.logs import StaticSite, wait_for_mirror

    size = world.client.verified_checkpoint(NoteVerifier.from_verifier_key(world.log_key)).size
    wait_for_mirror(world.tiles, size)
    static = StaticSite(directory=world.tiles).start()
    try:
        target = world.issued[1]
        code, out = world.verify(write_peft_adapter(target.core, tmp_path / "adapter"), log=static.url)
        assert code == 0, out
        assert_names(out, target, "watermark")
        assert out["log"]["mode"] == "static tiles" and out["log"]["tree_size"] >= size
        assert out["device"]["proofs"]["inclusion"].startswith("full replay of")
        assert out["device"]["issuer_revoked"] is None  # log-server state: unknown from tiles
        assert out["device"]["fingerprint"]["side_record"] == "not published"
        # an unmarked model names nobody there either
        code, out = world.verify(write_peft_adapter(tiny_core(99), tmp_path / "unmarked"), log=static.url)
        assert code in (1, 6) and out["device"] is None
    finally:
        static.stop()
