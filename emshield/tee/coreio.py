"""A core as safetensors bytes, and back as zero-copy arrays (spec/sealed.md §Core plaintext).

Both directions are our own code over the safetensors layout: writing must be deterministic (the
library orders metadata at random), and reading must build arrays *over* the unsealed secret buffer
(np.frombuffer) instead of copying tensors into ordinary, unwipeable heap memory, which
`safetensors.numpy.load(bytes)` would do. Tests check both against the `safetensors` library.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np

from emshield.core import Core, LoraFactors
from emshield.tee.errors import MalformedCoreError

CORE_FORMAT_KEY = "emshield.core"
CORE_FORMAT = "v1"
SUFFIX_A, SUFFIX_B, SUFFIX_SCALE = ".lora_A", ".lora_B", ".lora_scale"
MAX_HEADER = 16 << 20
DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}


def core_to_safetensors_bytes(core: Core) -> bytes:
    """Deterministic safetensors bytes of a core (spec/sealed.md §Core plaintext).

    Tensors `<name>.lora_A` (r×in) and `<name>.lora_B` (out×r), little-endian, ordered by
    descending item size then name (every tensor stays aligned);
    metadata `emshield.core` = "v1" and `<name>.lora_scale` = repr(scale); header JSON with sorted
    keys and no spaces, space-padded to a multiple of 8 bytes. Written here rather than with
    `safetensors.numpy.save`, whose metadata order is random, so equal cores give equal bytes; the
    tests check that the `safetensors` library reads it back."""
    tensors: dict[str, np.ndarray] = {}
    metadata = {CORE_FORMAT_KEY: CORE_FORMAT}
    for name, f in core.items():
        for arr in (f.a, f.b):
            if arr.dtype.newbyteorder("<") not in DTYPES.values():
                raise ValueError(f"{name}: dtype {arr.dtype} not in F16/F32/F64")
        tensors[name + SUFFIX_A] = np.ascontiguousarray(f.a, dtype=f.a.dtype.newbyteorder("<"))
        tensors[name + SUFFIX_B] = np.ascontiguousarray(f.b, dtype=f.b.dtype.newbyteorder("<"))
        metadata[name + SUFFIX_SCALE] = repr(float(f.scale))
    codes = {v: k for k, v in DTYPES.items()}
    header: dict[str, object] = {"__metadata__": metadata}
    order = sorted(tensors, key=lambda n: (-tensors[n].dtype.itemsize, n))  # wider dtypes first: aligned
    offset = 0
    for name in order:
        arr = tensors[name]
        header[name] = {"dtype": codes[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii")
    text += b" " * (-len(text) % 8)
    return b"".join([struct.pack("<Q", len(text)), text, *(tensors[n].tobytes() for n in order)])


def _fail(msg: str) -> MalformedCoreError:
    return MalformedCoreError(f"not a valid core: {msg}")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise _fail(f"duplicate key {k!r} in safetensors header")
        out[k] = v
    return out


def _parse_header(buf: memoryview) -> tuple[dict[str, object], int]:
    if len(buf) < 8:
        raise _fail("shorter than the 8-byte safetensors header length")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > MAX_HEADER or 8 + n > len(buf):
        raise _fail(f"header length {n} exceeds the buffer or the {MAX_HEADER}-byte limit")
    try:
        header = json.loads(bytes(buf[8: 8 + n]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise _fail("header is not a JSON object")
    return header, 8 + n


def _tensor_spec(name: str, spec: object) -> tuple[np.dtype, tuple[int, int], int, int]:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise _fail(f"tensor {name!r} entry must have exactly dtype, shape, data_offsets")
    dtype, shape, offs = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in DTYPES:
        raise _fail(f"tensor {name!r} dtype {dtype!r} not in {sorted(DTYPES)}")
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(d) is int and d >= 0 for d in shape)):
        raise _fail(f"tensor {name!r} must be a matrix, shape {shape!r}")
    if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int and o >= 0 for o in offs)
            and offs[0] <= offs[1]):
        raise _fail(f"tensor {name!r} has bad data_offsets {offs!r}")
    if offs[1] - offs[0] != math.prod(shape) * DTYPES[dtype].itemsize:
        raise _fail(f"tensor {name!r} byte range does not match its shape and dtype")
    return DTYPES[dtype], (shape[0], shape[1]), offs[0], offs[1]


def core_from_safetensors_buffer(buf: bytes | bytearray | memoryview) -> dict[str, LoraFactors]:
    """Parse a core; arrays are read-only views over `buf` (no copy). Strict: unknown tensors or
    metadata, gaps/overlaps between tensors, trailing bytes and missing pairs are errors."""
    view = memoryview(buf).cast("B")
    header, data_start = _parse_header(view)
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get(CORE_FORMAT_KEY) != CORE_FORMAT:
        raise _fail(f"metadata must declare {CORE_FORMAT_KEY}={CORE_FORMAT}")
    specs = {name: _tensor_spec(name, spec) for name, spec in header.items()}
    ranges = sorted((s[2], s[3]) for s in specs.values())
    end = 0
    for begin, stop in ranges:
        if begin != end:
            raise _fail("tensor byte ranges leave gaps or overlap")
        end = stop
    if data_start + end != len(view):
        raise _fail("tensor data does not end where the buffer ends")

    def array(name: str) -> np.ndarray:
        dtype, shape, begin, _ = specs[name]
        arr = np.frombuffer(view, dtype=dtype, count=shape[0] * shape[1], offset=data_start + begin)
        arr = arr.reshape(shape)
        arr.flags.writeable = False
        return arr

    names = {n[: -len(SUFFIX_A)] for n in specs if n.endswith(SUFFIX_A)}
    expected_tensors = {n + s for n in names for s in (SUFFIX_A, SUFFIX_B)}
    if set(specs) != expected_tensors:
        raise _fail(f"tensors without a lora_A/lora_B partner: {sorted(set(specs) ^ expected_tensors)}")
    expected_meta = {CORE_FORMAT_KEY} | {n + SUFFIX_SCALE for n in names}
    if set(meta) != expected_meta:
        raise _fail(f"metadata keys {sorted(set(meta) ^ expected_meta)} unexpected or missing")
    core: dict[str, LoraFactors] = {}
    for name in sorted(names):
        try:
            scale = float(meta[name + SUFFIX_SCALE])
            core[name] = LoraFactors(a=array(name + SUFFIX_A), b=array(name + SUFFIX_B), scale=scale)
        except (TypeError, ValueError) as e:
            raise _fail(f"{name}: {e}") from None
    return core

