"""Safe loading and saving of model tensors, and the backbone id.

Imports only torch, safetensors and numpy so that the verifier (which must not import peft or
transformers) can use it. Nothing here unpickles untrusted input with a stock unpickler:
safetensors is read directly, ``.pt``/``.pth``/``.bin`` files (zip or legacy) go through
``emshield.model.torchfile``, whose restricted unpickler resolves only tensor building blocks to
its own functions, and ``.gguf`` files through ``emshield.model.ggufread`` (bounded, no pickle);
a file that is not a plain ``{name: tensor}`` mapping is refused too.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from emshield.core import ModelFileError

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
GGUF_SUFFIX = ".gguf"
MAX_INDEX_BYTES = 64 * 1024 * 1024

BACKBONE_ID_LABEL = b"emshield/backbone-id/v1"

# safetensors' dtype names: the id hashes these strings, so they are part of the format.
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


class TensorSource:
    """Lazy read-only view of the tensors in a file or folder: ``keys()`` and ``get(name)``.

    safetensors files are memory-mapped and read one tensor at a time (``safe_open``), so a
    verifier can pull a few layers out of a large model without loading it. Use as a context
    manager, or call :meth:`close`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stack = ExitStack()
        self._where: dict[str, object] = {}  # name -> safe_open handle, or the tensor itself
        self.metadata: dict[str, str] = {}
        try:
            self._open(path)
        except BaseException:
            self._stack.close()
            raise

    def _open_safetensors(self, file: Path, only: set[str] | None = None) -> None:
        if not file.is_file():
            raise ModelFileError(f"missing safetensors file: {file}")
        try:
            handle = self._stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
        except Exception as e:  # safetensors raises its own SafetensorError for bad headers
            raise ModelFileError(f"{file} is not a valid safetensors file: {e}") from e
        self.metadata.update(handle.metadata() or {})
        for name in handle.keys():
            if only is not None and name not in only:
                continue
            if name in self._where:
                raise ModelFileError(f"tensor {name!r} appears twice ({file})")
            self._where[name] = handle

    def _open(self, path: Path) -> None:
        if not path.exists():
            raise ModelFileError(f"no such file or folder: {path}")
        if path.is_file():
            if path.suffix == ".safetensors":
                self._open_safetensors(path)
            elif path.suffix in PICKLE_SUFFIXES:
                self._where.update(load_pickled_tensors(path))
            elif path.suffix == GGUF_SUFFIX:
                from emshield.model.ggufread import GGUFError, open_gguf

                try:
                    self._where.update(self._stack.enter_context(open_gguf(path)).readers())
                except GGUFError as e:
                    raise ModelFileError(str(e)) from e
            else:
                raise ModelFileError(f"{path}: unknown model file type (expected .safetensors, .gguf, .pt, .pth "
                                     "or .bin)")
            return
        # A folder: HF model (single or sharded safetensors), or a peft adapter.
        if (path / SAFETENSORS_INDEX).is_file():
            self._open_sharded(path)
        elif (path / SAFETENSORS_SINGLE).is_file():
            self._open_safetensors(path / SAFETENSORS_SINGLE)
        elif (path / PEFT_WEIGHTS).is_file():
            self._open_safetensors(path / PEFT_WEIGHTS)
        else:
            pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if len(pickles) != 1:
                raise ModelFileError(
                    f"{path}: no {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX} or {PEFT_WEIGHTS}"
                    + (f", and {len(pickles)} .pt/.bin files" if pickles else ""))
            self._where.update(load_pickled_tensors(pickles[0]))

    def _open_sharded(self, folder: Path) -> None:
        index_path = folder / SAFETENSORS_INDEX
        if index_path.stat().st_size > MAX_INDEX_BYTES:
            raise ModelFileError(f"{index_path} is too large")
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ModelFileError(f"{index_path}: not a safetensors index ({e})") from e
        if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise ModelFileError(f"{index_path}: weight_map must map tensor names to file names")
        shards: dict[str, set[str]] = {}
        for name, shard in weight_map.items():
            if Path(shard).name != shard:
                raise ModelFileError(f"{index_path}: shard name {shard!r} must be a plain file name")
            shards.setdefault(shard, set()).add(name)
        for shard, names in sorted(shards.items()):
            self._open_safetensors(folder / shard, only=names)
        missing = set(weight_map) - set(self._where)
        if missing:
            raise ModelFileError(f"{index_path}: tensors listed but not in their shard: {sorted(missing)[:5]}")

    def keys(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, name: str) -> torch.Tensor:
        where = self._where.get(name)
        if where is None:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        if isinstance(where, torch.Tensor):
            return where
        if callable(where):  # a lazy reader (GGUF: dequantised on demand)
            return where()
        return where.get_tensor(name)  # type: ignore[attr-defined]

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.keys():
            yield name, self.get(name)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tensors(path: str | Path) -> TensorSource:
    """Open a safetensors file, a ``.pt``/``.bin`` tensor dict, a Hugging Face model folder
    (``model.safetensors`` or a sharded index) or a peft adapter folder, lazily where possible."""
    return TensorSource(Path(path))


