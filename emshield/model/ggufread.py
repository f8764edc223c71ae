"""GGUF files (llama.cpp's format) as Hugging Face Llama tensors, read with bounds (spec/verify.md §2).

Versions 2 and 3; tensor types F32, F16, BF16, Q8_0, Q4_0 and Q4_1 are dequantised to float32 on
demand (memory-mapped, one tensor at a time). llama.cpp's tensor names are mapped back to the
Hugging Face Llama names, and the rows of the query and key projections, which llama.cpp's converter
interleaves for its RoPE, are put back in the Hugging Face order. Every count, length, shape and
offset is checked against the file before anything is allocated; no code in the file runs.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_STRING = 1 << 20
MAX_ARRAY = 1 << 24
MAX_NDIM = 4
QK = 32
DEFAULT_ALIGNMENT = 32

# tensor type -> (name, block elements, block bytes)
TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", QK, 2 + QK // 2), 3: ("Q4_1", QK, 4 + QK // 2),
         8: ("Q8_0", QK, 2 + QK), 30: ("BF16", 1, 2)}
# value type -> struct format (scalars); 8 string, 9 array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_BLOCK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.([a-z_]+)\.weight")


class GGUFError(ValueError):
    """Not a GGUF file this reader supports, or a malformed one."""


class _Reader:
    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def _take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated GGUF file (needs {n} bytes at offset {self.pos})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> object:
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > MAX_STRING:
            raise GGUFError(f"{self.path}: a string of {n} bytes")
        try:
            return bytes(self._take(n)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GGUFError(f"{self.path}: a string that is not UTF-8") from exc

    def value(self, vtype: int, depth: int = 0) -> object:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9 and depth == 0:
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if count > MAX_ARRAY or count > len(self.buf) - self.pos:
                raise GGUFError(f"{self.path}: an array of {count} values")
            return [self.value(etype, 1) for _ in range(count)]
        raise GGUFError(f"{self.path}: unknown metadata value type {vtype}")


@dataclass(frozen=True)
class _Info:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first)
    kind: int
    offset: int  # absolute, in the file
    nbytes: int


def _dequantise(raw: np.ndarray, kind: int, count: int) -> np.ndarray:
    name = TYPES[kind][0]
    if name == "F32":
        return raw.view("<f4").astype(np.float32)
    if name == "F16":
        return raw.view("<f2").astype(np.float32)
    if name == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    blocks = raw.reshape(count // QK, TYPES[kind][2])
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)
    if name == "Q8_0":
        return (blocks[:, 2:].view(np.int8).astype(np.float32) * d).reshape(-1)
    start = 4 if name == "Q4_1" else 2
    qs = blocks[:, start:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # low nibbles first, then high
    if name == "Q4_0":
        return ((q - 8.0) * d).reshape(-1)
    m = blocks[:, 2:4].copy().view("<f2").astype(np.float32)
    return (q * d + m).reshape(-1)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter interleaves each head's rows (j, j + d/2); put them back."""
    if w.shape[0] % (2 * heads):
        raise GGUFError(f"a projection of {w.shape[0]} rows is not {heads} heads of RoPE pairs")
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFFile:
    """An open GGUF file: its metadata and lazy readers of its tensors under Hugging Face names."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mm = np.memmap(path, dtype=np.uint8, mode="r")
        buf = memoryview(self._mm)
        r = _Reader(buf, path)
        if bytes(r._take(4)) != MAGIC:
            raise GGUFError(f"{path}: not a GGUF file")
        version = r.scalar("<I")
        if version not in VERSIONS:
            raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise GGUFError(f"{path}: {n_tensors} tensors and {n_kv} metadata entries is too many")
        self.metadata: dict[str, object] = {}
        for _ in range(n_kv):
            key = r.string()
            self.metadata[key] = r.value(r.scalar("<I"))
        raw_infos = []
        for _ in range(n_tensors):
            name = r.string()
            ndim = r.scalar("<I")
            if not 1 <= ndim <= MAX_NDIM:
                raise GGUFError(f"{path}: tensor {name} has {ndim} dimensions")
            dims = tuple(r.scalar("<Q") for _ in range(ndim))
            raw_infos.append((name, dims, r.scalar("<I"), r.scalar("<Q")))
        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if type(align) is not int or not 1 <= align <= 1 << 16:
            raise GGUFError(f"{path}: bad alignment {align!r}")
        data_start = -(-r.pos // align) * align
        self.infos: dict[str, _Info] = {}
        for name, dims, kind, offset in raw_infos:
            if kind not in TYPES:
                raise GGUFError(f"{path}: tensor {name} has type {kind}, which this reader does not dequantise "
                                f"(supported: {', '.join(t[0] for t in TYPES.values())})")
            count = 1
            for d in dims:
                count *= d
            _, block, block_bytes = TYPES[kind]
            if count == 0 or count % block or (block > 1 and dims[0] % block):
                raise GGUFError(f"{path}: tensor {name} of shape {dims} does not fit its type's blocks")
            nbytes = count // block * block_bytes
            start = data_start + offset
            if offset % align or start + nbytes > len(buf):
                raise GGUFError(f"{path}: tensor {name} lies outside the file")
            if name in self.infos:
                raise GGUFError(f"{path}: tensor {name} appears twice")
            self.infos[name] = _Info(name, tuple(reversed(dims)), kind, start, nbytes)
        arch = self.metadata.get("general.architecture")
        if arch != "llama":
            raise GGUFError(f"{path}: GGUF architecture {arch!r} is not supported (llama)")
        heads = self.metadata.get("llama.attention.head_count")
        kv = self.metadata.get("llama.attention.head_count_kv", heads)
        if type(heads) is not int or type(kv) is not int or heads < 1 or kv < 1:
            raise GGUFError(f"{path}: the metadata lacks llama.attention.head_count")
        self.heads, self.kv_heads = heads, kv

    def array(self, name: str) -> np.ndarray:
        info = self.infos[name]
        raw = np.asarray(self._mm[info.offset:info.offset + info.nbytes])
        out = _dequantise(raw, info.kind, int(np.prod(info.shape))).reshape(info.shape)
        if name.endswith(".attn_q.weight"):
            out = _unpermute(out, self.heads)
        elif name.endswith(".attn_k.weight"):
            out = _unpermute(out, self.kv_heads)
        return out

    def readers(self) -> dict[str, Callable[[], torch.Tensor]]:
        """Hugging Face name -> a function reading the dequantised float32 tensor."""
        out: dict[str, Callable[[], torch.Tensor]] = {}
        for name in self.infos:
            m = _BLOCK_RE.fullmatch(name)
            hf = _GLOBAL.get(name) or (f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.weight"
                                       if m and m.group(2) in _BLOCK else name)
            if hf in out:
                raise GGUFError(f"{self.path}: two tensors map to {hf}")
            out[hf] = lambda name=name: torch.from_numpy(self.array(name).copy())
        return out

    def close(self) -> None:
        self._mm = None  # the map closes when the last view of it is gone


@contextmanager
def open_gguf(path: str | Path) -> Iterator[GGUFFile]:
    try:
        f = GGUFFile(Path(path))
    except (OSError, ValueError) as exc:
        if isinstance(exc, GGUFError):
            raise
        raise GGUFError(f"{path}: cannot read as GGUF: {exc}") from exc
    try:
        yield f
    finally:
        f.close()
