"""Canonicalisation vectors (spec/verify.md §2.1): `.venv/bin/python spec/vectors/verify/generate.py`.

A small Llama-shaped backbone (hidden 8, 4 query heads in 2 key/value groups of head width 4,
12 MLP units, 40 tokens, 2 layers, random float64 weights from a fixed seed), a core ΔW on the query,
value, up and down projections, and the merged model rewritten without changing its outputs
(heads, value dims, MLP units, residual signed permutation, folded and rescaled norms, RoPE pair
rotations, 3 dummy MLP units). The file holds the backbone, the rewritten suspect and, per marked
tensor, the canonical ΔW `emshield.model.canonical` gives (checked to 1e-9 by
tests/model/test_model_canonical.py), which equals the canonical ΔW of the merged model before
the rewrite, and the true ΔW (the canonical one differs from it by what the fits absorb: at this
width, up to half of its norm; at real widths a few percent).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "tests"))

from _kit.rewrites import rewrite  # noqa: E402
from emshield.model.canonical import Canonicaliser, LlamaShape  # noqa: E402

SHAPE = LlamaShape(hidden=8, heads=4, kv_heads=2, head_dim=4, layers=2)
VOCAB, UNITS, DUMMY = 40, 12, 3
MARKED = ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj")


def backbone(rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, hd = SHAPE.hidden, SHAPE.head_dim
    out = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, h)), "model.norm.weight": 1 + 0.1 * rng.standard_normal(h)}
    for i in range(SHAPE.layers):
        p = f"model.layers.{i}"
        out |= {f"{p}.input_layernorm.weight": 1 + 0.1 * rng.standard_normal(h),
                f"{p}.post_attention_layernorm.weight": 1 + 0.1 * rng.standard_normal(h),
                f"{p}.self_attn.q_proj.weight": rng.standard_normal((SHAPE.heads * hd, h)),
                f"{p}.self_attn.k_proj.weight": rng.standard_normal((SHAPE.kv_heads * hd, h)),
                f"{p}.self_attn.v_proj.weight": rng.standard_normal((SHAPE.kv_heads * hd, h)),
                f"{p}.self_attn.o_proj.weight": rng.standard_normal((h, SHAPE.heads * hd)),
                f"{p}.mlp.gate_proj.weight": rng.standard_normal((UNITS, h)),
                f"{p}.mlp.up_proj.weight": rng.standard_normal((UNITS, h)),
                f"{p}.mlp.down_proj.weight": rng.standard_normal((h, UNITS))}
    return out


def build() -> dict:
    rng = np.random.default_rng(20261201)
    bb = backbone(rng)
    deltas = {}
    for i in range(SHAPE.layers):
        for m in MARKED:
            name = f"model.layers.{i}.{m}.weight"
            rows, cols = bb[name].shape
            deltas[name] = 0.05 * rng.standard_normal((rows, 2)) @ rng.standard_normal((2, cols))
    merged = {k: torch.from_numpy(v + deltas.get(k, 0.0)) for k, v in bb.items()}
    cfg = SimpleNamespace(hidden_size=SHAPE.hidden, num_attention_heads=SHAPE.heads, num_key_value_heads=SHAPE.kv_heads,
                          head_dim=SHAPE.head_dim, num_hidden_layers=SHAPE.layers)
    suspect = {k: v.numpy() for k, v in rewrite(merged, cfg, rng, heads=True, mlp=True, resid=True, scale=True,
                                                 dummy=DUMMY).items()}
    canon = Canonicaliser(suspect.__getitem__, bb.__getitem__, set(suspect), SHAPE)
    expected = {name: (canon.tensor(name) - bb[name]).tolist() for name in deltas}
    plain = {k: v.numpy() for k, v in merged.items()}
    unrewritten = Canonicaliser(plain.__getitem__, bb.__getitem__, set(plain), SHAPE)
    for name in deltas:  # the rewrite does not change the canonical form
        assert np.allclose(unrewritten.tensor(name), canon.tensor(name), rtol=0, atol=1e-9), name
    return {"shape": SHAPE.__dict__, "backbone": {k: v.tolist() for k, v in bb.items()},
            "suspect": {k: v.tolist() for k, v in suspect.items()},
            "canonical_delta": expected, "true_delta": {k: v.tolist() for k, v in deltas.items()},
            "report": canon.report}


if __name__ == "__main__":
    (HERE / "canonical.json").write_text(json.dumps(build(), indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {HERE / 'canonical.json'}")
