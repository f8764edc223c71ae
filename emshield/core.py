"""The protected *core*: per-layer LoRA factors, the unit that is marked, sealed and issued.

Shared vocabulary between decoupling (`emshield.model`), marking (`emshield.marking`) and sealing
(`emshield.tee`), kept here so that none of them has to import another.

Keys of a :class:`Core` are the backbone's weight tensor names (e.g.
``model.layers.0.self_attn.q_proj.weight``), so that a merged model is exactly
``merged[name] = backbone[name] + core[name].delta()`` for every key and the backbone for every
other tensor.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

# The core file: one safetensors file of per-layer A/B factors and scales (spec/decouple.md,
# "Core file"), the bytes that decoupling writes and marking reads.
CORE_FORMAT = "emshield/core/v1"
CORE_META_KEY = "format"
MAX_CORE_BYTES = 2 * 1024 * 1024 * 1024
FACTOR_DTYPES = (np.float16, np.float32, np.float64)
_SUFFIXES = {".lora_A": "a", ".lora_B": "b", ".scale": "scale"}


class ModelFileError(ValueError):
    """A model or core file is missing, malformed, unsafe or not what the caller asked for."""


@dataclass(frozen=True)
class LoraFactors:
    """ΔW = scale · B · A for one linear layer (B: out×r, A: r×in), as peft defines it."""

    a: np.ndarray
    b: np.ndarray
    scale: float

    def __post_init__(self) -> None:
        if self.a.ndim != 2 or self.b.ndim != 2:
            raise ValueError(f"LoRA factors must be matrices, got A{self.a.shape} B{self.b.shape}")
        if self.b.shape[1] != self.a.shape[0]:
            raise ValueError(f"rank mismatch: B{self.b.shape} · A{self.a.shape}")
        if not np.isfinite(self.scale):
            raise ValueError("LoRA scale must be finite")

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of ΔW (out, in)."""
        return (self.b.shape[0], self.a.shape[1])

    def delta(self) -> np.ndarray:
        """ΔW in float64 (products of float32 factors lose digits otherwise)."""
        return self.scale * (self.b.astype(np.float64) @ self.a.astype(np.float64))


Core = Mapping[str, LoraFactors]


def weight_module(weight_name: str) -> str:
    """The module a backbone weight name belongs to (``x.weight`` -> ``x``)."""
    if not weight_name.endswith(".weight"):
        raise ModelFileError(f"core key {weight_name!r} must name a backbone weight (…'.weight')")
    return weight_name[: -len(".weight")]


def core_to_bytes(core: Core) -> bytes:
    """Serialise a core to the core-file bytes (deterministic for a given core)."""
    if not core:
        raise ValueError("empty core")
    tensors: dict[str, np.ndarray] = {}
    for name in sorted(core):
        weight_module(name)
        f = core[name]
        for part, arr in (("lora_A", f.a), ("lora_B", f.b)):
            if arr.dtype not in FACTOR_DTYPES:
                raise ValueError(f"{name}: factor dtype {arr.dtype} not in {FACTOR_DTYPES}")
            tensors[f"{name}.{part}"] = np.ascontiguousarray(arr)
        tensors[f"{name}.scale"] = np.array(float(f.scale), dtype=np.float64)
    return st_save(tensors, metadata={CORE_META_KEY: CORE_FORMAT})


def _header_metadata(data: bytes) -> dict:
    if len(data) < 8:
        raise ModelFileError("core file too short")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ModelFileError("core file header length exceeds the file")
    try:
        header = json.loads(data[8: 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"core file header is not JSON: {e}") from e
    return header.get("__metadata__") or {} if isinstance(header, dict) else {}


def core_from_bytes(data: bytes) -> dict[str, LoraFactors]:
    """Parse and validate core-file bytes: version, exactly A, B and scale per layer, shapes."""
    if len(data) > MAX_CORE_BYTES:
        raise ModelFileError(f"core file larger than {MAX_CORE_BYTES} bytes")
    meta = _header_metadata(data)
    if meta.get(CORE_META_KEY) != CORE_FORMAT:
        raise ModelFileError(f"not an EMShield core file (format {meta.get(CORE_META_KEY)!r}, want {CORE_FORMAT!r})")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as e:
        raise ModelFileError(f"core file is not valid safetensors: {e}") from e
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in tensors.items():
        for suffix, part in _SUFFIXES.items():
            if key.endswith(suffix):
                parts.setdefault(key[: -len(suffix)], {})[part] = arr
                break
        else:
            raise ModelFileError(f"core file: unexpected tensor {key!r}")
    core: dict[str, LoraFactors] = {}
    for name, p in sorted(parts.items()):
        weight_module(name)
        if set(p) != {"a", "b", "scale"}:
            raise ModelFileError(f"core file: layer {name!r} lacks {sorted({'a', 'b', 'scale'} - set(p))}")
        if p["scale"].shape != () or p["scale"].dtype != np.float64:
            raise ModelFileError(f"core file: {name}.scale must be a float64 scalar")
        if p["a"].dtype not in FACTOR_DTYPES or p["b"].dtype not in FACTOR_DTYPES:
            raise ModelFileError(f"core file: {name} factors must be float16/32/64")
        try:
            core[name] = LoraFactors(a=p["a"], b=p["b"], scale=float(p["scale"]))
        except ValueError as e:
            raise ModelFileError(f"core file: layer {name!r}: {e}") from e
    if not core:
        raise ModelFileError("core file holds no layers")
    return core
