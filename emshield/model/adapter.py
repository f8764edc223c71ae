"""Conversions between the shared :data:`~emshield.core.Core` and its two file forms.

* the *core file*: one safetensors file of per-layer A/B factors and scales (spec/decouple.md,
  "Core file"), the bytes that marking and sealing work on;
* a *peft adapter folder* (``adapter_config.json`` + ``adapter_model.safetensors``), the form
  peft and the Hugging Face tooling load.

Only json, numpy and safetensors here (no peft): the verifier may read cores too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from emshield.core import (
    MAX_CORE_BYTES,
    Core,
    LoraFactors,
    ModelFileError,
    core_from_bytes,
    core_to_bytes,
    weight_module,
)
from emshield.model.io import PEFT_CONFIG, PEFT_WEIGHTS

MAX_ADAPTER_CONFIG_BYTES = 1024 * 1024
PEFT_PREFIX = "base_model.model."


def save_core(core: Core, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(core_to_bytes(core))
    return p


def load_core(path: str | Path) -> dict[str, LoraFactors]:
    """A core from a core file or a peft adapter folder."""
    p = Path(path)
    if p.is_dir():
        return read_peft_adapter(p)
    if not p.is_file():
        raise ModelFileError(f"no such core file or adapter folder: {p}")
    if p.stat().st_size > MAX_CORE_BYTES:
        raise ModelFileError(f"{p}: larger than {MAX_CORE_BYTES} bytes")
    return core_from_bytes(p.read_bytes())


# ---------------------------------------------------------------------------------------------
# peft adapter folders

def _pattern_value(patterns: Mapping[str, int | float], module: str, default: int | float) -> int | float:
    """peft's ``get_pattern_key``: the first key that matches ``(.*\\.)?(key)$`` wins."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter_config(folder: Path) -> dict:
    cfg_path = folder / PEFT_CONFIG
    if not cfg_path.is_file():
        raise ModelFileError(f"{folder}: not a peft adapter folder (no {PEFT_CONFIG})")
    if cfg_path.stat().st_size > MAX_ADAPTER_CONFIG_BYTES:
        raise ModelFileError(f"{cfg_path}: too large")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{cfg_path}: not JSON ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise ModelFileError(f"{cfg_path}: only LoRA adapters are supported (peft_type={cfg.get('peft_type')!r})")
    for flag, why in (("use_dora", "DoRA's ΔW is not B·A"), ("fan_in_fan_out", "transposed (Conv1D) layers")):
        if cfg.get(flag):
            raise ModelFileError(f"{cfg_path}: {flag}=true is not supported ({why})")
    if cfg.get("modules_to_save"):
        raise ModelFileError(f"{cfg_path}: modules_to_save makes full-weight copies, not a LoRA core")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), int | float) or isinstance(cfg.get(key), bool) or cfg[key] <= 0:
            raise ModelFileError(f"{cfg_path}: {key} must be a positive number")
    return cfg


def read_peft_adapter(folder: str | Path) -> dict[str, LoraFactors]:
    """Core from a peft LoRA adapter folder (scaling ``lora_alpha/r``, or ``/sqrt(r)`` with rsLoRA;
    ``rank_pattern``/``alpha_pattern`` honoured as peft does)."""
    folder = Path(folder)
    cfg = read_adapter_config(folder)
    weights = folder / PEFT_WEIGHTS
    if not weights.is_file():
        raise ModelFileError(f"{folder}: missing {PEFT_WEIGHTS}")
    try:
        tensors = st_load(weights.read_bytes())
    except (SafetensorError, ValueError) as e:
        raise ModelFileError(f"{weights}: not valid safetensors ({e})") from e
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in tensors.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight", key)
        if not m:
            raise ModelFileError(f"{weights}: unsupported adapter tensor {key!r} (only lora_A/lora_B of linear layers)")
        pairs.setdefault(m.group(1), {})[m.group(2)] = arr
    core: dict[str, LoraFactors] = {}
    rank_pattern = cfg.get("rank_pattern") or {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ModelFileError(f"{weights}: module {module!r} lacks lora_{'B' if 'A' in ab else 'A'}")
        r = _pattern_value(rank_pattern, module, cfg["r"])
        alpha = _pattern_value(alpha_pattern, module, cfg["lora_alpha"])
        if ab["A"].ndim != 2 or ab["A"].shape[0] != r:
            raise ModelFileError(f"{weights}: {module}.lora_A has shape {ab['A'].shape}, config says rank {r}")
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        try:
            core[f"{module}.weight"] = LoraFactors(a=ab["A"], b=ab["B"], scale=float(scale))
        except ValueError as e:
            raise ModelFileError(f"{weights}: module {module!r}: {e}") from e
    if not core:
        raise ModelFileError(f"{weights}: holds no LoRA factors")
    return core


def write_peft_adapter(core: Core, folder: str | Path, *, base_model: str | None = None) -> Path:
    """Write ``core`` as a peft adapter folder that ``PeftModel.from_pretrained`` loads.

    A uniform rank and scale gives a plain config (``lora_alpha = scale·r``); otherwise every
    module gets its own escaped ``rank_pattern``/``alpha_pattern`` entry, so that A and B are
    written exactly as they are (no scale folded into B).
    """
    if not core:
        raise ValueError("empty core")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    modules = {weight_module(name): f for name, f in sorted(core.items())}
    ranks = {f.rank for f in modules.values()}
    scales = {f.scale for f in modules.values()}
    r = max(ranks)
    alpha = next(iter(scales)) * r if len(ranks) == 1 and len(scales) == 1 else float(r)
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    if len(ranks) > 1 or len(scales) > 1:
        for module, f in modules.items():
            rank_pattern[re.escape(module)] = f.rank
            alpha_pattern[re.escape(module)] = f.scale * f.rank
    cfg = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none", "use_rslora": False,
        "use_dora": False, "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
        "target_modules": sorted(modules), "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
        "modules_to_save": None,
    }
    (folder / PEFT_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tensors = {}
    for module, f in modules.items():
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(f.a)
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(f.b)
    (folder / PEFT_WEIGHTS).write_bytes(st_save(tensors, metadata={"format": "pt"}))
    return folder
