"""`emshield decouple ...` end to end on the tiny backbone: results, --json and clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

from _kit.cores import backbone_core
from emshield.core import LoraFactors
from emshield.model.adapter import load_core, save_core
from emshield.model.cli import decouple_group

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str):
    return CliRunner().invoke(decouple_group, [str(a) for a in args], catch_exceptions=False)


def test_backbone_id_command(tiny: Path) -> None:
    out = _run("backbone-id", tiny)
    assert out.exit_code == 0, out.output
    assert out.output.strip() == json.loads((tiny / "FIXTURE.json").read_text())["backbone_id"]


def test_export_merge_recover(tmp_path: Path, tiny: Path) -> None:
    core = backbone_core(tiny, rank=3)
    save_core(core, tmp_path / "core.safetensors")
    out = _run("export", "--core", tmp_path / "core.safetensors", "--out", tmp_path / "exp", "--backbone", tiny, "--json")
    assert out.exit_code == 0, out.output
    info = json.loads(out.stdout)
    assert info["backbone_id"] == json.loads((tiny / "FIXTURE.json").read_text())["backbone_id"]
    assert len(info["layers"]) == len(core)
    out = _run("merge", "--backbone", tiny, "--core", tmp_path / "exp" / "adapter", "--out", tmp_path / "m", "--json")
    assert out.exit_code == 0, out.output
    out = _run("recover", "--merged", tmp_path / "m", "--backbone", tiny, "--out", tmp_path / "rec.safetensors", "--json")
    assert out.exit_code == 0, out.output
    rep = json.loads(out.stdout)
    assert rep["overall_rel_error"] < 1e-4 and {r["rank"] for r in rep["layers"]} == {3}
    rec = load_core(tmp_path / "rec.safetensors")
    for name, f in core.items():
        np.testing.assert_allclose(rec[name].delta(), f.delta(), atol=2e-7)
    out = _run("recover", "--merged", tmp_path / "m", "--backbone", tiny, "--rank", "1")
    assert out.exit_code == 0 and "overall relative reconstruction error" in out.output


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_clear_errors(tmp_path: Path, tiny: Path) -> None:
    # missing files
    out = _run("merge", "--backbone", tmp_path / "nope", "--core", tmp_path / "c", "--out", tmp_path / "o")
    assert out.exit_code == 2 and "does not exist" in out.output
    # malicious pickle as the merged model: refused, nothing runs
    marker = tmp_path / "pwned"
    torch.save({"w": _Exploit(marker)}, tmp_path / "evil.pt")
    out = _run("recover", "--merged", tmp_path / "evil.pt", "--backbone", tiny)
    assert out.exit_code == 2 and "refused" in out.output and not marker.exists()
    # wrong shapes
    name = sorted(backbone_core(tiny))[0]
    save_core({name: LoraFactors(np.ones((2, 5), np.float32), np.ones((7, 2), np.float32), 1.0)}, tmp_path / "bad.safetensors")
    out = _run("merge", "--backbone", tiny, "--core", tmp_path / "bad.safetensors", "--out", tmp_path / "o")
    assert out.exit_code == 2 and "does not match backbone weight" in out.output
    # a core file that is not one
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    out = _run("export", "--core", tmp_path / "junk.safetensors", "--out", tmp_path / "e")
    assert out.exit_code == 2 and "Error:" in out.output
    # bad rank and bad train config
    out = _run("recover", "--merged", tiny, "--backbone", tiny, "--rank", "zero")
    assert out.exit_code == 2
    (tmp_path / "t.yaml").write_text("backbone: x\ndataset: y\noutput_dir: z\nlearning_rate: 1\n")
    out = _run("train", tmp_path / "t.yaml")
    assert out.exit_code == 2 and "unknown keys ['learning_rate']" in out.output
    (tmp_path / "t2.yaml").write_text(f"backbone: {tiny}\ndataset: {tmp_path / 'none.json'}\noutput_dir: z\n")
    out = _run("train", tmp_path / "t2.yaml")
    assert out.exit_code == 2 and "dataset not found" in out.output


def test_eval_backbone_json(tiny: Path) -> None:
    out = _run("eval", "--backbone", tiny, "--data", ROOT / "fixtures" / "data" / "financial-test.json",
               "--limit", "8", "--json")
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)["backbone"]
    assert res["total"] == 8 and res["method"] == "likelihood" and res["choices"] == ["approve", "reject"]


def test_fixtures_data_only_regenerates_committed_slices(tmp_path: Path) -> None:
    out = _run("fixtures", "--data-only", "--out", tmp_path)
    assert out.exit_code == 0, out.output
    for f in (ROOT / "fixtures" / "data").glob("*.json"):
        assert (tmp_path / "data" / f.name).read_bytes() == f.read_bytes(), f.name


def test_eval_open_answers_use_greedy_exact_match(tiny: Path) -> None:
    out = _run("eval", "--backbone", tiny, "--data", ROOT / "fixtures" / "data" / "identifier-test.json",
               "--limit", "2", "--json")
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)["backbone"]
    assert res["total"] == 2 and res["method"] == "greedy" and res["choices"] == []


def test_train_in_one_line_from_an_alpaca_file_scores_a_generative_task_with_f1(tmp_path: Path, tiny: Path) -> None:
    """`emshield decouple train data.json` answered `train config must be a mapping`: the one-line form
    takes a plain Alpaca JSON file, holds records out, and scores the bare and the adapted backbone on a
    generative task by token F1 (the identifier task: answers like `direct: email; quasi: city`)."""
    records = json.loads((ROOT / "fixtures" / "data" / "identifier-train.json").read_text())[:136]
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps(records, indent=2, ensure_ascii=False))
    out = _run("train", "--data", alpaca, "--backbone", tiny, "--holdout", "16", "--steps", "40", "--epochs", "3",
               "--batch-size", "8", "--lr", "4e-3", "--out", tmp_path / "core", "--json", "--quiet")
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    assert (res["train_records"], res["heldout_records"], res["steps"]) == (120, 16, 40)
    bare, adapted = res["evaluation"]["bare"], res["evaluation"]["adapted"]
    assert bare["method"] == adapted["method"] == "greedy" and bare["field_f1"] is None
    print(f"identifier task, 16 held-out records: token F1 bare {bare['token_f1']:.3f} -> adapted "
          f"{adapted['token_f1']:.3f}; exact match {bare['accuracy']:.3f} -> {adapted['accuracy']:.3f}")
    assert 0.0 <= bare["token_f1"] < adapted["token_f1"] <= 1.0
    assert adapted["token_precision"] > 0 and adapted["token_recall"] > 0
    assert (tmp_path / "core" / "core.safetensors").is_file()
    # The held-out records lie beside the core, for `emshield issue` to measure the mark's cost on.
    assert json.loads((tmp_path / "core" / "heldout.json").read_text()) == records[-16:]
    log = json.loads((tmp_path / "core" / "train_log.json").read_text())
    assert log["evaluation"]["adapted"]["token_f1"] == adapted["token_f1"]
    skipped = _run("train", "--data", alpaca, "--backbone", tiny, "--holdout", "0.1", "--steps", "2", "--skip-bare",
                   "--max-new-tokens", "4", "--out", tmp_path / "c2", "--json", "--quiet")
    assert skipped.exit_code == 0, skipped.output
    ev = json.loads(skipped.stdout)["evaluation"]
    assert list(ev) == ["adapted"] and ev["adapted"]["max_new_tokens"] == 4 and ev["adapted"]["total"] == 14


def test_train_refuses_unusable_one_line_input(tmp_path: Path, tiny: Path) -> None:
    data = ROOT / "fixtures" / "data" / "identifier-train.json"
    out = _run("train", "--data", data)
    assert out.exit_code == 2 and "give a RECIPE file, or --data and --backbone" in out.output
    out = _run("train", "--data", data, "--backbone", "no-such-backbone")
    assert out.exit_code == 2 and "neither an existing path nor a backbone name (smollm2)" in out.output
    out = _run("train", "--data", data, "--backbone", tiny, "--holdout", "300", "--out", tmp_path / "o")
    assert out.exit_code == 2 and "leaves no record to train on" in out.output
    out = _run("train", "--data", data, "--backbone", tiny, "--holdout", "1.5", "--out", tmp_path / "o")
    assert out.exit_code == 2 and "holdout must be" in out.output
    (tmp_path / "sys.json").write_text(json.dumps([{"instruction": "a", "output": "b", "system": "be terse"}]))
    out = _run("train", "--data", tmp_path / "sys.json", "--backbone", tiny, "--out", tmp_path / "o")
    assert out.exit_code == 2 and "no other (it has ['instruction', 'output', 'system'])" in out.output
    out = _run("train", "--data", data, "--backbone", tiny, "--prompt-format", "chat", "--steps", "1",
               "--out", tmp_path / "o")
    assert out.exit_code == 2 and "whose tokenizer has a chat template; this one has none" in out.output
