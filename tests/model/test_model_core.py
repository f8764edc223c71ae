"""Core file, peft adapter folders, merge and recover, on the tiny backbone with cores built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _kit.cores import backbone_core
from emshield.core import LoraFactors
from emshield.model.adapter import (
    core_from_bytes,
    core_to_bytes,
    load_core,
    read_peft_adapter,
    save_core,
    write_peft_adapter,
)
from emshield.model.io import ModelFileError, load_tensors, open_tensors, save_tensors
from emshield.model.merge import write_merged
from emshield.model.recover import overall_error, recover_core

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "spec" / "vectors" / "model"


def _same(c1, c2) -> None:
    assert sorted(c1) == sorted(c2)
    for k in c1:
        np.testing.assert_array_equal(c1[k].a, c2[k].a)
        np.testing.assert_array_equal(c1[k].b, c2[k].b)
        assert c1[k].scale == c2[k].scale


def test_core_file_vector() -> None:
    vec = json.loads((VECTORS / "core-file.json").read_text())
    core = core_from_bytes(bytes.fromhex(vec["core_hex"]))
    assert sorted(core) == sorted(vec["layers"])
    for name, want in vec["layers"].items():
        np.testing.assert_array_equal(core[name].a, np.array(want["a"], dtype=np.float32))
        np.testing.assert_array_equal(core[name].b, np.array(want["b"], dtype=np.float32))
        assert core[name].scale == want["scale"]
        np.testing.assert_allclose(core[name].delta(), np.array(want["delta"]), rtol=0, atol=0)
    assert core_to_bytes(core).hex() == vec["core_hex"]


def test_core_file_refuses_tampering() -> None:
    from safetensors.numpy import save

    good = {"m.weight.lora_A": np.ones((2, 3), np.float32), "m.weight.lora_B": np.ones((4, 2), np.float32),
            "m.weight.scale": np.array(1.0)}
    assert core_from_bytes(save(good, metadata={"format": "emshield/core/v1"}))["m.weight"].rank == 2
    cases = {
        "format": save(good, metadata={"format": "emshield/core/v2"}),
        "lacks": save({k: v for k, v in good.items() if not k.endswith("scale")}, metadata={"format": "emshield/core/v1"}),
        "unexpected": save({**good, "m.weight.bias": np.ones(2, np.float32)}, metadata={"format": "emshield/core/v1"}),
        "rank mismatch": save({**good, "m.weight.lora_B": np.ones((4, 3), np.float32)}, metadata={"format": "emshield/core/v1"}),
        "float64 scalar": save({**good, "m.weight.scale": np.array([1.0, 2.0])}, metadata={"format": "emshield/core/v1"}),
    }
    for why, data in cases.items():
        with pytest.raises(ModelFileError, match=why):
            core_from_bytes(data)
    with pytest.raises(ModelFileError):
        core_from_bytes(b"\xff" * 8 + b"{}")


def test_peft_folder_round_trip_uniform_and_mixed(tmp_path: Path, tiny: Path) -> None:
    core = backbone_core(tiny)
    _same(read_peft_adapter(write_peft_adapter(core, tmp_path / "u")), core)
    mixed = dict(core)
    name = next(iter(mixed))
    mixed[name] = LoraFactors(a=np.ones((2, core[name].shape[1]), np.float32),
                              b=np.ones((core[name].shape[0], 2), np.float32), scale=0.75)
    _same(read_peft_adapter(write_peft_adapter(mixed, tmp_path / "m")), mixed)
    _same(load_core(save_core(mixed, tmp_path / "c.safetensors")), mixed)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_model_equals_peft_wrapped_model(tmp_path: Path, tiny: Path) -> None:
    """A mixed-rank core written by us, loaded by peft, against our merge."""
    from peft import PeftModel

    from emshield.model.hf import load_causal_lm, peft_quiet

    core = dict(backbone_core(tiny, modules=("q_proj", "v_proj", "down_proj"), rank=4, scale=2.0))
    first = sorted(core)[0]
    core[first] = LoraFactors(a=core[first].a[:2], b=core[first].b[:, :2] * 3, scale=0.5)
    write_peft_adapter(core, tmp_path / "adapter")
    merged = write_merged(tiny, core, tmp_path / "merged")
    ids = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(1))
    base = _logits(load_causal_lm(tiny), ids)
    with peft_quiet():
        wrapped = _logits(PeftModel.from_pretrained(load_causal_lm(tiny), str(tmp_path / "adapter")).eval(), ids)
    merged_out = _logits(load_causal_lm(merged), ids)
    assert (wrapped - base).abs().max() > 1e-2, "the core must change the model for this test to mean anything"
    torch.testing.assert_close(merged_out, wrapped, rtol=1e-4, atol=1e-4)
    assert (merged / "tokenizer.json").is_file() and (merged / "config.json").is_file()


def test_real_peft_adapter_with_rslora_and_patterns_reads_as_peft_merges(tmp_path: Path, tiny: Path) -> None:
    """peft's own merge_and_unload is the reference for our scaling (alpha/r, rsLoRA, patterns)."""
    from peft import LoraConfig, get_peft_model

    from emshield.model.hf import load_causal_lm, peft_quiet

    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"],
                     rank_pattern={"layers.1.self_attn.q_proj": 2}, alpha_pattern={"v_proj": 3},
                     init_lora_weights=False)  # random B too, so ΔW != 0
    with peft_quiet():
        model = get_peft_model(load_causal_lm(tiny), cfg)
    model.save_pretrained(tmp_path / "ad")
    merged_ref = {k: v.detach() for k, v in model.merge_and_unload().state_dict().items()}
    core = read_peft_adapter(tmp_path / "ad")
    assert core["model.layers.1.self_attn.q_proj.weight"].rank == 2
    assert core["model.layers.0.self_attn.v_proj.weight"].scale == pytest.approx(3 / 2.0)
    write_merged(tiny, core, tmp_path / "mine")
    mine = load_tensors(tmp_path / "mine")
    for name in core:
        torch.testing.assert_close(mine[name], merged_ref[name], rtol=0, atol=2e-6)


