"""Regenerates the vectors in this folder: `python spec/vectors/model/make_vectors.py`.

backbone-id.json: a handful of small tensors (several dtypes, a scalar, an empty tensor) and their
backbone id. core-file.json: a two-layer core, its core-file bytes and the parsed factors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from emshield.core import LoraFactors
from emshield.model.adapter import core_to_bytes
from emshield.model.io import DTYPE_NAMES, backbone_id_of, tensor_bytes

HERE = Path(__file__).resolve().parent


def backbone_vector() -> dict:
    tensors = {
        "model.embed_tokens.weight": torch.arange(12, dtype=torch.float32).reshape(4, 3) / 8,
        "model.norm.weight": torch.tensor([1.0, -2.5, 0.125], dtype=torch.bfloat16),
        "lm_head.bias": torch.tensor([1.5, -0.25], dtype=torch.float16),
        "step": torch.tensor(42, dtype=torch.int64),
        "empty": torch.empty(0, 3, dtype=torch.float32),
        "model.layers.10.w": torch.tensor([[3.0]]),
        "model.layers.9.w": torch.tensor([[-3.0]]),
    }
    return {
        "what": "backbone id (spec/decouple.md, 'Backbone id'), label emshield/backbone-id/v1",
        "produced_by": "spec/vectors/model/make_vectors.py",
        "tensors": {n: {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_hex": tensor_bytes(t).hex()}
                    for n, t in tensors.items()},
        "backbone_id": backbone_id_of(tensors),
    }


def core_vector() -> dict:
    a0 = (np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5) / 4
    b0 = (np.arange(8, dtype=np.float32).reshape(4, 2) - 3.0) / 8
    a1 = np.array([[0.5, -1.0]], dtype=np.float32)
    b1 = np.array([[2.0], [0.25]], dtype=np.float32)
    core = {"model.layers.0.self_attn.q_proj.weight": LoraFactors(a0, b0, 2.0),
            "model.layers.0.self_attn.v_proj.weight": LoraFactors(a1, b1, 0.5)}
    return {
        "what": "core file (spec/decouple.md, 'Core file'), format emshield/core/v1",
        "produced_by": "spec/vectors/model/make_vectors.py",
        "core_hex": core_to_bytes(core).hex(),
        "layers": {n: {"a": f.a.tolist(), "b": f.b.tolist(), "scale": f.scale, "delta": f.delta().tolist()}
                   for n, f in core.items()},
    }


if __name__ == "__main__":
    (HERE / "backbone-id.json").write_text(json.dumps(backbone_vector(), indent=2) + "\n")
    (HERE / "core-file.json").write_text(json.dumps(core_vector(), indent=2) + "\n")
