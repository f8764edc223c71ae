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
    assert out.exit_code == 1 and "refused" in out.output and not marker.exists()
    # wrong shapes
    name = sorted(backbone_core(tiny))[0]
    save_core({name: LoraFactors(np.ones((2, 5), np.float32), np.ones((7, 2), np.float32), 1.0)}, tmp_path / "bad.safetensors")
    out = _run("merge", "--backbone", tiny, "--core", tmp_path / "bad.safetensors", "--out", tmp_path / "o")
    assert out.exit_code == 1 and "does not match backbone weight" in out.output
    # a core file that is not one
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    out = _run("export", "--core", tmp_path / "junk.safetensors", "--out", tmp_path / "e")
    assert out.exit_code == 1 and "Error:" in out.output
    # bad rank and bad train config
    out = _run("recover", "--merged", tiny, "--backbone", tiny, "--rank", "zero")
    assert out.exit_code == 2
    (tmp_path / "t.yaml").write_text("backbone: x\ndataset: y\noutput_dir: z\nlearning_rate: 1\n")
    out = _run("train", tmp_path / "t.yaml")
    assert out.exit_code == 1 and "unknown keys ['learning_rate']" in out.output
    (tmp_path / "t2.yaml").write_text(f"backbone: {tiny}\ndataset: {tmp_path / 'none.json'}\noutput_dir: z\n")
    out = _run("train", tmp_path / "t2.yaml")
    assert out.exit_code == 1 and "dataset not found" in out.output


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