def test_merge_recover_round_trip(tmp_path: Path, tiny: Path) -> None:
    core = backbone_core(tiny, rank=4)
    merged = write_merged(tiny, core, tmp_path / "merged")
    with open_tensors(merged) as m, open_tensors(tiny) as b:
        rec, report = recover_core(m, b)
    assert sorted(rec) == sorted(core)
    assert all(r.rank == 4 for r in report), [r.rank for r in report]
    # ΔW itself was rounded to float32 in the merged weights: that rounding is the floor.
    assert overall_error(report) < 1e-4, overall_error(report)
    for name in core:
        np.testing.assert_allclose(rec[name].delta(), core[name].delta(), atol=2e-7)
    # Truncating below the true rank must show up in the reported error, exactly as the SVD says.
    with open_tensors(merged) as m, open_tensors(tiny) as b:
        _, low = recover_core(m, b, rank=2, full_svd=True)
    for r in low:
        s = np.array(r.sigma)
        assert r.rel_error == pytest.approx(np.sqrt((s[2:] ** 2).sum() / (s ** 2).sum()), rel=1e-3)


def test_merge_and_recover_refuse_mismatches(tmp_path: Path, tiny: Path) -> None:
    core = backbone_core(tiny)
    name = sorted(core)[0]
    bad_shape = {name: LoraFactors(a=np.ones((2, 7), np.float32), b=np.ones((5, 2), np.float32), scale=1.0)}
    with pytest.raises(ModelFileError, match="does not match"):
        write_merged(tiny, bad_shape, tmp_path / "x")
    with pytest.raises(ModelFileError, match="not a tensor of the backbone"):
        write_merged(tiny, {"model.nope.weight": core[name]}, tmp_path / "y")
    tensors = load_tensors(tiny)
    with open_tensors(tiny) as b:
        with pytest.raises(ModelFileError, match="nothing to recover"):
            recover_core(b, b)
    norm = {**tensors, "model.norm.weight": tensors["model.norm.weight"] + 1}
    save_tensors(norm, tmp_path / "norm.safetensors")
    fewer = {k: v for k, v in tensors.items() if k != "model.norm.weight"}
    save_tensors(fewer, tmp_path / "fewer.safetensors")
    with open_tensors(tiny) as b:
        with open_tensors(tmp_path / "norm.safetensors") as m, pytest.raises(ModelFileError, match="1-D tensor changed"):
            recover_core(m, b)
        with open_tensors(tmp_path / "fewer.safetensors") as m, pytest.raises(ModelFileError, match="different tensors"):
            recover_core(m, b)