def load_pickled_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save`` file (zip or legacy) through the restricted unpickler of
    ``emshield.model.torchfile``: no code in the file runs; only a flat ``{str: Tensor}`` dict is accepted."""
    from emshield.model.torchfile import TorchFileError, load_torch_file

    try:
        return load_torch_file(path)
    except TorchFileError as e:
        raise ModelFileError(str(e)) from e


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of ``path`` in memory (see :func:`open_tensors` for the accepted layouts)."""
    with open_tensors(path) as src:
        return dict(src.items())


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path, *,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write one safetensors file (contiguous copies; shared storage is split, as safetensors needs)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(p),
              metadata=dict(metadata) if metadata else None)
    return p


def save_sharded(tensors: Mapping[str, torch.Tensor], folder: str | Path, max_shard_bytes: int) -> Path:
    """Write a Hugging Face sharded layout (``model-0000i-of-0000n.safetensors`` + index)."""
    out = Path(folder)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name]
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_tensors(shard, out / fname, metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    (out / SAFETENSORS_INDEX).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True))
    return out


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw little-endian, C-order bytes of a tensor (any dtype, bf16 included)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def backbone_id_of(tensors: Mapping[str, torch.Tensor] | TensorSource) -> str:
    """SHA-256 (hex) over ``emshield/backbone-id/v1`` and every tensor's name, dtype, shape and
    bytes in name order (spec/decouple.md, "Backbone id"). File layout does not enter."""
    names = sorted(tensors.keys(), key=lambda s: s.encode("utf-8"))
    h = hashlib.sha256()
    h.update(struct.pack(">B", len(BACKBONE_ID_LABEL)) + BACKBONE_ID_LABEL)
    h.update(struct.pack(">Q", len(names)))
    for name in names:
        t = tensors.get(name)
        dtype = DTYPE_NAMES.get(t.dtype)
        if dtype is None:
            raise ModelFileError(f"tensor {name!r} has unsupported dtype {t.dtype}")
        nb = name.encode("utf-8")
        h.update(struct.pack(">I", len(nb)) + nb)
        h.update(struct.pack(">B", len(dtype)) + dtype.encode("ascii"))
        h.update(struct.pack(">B", t.dim()) + b"".join(struct.pack(">Q", d) for d in t.shape))
        data = tensor_bytes(t)
        h.update(struct.pack(">Q", len(data)))
        h.update(data)
    return h.hexdigest()


def backbone_id(path: str | Path) -> str:
    """Backbone id of the model at ``path`` (any layout :func:`open_tensors` accepts)."""
    with open_tensors(path) as src:
        if not len(src):
            raise ModelFileError(f"{path}: holds no tensors")
        return backbone_id_of(src)
