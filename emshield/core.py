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
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
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


_DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
MAX_HEADER_BYTES = 16 * 1024 * 1024


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise ModelFileError(f"core file: duplicate key {k!r} in the safetensors header")
        out[k] = v
    return out


def _read_header(view: memoryview) -> tuple[dict, int]:
    if len(view) < 8:
        raise ModelFileError("core file too short")
    n = int.from_bytes(view[:8], "little")
    if n > min(MAX_HEADER_BYTES, len(view) - 8):
        raise ModelFileError(f"core file header length {n} exceeds the file or {MAX_HEADER_BYTES} bytes")
    try:
        header = json.loads(bytes(view[8: 8 + n]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"core file header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ModelFileError("core file header is not a JSON object")
    return header, 8 + n


def _tensor_range(name: str, spec: object) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, checked as the safetensors library checks it."""
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise ModelFileError(f"core file: tensor {name!r} entry must have exactly dtype, shape, data_offsets")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in _DTYPES:
        raise ModelFileError(f"core file: {name} dtype {dtype!r}: factors must be float16/32/64, scales float64")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise ModelFileError(f"core file: tensor {name!r} has a bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]):
        raise ModelFileError(f"core file: tensor {name!r} has bad data_offsets {offsets!r}")
    if offsets[1] - offsets[0] != math.prod(shape) * _DTYPES[dtype].itemsize:
        raise ModelFileError(f"core file: tensor {name!r} byte range does not match its shape and dtype")
    return _DTYPES[dtype], tuple(shape), offsets[0], offsets[1]


def core_view(buf: bytes | bytearray | memoryview) -> dict[str, LoraFactors]:
    """Parse and validate core-file bytes into read-only arrays that are *views over* `buf`.

    No tensor byte is copied: `emshield.tee.mount` parses the core inside the secret memory it was
    decrypted into, so the only plaintext is the one it wipes. The caller keeps `buf` alive and
    unchanged while the arrays are in use. Other metadata keys are ignored (writers emit only the
    format). Checks: version, the safetensors layout (exactly what
    the `safetensors` library enforces: known dtypes, byte ranges matching shape × dtype, no gaps,
    overlaps or trailing bytes), exactly A, B and scale per layer, matrix factors, matching ranks,
    float64 scalar finite scales."""
    view = memoryview(buf).cast("B")
    if len(view) > MAX_CORE_BYTES:
        raise ModelFileError(f"core file larger than {MAX_CORE_BYTES} bytes")
    header, data_start = _read_header(view)
    meta = header.pop("__metadata__", None)
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise ModelFileError(f"not an EMShield core file (safetensors metadata {meta!r} is not a string map)")
    if meta.get(CORE_META_KEY) != CORE_FORMAT:
        raise ModelFileError(f"not an EMShield core file (format {meta.get(CORE_META_KEY)!r}, want {CORE_FORMAT!r})")
    ranges = {name: _tensor_range(name, spec) for name, spec in header.items()}
    end = 0
    for begin, stop in sorted((r[2], r[3]) for r in ranges.values()):
        if begin != end:
            raise ModelFileError("core file: tensor byte ranges leave gaps or overlap")
        end = stop
    if data_start + end != len(view):
        raise ModelFileError("core file: tensor data does not end where the file ends")

    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, (dtype, shape, begin, _) in ranges.items():
        for suffix, part in _SUFFIXES.items():
            if key.endswith(suffix):
                arr = np.frombuffer(view, dtype=dtype, count=math.prod(shape), offset=data_start + begin)
                arr = arr.reshape(shape)
                arr.flags.writeable = False
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
        try:
            core[name] = LoraFactors(a=p["a"], b=p["b"], scale=float(p["scale"]))
        except ValueError as e:
            raise ModelFileError(f"core file: layer {name!r}: {e}") from None
    if not core:
        raise ModelFileError("core file holds no layers")
    return core


def core_from_bytes(data: bytes | bytearray | memoryview) -> dict[str, LoraFactors]:
    """Parse and validate core-file bytes (:func:`core_view`) into writable arrays of their own."""
    return {name: LoraFactors(a=f.a.copy(), b=f.b.copy(), scale=f.scale) for name, f in core_view(data).items()}
