"""Core plaintext layout: deterministic safetensors bytes, zero-copy strict parsing, library compatibility."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load, save
from tee_helpers import VECTORS, cores_equal, make_core

from emshield.core import LoraFactors
from emshield.tee.coreio import core_from_safetensors_buffer, core_to_safetensors_bytes
from emshield.tee.errors import MalformedCoreError


def test_vector_bytes_are_reproduced() -> None:
    v = json.loads((VECTORS / "core.json").read_text())
    core = {k: LoraFactors(np.array(t["a"], dtype=t["dtype"]), np.array(t["b"], dtype=t["dtype"]), t["scale"])
            for k, t in v["tensors"].items()}
    raw = core_to_safetensors_bytes(core)
    assert raw.hex() == v["safetensors"]
    assert cores_equal(core_from_safetensors_buffer(raw), core)


def test_round_trip_is_exact_and_deterministic() -> None:
    core = make_core(seed=3, layers=3)
    raw = core_to_safetensors_bytes(core)
    assert raw == core_to_safetensors_bytes(dict(reversed(list(core.items()))))
    assert cores_equal(core_from_safetensors_buffer(raw), core)


def test_safetensors_library_reads_ours_and_we_read_the_librarys() -> None:
    core = make_core(seed=4)
    theirs = load(core_to_safetensors_bytes(core))
    for name, f in core.items():
        assert np.array_equal(theirs[name + ".lora_A"], f.a) and np.array_equal(theirs[name + ".lora_B"], f.b)
    lib = save({f"{n}.lora_{x}": getattr(f, x.lower()) for n, f in core.items() for x in "AB"},
               metadata={"emshield.core": "v1", **{f"{n}.lora_scale": repr(f.scale) for n, f in core.items()}})
    assert cores_equal(core_from_safetensors_buffer(lib), core)


def test_arrays_are_read_only_views_of_the_buffer() -> None:
    buf = bytearray(core_to_safetensors_bytes(make_core()))
    core = core_from_safetensors_buffer(buf)
    a = next(iter(core.values())).a
    assert np.shares_memory(a, np.frombuffer(buf, dtype=np.uint8))
    assert not a.flags.writeable


def _with_header(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


GOOD_META = {"emshield.core": "v1", "w.lora_scale": "1.0"}
GOOD_A = {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]}
GOOD_B = {"dtype": "F32", "shape": [2, 1], "data_offsets": [8, 16]}


@pytest.mark.parametrize(("raw", "match"), [
    (b"\x01\x02", "shorter"),
    (struct.pack("<Q", 1 << 40) + b"{}", "header length"),
    (struct.pack("<Q", 3) + b"\xff\xfe{", "not JSON"),
    (_with_header({"__metadata__": {"x": "y"}}, b""), "metadata must declare"),
    (_with_header({"__metadata__": GOOD_META, "w.lora_A": GOOD_A}, bytes(8)), "partner"),
    (_with_header({"__metadata__": GOOD_META, "w.lora_A": GOOD_A, "w.lora_B": GOOD_B}, bytes(17)), "end where"),
    (_with_header({"__metadata__": GOOD_META, "w.lora_A": GOOD_A,
                   "w.lora_B": {**GOOD_B, "data_offsets": [4, 12]}}, bytes(12)), "gaps or overlap"),
    (_with_header({"__metadata__": GOOD_META, "w.lora_A": {**GOOD_A, "dtype": "I64"}, "w.lora_B": GOOD_B},
                  bytes(16)), "dtype"),
    (_with_header({"__metadata__": GOOD_META, "w.lora_A": {**GOOD_A, "shape": [2]}, "w.lora_B": GOOD_B},
                  bytes(16)), "matrix"),
    (_with_header({"__metadata__": {**GOOD_META, "w.lora_scale": "nan"}, "w.lora_A": GOOD_A, "w.lora_B": GOOD_B},
                  bytes(16)), "finite"),
    (_with_header({"__metadata__": {**GOOD_META, "extra": "1"}, "w.lora_A": GOOD_A, "w.lora_B": GOOD_B},
                  bytes(16)), "metadata keys"),
    (struct.pack("<Q", 27) + b'{"a": 1, "a": 2, "b": 3}   ', "duplicate"),
])
def test_malformed_cores_are_rejected(raw: bytes, match: str) -> None:
    with pytest.raises(MalformedCoreError, match=match):
        core_from_safetensors_buffer(raw)


def test_the_good_minimal_core_parses() -> None:
    """The base of the malformed cases above is itself valid, so each case fails for its own reason."""
    core = core_from_safetensors_buffer(_with_header({"__metadata__": GOOD_META, "w.lora_A": GOOD_A,
                                                      "w.lora_B": GOOD_B}, bytes(16)))
    assert core["w"].shape == (2, 2) and core["w"].scale == 1.0
