"""Tensors out of ``torch.save`` files, zip or legacy (non-zip), without running any of their code.

Both formats are pickles that rebuild tensors from raw storages. The unpickler here resolves
exactly the globals a saved tensor dict needs — the storage types, ``torch._utils``' tensor
rebuilders and ``collections.OrderedDict`` — to functions of this module that build numpy
arrays from the storages' bytes; every other global is refused before anything is called. Storage
and view sizes are checked against the bytes present, so a hostile file can neither run code nor
make the reader allocate more than the file holds (spec/verify.md §2).
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_PICKLE_BYTES = 64 << 20  # the object pickle itself (names, shapes), not the tensor data
MAX_NDIM = 8

_STORAGES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_NUMPY: dict[torch.dtype, np.dtype] = {
    torch.float32: np.dtype("<f4"), torch.float64: np.dtype("<f8"), torch.float16: np.dtype("<f2"),
    torch.bfloat16: np.dtype("<u2"), torch.int64: np.dtype("<i8"), torch.int32: np.dtype("<i4"),
    torch.int16: np.dtype("<i2"), torch.int8: np.dtype("i1"), torch.uint8: np.dtype("u1"), torch.bool: np.dtype("?"),
}


class TorchFileError(ValueError):
    """Not a readable torch tensor file, or one that holds more than tensors."""


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


@dataclass
class _Storage:
    """A storage by key; ``data`` is filled when its bytes are read (after the pickle, in legacy files)."""

    key: str
    dtype: torch.dtype
    numel: int
    data: bytes | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > MAX_NDIM or not all(type(v) is int and v >= 0 for v in value):
        raise TorchFileError(f"bad tensor {what}")
    return value


def _rebuild(storage: object, offset: object, size: object, stride: object, *_rest: object) -> _TensorRef:
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
        raise TorchFileError("bad tensor storage or offset")
    return _TensorRef(storage, offset, _ints(size, "size"), _ints(stride, "stride"))


def _rebuild_parameter(data: object, *_rest: object) -> _TensorRef:
    if not isinstance(data, _TensorRef):
        raise TorchFileError("bad parameter")
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild,
    ("torch._utils", "_rebuild_tensor"): _rebuild,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only the globals in _ALLOWED; storages come from persistent ids."""

    def __init__(self, data: bytes, storages: dict[str, _Storage]) -> None:
        super().__init__(io.BytesIO(data))
        self.storages = storages

    def find_class(self, module: str, name: str) -> object:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise TorchFileError(f"refused: the pickle names {module}.{name}, which is not part of a tensor "
                                 "(nothing in the file was run)")
        return found

    def persistent_load(self, pid: object) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and type(pid[4]) is int
                and pid[4] >= 0 and (len(pid) == 5 or pid[5] is None)):
            raise TorchFileError("refused: a persistent id that is not a plain tensor storage")
        _, kind, key, _location, numel = pid[:5]
        have = self.storages.get(key)
        if have is None:
            have = self.storages[key] = _Storage(key, kind.dtype, numel)
        elif have.dtype != kind.dtype or have.numel != numel:
            raise TorchFileError(f"storage {key!r} is named with two types or sizes")
        return have


def _unpickle(data: bytes, storages: dict[str, _Storage]) -> object:
    if len(data) > MAX_PICKLE_BYTES:
        raise TorchFileError(f"the object pickle is larger than {MAX_PICKLE_BYTES} bytes")
    try:
        return _Unpickler(data, storages).load()
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            RecursionError, MemoryError, struct.error) as exc:
        raise TorchFileError(f"not a readable torch file: the pickle is malformed ({type(exc).__name__})") from exc


def _tensor(ref: _TensorRef) -> torch.Tensor:
    s = ref.storage
    if s.data is None:
        raise TorchFileError(f"storage {s.key!r} has no data in the file")
    np_dtype = _NUMPY[s.dtype]
    if len(s.data) != s.numel * np_dtype.itemsize:
        raise TorchFileError(f"storage {s.key!r} holds {len(s.data)} bytes, not {s.numel} elements")
    if len(ref.size) != len(ref.stride):
        raise TorchFileError("tensor size and stride disagree")
    count = int(np.prod(ref.size, dtype=object)) if ref.size else 1
    if count:
        last = ref.offset + sum((n - 1) * st for n, st in zip(ref.size, ref.stride))
        if last >= s.numel:
            raise TorchFileError(f"a tensor view reaches past its storage {s.key!r}")
    flat = np.frombuffer(s.data, dtype=np_dtype)
    view = np.lib.stride_tricks.as_strided(flat[ref.offset:] if count else flat[:0], shape=ref.size,
                                           strides=tuple(st * np_dtype.itemsize for st in ref.stride),
                                           writeable=False) if count else np.zeros(ref.size, np_dtype)
    out = torch.from_numpy(view.copy())
    return out.view(torch.bfloat16) if s.dtype == torch.bfloat16 else out


