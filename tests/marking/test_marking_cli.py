"""`emshield mark`: parameters, apply with policy, extract and fingerprint from core and merged files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from _kit.cores import DELTA_RMS, FIXTURE_DIMS, W_RMS, make_params, random_core
from emshield.cli import main
from emshield.marking import policy
from emshield.marking.cli import read_core, write_core
from emshield.marking.params import MarkingParams, payload_for_device, watermark_commitment

UUID = "00112233-4455-6677-8899-aabbccddeeff"
NAMES = [f"model.layers.{i // 2}.self_attn.{'qv'[i % 2]}_proj.weight" for i in range(len(FIXTURE_DIMS))]


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["mark", *args])
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mark")
    rng = np.random.default_rng(51)
    core = dict(zip(NAMES, random_core(rng, FIXTURE_DIMS, 8, DELTA_RMS).values()))
    write_core(core, d / "core.safetensors")
    (d / "secret").write_bytes(bytes(range(64)))
    backbone = {n: torch.tensor(rng.standard_normal(f.shape) * W_RMS, dtype=torch.float32) for n, f in core.items()}
    backbone["model.embed_tokens.weight"] = torch.zeros(10, 4)
    save_file(backbone, str(d / "backbone.safetensors"))
    code, out = run("params", "--secret-file", str(d / "secret"), "--backbone-id", "bb", "--core",
                    str(d / "core.safetensors"), "--out", str(d / "params.cbor"), "--json")
    assert code == 0, out
    return {"dir": d, "core": d / "core.safetensors", "secret": d / "secret", "params": d / "params.cbor",
            "backbone": d / "backbone.safetensors"}


def test_apply_marks_within_tolerance_and_extracts(files: dict[str, Path]) -> None:
    d = files["dir"]
    code, out = run("apply", "--params", str(files["params"]), "--secret-file", str(files["secret"]),
                    "--device-uuid", UUID, "--core", str(files["core"]), "--out", str(d / "marked.safetensors"),
                    "--fingerprint-out", str(d / "fp.cbor"), "--tolerance", "1.0", "--json")
    assert code == 0, out
    rec = json.loads(out)
    params = MarkingParams.from_cbor(files["params"].read_bytes())
    payload = payload_for_device(bytes(range(64)), bytes.fromhex(UUID.replace("-", "")))
    assert rec["mode"] == policy.MODE_BOTH and rec["payload"] == payload
    assert rec["watermark_commitment"] == watermark_commitment(payload, params).hex()
    assert rec["measured"] <= 1.0 and rec["min_margin"] >= 2.99

    code, out = run("extract", "--params", str(files["params"]), "--core", str(d / "marked.safetensors"), "--json")
    assert code == 0, out
    got = json.loads(out)
    assert got["payload"] == payload and got["watermark_commitment"] == rec["watermark_commitment"]

    # merged model in bf16, read lazily from safetensors beside the backbone
    marked = read_core(d / "marked.safetensors")
    merged = load_file(str(files["backbone"]))
    for name, f in marked.items():
        merged[name] = (merged[name].double() + torch.from_numpy(f.delta())).to(torch.bfloat16)
    save_file(merged, str(d / "merged.safetensors"))
    code, out = run("extract", "--params", str(files["params"]), "--suspect", str(d / "merged.safetensors"),
                    "--backbone", str(files["backbone"]), "--json")
    assert code == 0, out
    assert json.loads(out)["payload"] == payload

    code, out = run("fingerprint", "--params", str(files["params"]), "--suspect", str(d / "merged.safetensors"),
                    "--backbone", str(files["backbone"]), "--compare", str(d / "fp.cbor"),
                    "--hash", rec["fingerprint_hash"], "--json")
    assert code == 0, out
    assert json.loads(out)["match"] is True


def test_unmarked_core_reports_no_mark(files: dict[str, Path]) -> None:
    code, out = run("extract", "--params", str(files["params"]), "--core", str(files["core"]), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["accepted"] is False
    assert "Chien" not in out and "errata" not in out.lower(), doc["reason"]  # reedsolo's text is for coders


def test_policy_falls_back_to_fingerprint_when_intolerant(files: dict[str, Path]) -> None:
    d = files["dir"]
    code, out = run("apply", "--params", str(files["params"]), "--secret-file", str(files["secret"]),
                    "--device-uuid", UUID, "--core", str(files["core"]), "--out", str(d / "fp-only.safetensors"),
                    "--tolerance", "0.001", "--backbone", str(files["backbone"]), "--json")
    assert code == 0, out
    rec = json.loads(out)
    assert rec["mode"] == policy.MODE_FINGERPRINT and rec["watermark_commitment"] is None
    assert rec["metric"] == "relative weight perturbation" and rec["measured"] > 0.001
    unchanged, original = read_core(d / "fp-only.safetensors"), read_core(files["core"])
    assert all(np.array_equal(unchanged[k].a, original[k].a) and np.array_equal(unchanged[k].b, original[k].b) for k in original)


def test_policy_with_task_evaluation() -> None:
    """A task evaluation callable decides on accuracy and loss instead of the weight proxy."""
    rng = np.random.default_rng(52)
    core = random_core(rng, FIXTURE_DIMS, 8, DELTA_RMS)
    params = make_params(FIXTURE_DIMS)
    reference = {k: f.delta() for k, f in core.items()}

    def task_eval(c: dict) -> tuple[float, float]:  # a loss that sees how far ΔW moved
        dist = sum(float(np.linalg.norm(c[k].delta() - reference[k]) / np.linalg.norm(reference[k])) for k in c)
        return 0.9 - 0.001 * dist, 1.0 + 0.001 * dist

    lenient = policy.mark(core, 7, params, policy.Tolerance(max_accuracy_drop_pp=5.0, max_loss_increase=0.1), task_eval)
    assert lenient.record.mode == policy.MODE_BOTH and lenient.record.accuracy_marked < 0.9
    strict = policy.mark(core, 7, params, policy.Tolerance(max_accuracy_drop_pp=0.01), task_eval)
    assert strict.record.mode == policy.MODE_FINGERPRINT and "accuracy" in strict.record.reason


def test_hostile_inputs_give_clear_errors(files: dict[str, Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\xff" * 100)
    huge_header = tmp_path / "huge"
    huge_header.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    name = NAMES[0]
    header = json.dumps({name: {"dtype": "F32", "shape": [128, 128], "data_offsets": [0, 1 << 30]}}).encode()
    bad_offsets = tmp_path / "offsets"
    bad_offsets.write_bytes(len(header).to_bytes(8, "little") + header + bytes(64))
    cases = [
        ("extract", "--params", str(garbage), "--core", str(files["core"])),
        ("extract", "--params", str(files["params"]), "--core", str(garbage)),
        ("extract", "--params", str(files["params"]), "--suspect", str(huge_header), "--backbone", str(files["backbone"])),
        ("extract", "--params", str(files["params"]), "--suspect", str(bad_offsets), "--backbone", str(files["backbone"])),
        ("extract", "--params", str(files["params"])),
        ("extract", "--params", str(files["params"]), "--suspect", str(files["backbone"]), "--backbone", str(files["backbone"]),
         "--core", str(files["core"])),
        ("apply", "--params", str(files["params"]), "--secret-file", str(files["secret"]), "--device-uuid", "zz",
         "--core", str(files["core"]), "--out", str(tmp_path / "x")),
        ("apply", "--params", str(files["params"]), "--secret-file", str(garbage), "--device-uuid", UUID,
         "--core", str(files["core"]), "--out", str(tmp_path / "x")),
        ("fingerprint", "--params", str(files["params"]), "--core", str(files["core"]), "--compare", str(garbage)),
    ]
    for args in cases:
        code, out = run(*args)
        assert code == 2 and "Error" in out, (args, code, out)
    assert not (tmp_path / "x").exists()
