"""Suspect files in the formats leakers use, written the way their tools write them (tests and
bench/attacks.py): GGUF as llama.cpp's converter lays it out (the `gguf` package, which ./run installs)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch


def save_gguf(state: dict[str, torch.Tensor], cfg, path: Path, qtype: str) -> Path:
    # cfg: a transformers LlamaConfig (heads, kv heads, layers, hidden size, norm eps)
    """llama.cpp's layout: its tensor names, q/k rows permuted for its RoPE, 2-D weights in ``qtype``."""
    import gguf

    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}

    def permute(w: np.ndarray, heads: int) -> np.ndarray:
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_head_count(nh)
    writer.add_head_count_kv(nkv)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(state["model.layers.0.mlp.gate_proj.weight"].shape[0])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    kind = getattr(gguf.GGMLQuantizationType, qtype)
    for name, tensor in sorted(state.items()):
        w = tensor.to(torch.float32).numpy()
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name)
        gname = f"blk.{m.group(1)}.{parts[m.group(2)]}.weight" if m else names[name]
        if name.endswith("q_proj.weight"):
            w = permute(w, nh)
        elif name.endswith("k_proj.weight"):
            w = permute(w, nkv)
        if w.ndim == 2 and qtype != "F32":
            writer.add_tensor(gname, gguf.quants.quantize(w, kind), raw_dtype=kind)
        else:
            writer.add_tensor(gname, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