def _flat_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, _TensorRef) for k, v in obj.items()):
        raise TorchFileError(f"{path}: refused: expected a flat {{name: tensor}} dict, got {type(obj).__name__}")
    return {k: _tensor(v) for k, v in obj.items()}


def _read_zip(path: Path) -> dict[str, torch.Tensor]:
    try:
        with zipfile.ZipFile(path) as zf:
            pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkls) != 1:
                raise TorchFileError(f"{path}: not a torch zip file (no single <archive>/data.pkl)")
            prefix = pkls[0][: -len("data.pkl")]
            info = zf.getinfo(pkls[0])
            if info.file_size > MAX_PICKLE_BYTES:
                raise TorchFileError(f"{path}: the object pickle is larger than {MAX_PICKLE_BYTES} bytes")
            storages: dict[str, _Storage] = {}
            try:
                obj = _unpickle(zf.read(pkls[0]), storages)
            except TorchFileError as exc:
                raise TorchFileError(f"{path}: {exc}") from exc
            for s in storages.values():
                name = f"{prefix}data/{s.key}"
                try:
                    member = zf.getinfo(name)
                except KeyError:
                    raise TorchFileError(f"{path}: storage {s.key!r} is missing") from None
                if member.file_size != s.numel * _NUMPY[s.dtype].itemsize:
                    raise TorchFileError(f"{path}: storage {s.key!r} has the wrong size")
                s.data = zf.read(name)
    except zipfile.BadZipFile as exc:
        raise TorchFileError(f"{path}: not a readable torch file (damaged zip: {exc})") from exc
    return _flat_dict(obj, path)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def pickle(self) -> bytes:
        """The bytes of one pickle starting here (found by parsing its opcodes, running nothing)."""
        import pickletools

        stream = io.BytesIO(self.data)
        stream.seek(self.pos)
        try:
            for _op, _arg, _pos in pickletools.genops(stream):
                pass
        except (ValueError, EOFError) as exc:
            raise TorchFileError(f"not a readable torch file: a malformed pickle at byte {self.pos}") from exc
        start, self.pos = self.pos, stream.tell()
        return self.data[start:self.pos]

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise TorchFileError("not a readable torch file: it ends inside a storage")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def _read_legacy(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    cur = _Cursor(data)
    header = [_unpickle(cur.pickle(), {}) for _ in range(3)]
    if header[0] != LEGACY_MAGIC or header[1] != LEGACY_PROTOCOL or not isinstance(header[2], dict):
        raise TorchFileError(f"{path}: not a torch file (neither a zip archive nor the legacy format)")
    if header[2].get("little_endian") is not True:
        raise TorchFileError(f"{path}: big-endian torch files are not supported")
    storages: dict[str, _Storage] = {}
    obj = _unpickle(cur.pickle(), storages)
    keys = _unpickle(cur.pickle(), {})
    if not isinstance(keys, list) or sorted(keys) != sorted(storages) or len(set(keys)) != len(keys):
        raise TorchFileError(f"{path}: the storage list does not match the tensors")
    for key in keys:
        s = storages[key]
        (numel,) = struct.unpack("<q", cur.take(8))
        if numel != s.numel:
            raise TorchFileError(f"{path}: storage {key!r} says {numel} elements, the tensors say {s.numel}")
        s.data = cur.take(numel * _NUMPY[s.dtype].itemsize)
    return _flat_dict(obj, path)


def load_torch_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` dict of a ``torch.save`` file (zip or legacy), by the restricted unpickler."""
    p = Path(path)
    try:
        if zipfile.is_zipfile(p):
            return _read_zip(p)
        data = p.read_bytes()
    except OSError as exc:
        raise TorchFileError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    if not data:
        raise TorchFileError(f"{p}: the file is empty")
    try:
        return _read_legacy(p, data)
    except TorchFileError as exc:
        msg = str(exc)
        raise TorchFileError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from exc
