"""Canonicalisation against the backbone (spec/verify.md §2.1): the vectors, and function-preserving
rewrites of a real merge of the tiny backbone mapped back to the unrewritten model's canonical ΔW."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _kit.paths import TINY, VECTORS
from _kit.rewrites import rewrite
from emshield.model.adapter import load_core
from emshield.model.canonical import CanonicalError, Canonicaliser, LlamaShape, greedy_match
from emshield.model.io import load_tensors

FIXTURE_CORE = TINY.parent / "cores" / "financial-lora.safetensors"


def test_canonicalisation_vectors() -> None:
    vec = json.loads((VECTORS / "verify" / "canonical.json").read_text())
    shape = LlamaShape(**vec["shape"])
    bb = {k: np.array(v) for k, v in vec["backbone"].items()}
    suspect = {k: np.array(v) for k, v in vec["suspect"].items()}
    assert suspect["model.layers.0.mlp.gate_proj.weight"].shape[0] == bb["model.layers.0.mlp.gate_proj.weight"].shape[0] + 3
    canon = Canonicaliser(suspect.__getitem__, bb.__getitem__, set(suspect), shape)
    for name, want in vec["canonical_delta"].items():
        assert np.allclose(canon.tensor(name) - bb[name], np.array(want), rtol=0, atol=1e-9), name
    assert canon.report == vec["report"]


@pytest.fixture(scope="module")
def merged():
    from transformers import AutoConfig

    bb = {k: v.double() for k, v in load_tensors(TINY).items()}
    core = load_core(FIXTURE_CORE)
    state = {k: v + (torch.from_numpy(core[k].delta()) if k in core else 0) for k, v in bb.items()}
    shape = LlamaShape.from_config(json.loads((TINY / "config.json").read_text()))
    return bb, state, core, shape, AutoConfig.from_pretrained(TINY)


REWRITES = {"heads": dict(heads=True), "mlp": dict(mlp=True), "residual": dict(resid=True),
            "rescale": dict(scale=True), "dummy": dict(dummy=16),
            "all": dict(heads=True, mlp=True, resid=True, scale=True, dummy=16)}


@pytest.mark.parametrize("kind", sorted(REWRITES))
def test_function_preserving_rewrites_canonicalise_to_the_same_delta(merged, kind: str) -> None:
    """The fixture recipe core merged into the tiny backbone, rewritten (stored in float32, as a leak
    would be): its canonical ΔW equals the unrewritten model's to float32 rounding, for every one
    of the 28 marked layers."""
    bb, state, core, shape, cfg = merged
    rw = {k: v.float().double() for k, v in rewrite(state, cfg, np.random.default_rng(3), **REWRITES[kind]).items()}
    plain = {k: v.float().double() for k, v in state.items()}
    a = Canonicaliser(lambda n: rw[n].numpy(), lambda n: bb[n].numpy(), set(rw), shape)
    b = Canonicaliser(lambda n: plain[n].numpy(), lambda n: bb[n].numpy(), set(plain), shape)
    for name in core:
        da, db = a.tensor(name) - bb[name].numpy(), b.tensor(name) - bb[name].numpy()
        assert np.linalg.norm(da - db) <= 1e-4 * np.linalg.norm(db), (kind, name)
    assert a.report, "the rewrite was not noticed"


def test_an_unchanged_layer_has_exactly_zero_delta(merged) -> None:
    bb, _, _, shape, _ = merged
    same = Canonicaliser(lambda n: bb[n].numpy(), lambda n: bb[n].numpy(), set(bb), shape)
    assert np.array_equal(same.tensor("model.layers.2.self_attn.v_proj.weight"),
                          bb["model.layers.2.self_attn.v_proj.weight"].numpy())


def test_a_suspect_with_fewer_units_than_the_backbone_is_not_a_rewrite(merged) -> None:
    bb, state, _, shape, _ = merged
    cut = dict(state)
    for part in ("gate", "up"):
        cut[f"model.layers.0.mlp.{part}_proj.weight"] = state[f"model.layers.0.mlp.{part}_proj.weight"][:-1]
    cut["model.layers.0.mlp.down_proj.weight"] = state["model.layers.0.mlp.down_proj.weight"][:, :-1]
    c = Canonicaliser(lambda n: cut[n].numpy(), lambda n: bb[n].numpy(), set(cut), shape)
    with pytest.raises(CanonicalError, match="units"):
        c.tensor("model.layers.0.mlp.up_proj.weight")


def test_greedy_match_takes_the_cheapest_pairs_first() -> None:
    cost = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3], [0.0, 0.7, 0.6], [0.4, 0.4, 0.4]])
    assert sorted(greedy_match(cost)) == [(0, 1), (1, 2), (2, 0)]
