"""Loading local Hugging Face causal LMs (transformers imported only here and in training).

Always offline and always from a folder: ``local_files_only=True`` and safetensors weights, so
no hub access and no pickle. Models are loaded in float32 for CPU training and evaluation.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from emshield.model.io import SAFETENSORS_INDEX, SAFETENSORS_SINGLE, ModelFileError


def check_model_folder(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ModelFileError(f"model folder not found: {p}")
    if not (p / "config.json").is_file():
        raise ModelFileError(f"{p}: not a Hugging Face model folder (no config.json)")
    if not ((p / SAFETENSORS_SINGLE).is_file() or (p / SAFETENSORS_INDEX).is_file()):
        raise ModelFileError(f"{p}: no safetensors weights ({SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX})")
    return p


def _quiet_transformers() -> None:
    """transformers' per-load progress bars would interleave with our own output (and --json)."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    p = check_model_folder(path)
    model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype, local_files_only=True, use_safetensors=True)
    model.eval()
    return model


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    p = Path(path)
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise ModelFileError(f"{p}: no tokenizer files")
    tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@contextmanager
def peft_quiet() -> Iterator[None]:
    """Around our calls that wrap a model in peft: peft 0.21 reads ``model.is_gradient_checkpointing``
    when it wraps, and transformers 5 deprecated that property with a FutureWarning on every read.
    The read is peft's (newest release), not ours, so exactly that warning is silenced here and
    nowhere else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_adapter_model(backbone: str | Path, adapter: str | Path):
    """The adapter-wrapped model (peft), the reference a merged model must match."""
    from peft import PeftModel

    from emshield.model.adapter import read_adapter_config

    read_adapter_config(Path(adapter))  # clear errors before peft's
    with peft_quiet():
        model = PeftModel.from_pretrained(load_causal_lm(backbone), str(adapter), is_trainable=False)
    model.eval()
    return model
