import numpy as np
import pytest

from emshield.core import LoraFactors


def test_delta_is_scaled_product() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    f = LoraFactors(a=a, b=b, scale=2.0)
    assert f.rank == 4 and f.shape == (5, 6)
    np.testing.assert_allclose(f.delta(), 2.0 * b.astype(np.float64) @ a.astype(np.float64))


def test_refactorisation_leaves_delta_unchanged() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 7)), rng.standard_normal((8, 3))
    r = rng.standard_normal((3, 3)) + 3 * np.eye(3)
    f1 = LoraFactors(a=a, b=b, scale=0.5)
    f2 = LoraFactors(a=np.linalg.solve(r, a), b=b @ r, scale=0.5)
    np.testing.assert_allclose(f1.delta(), f2.delta(), atol=1e-10)


@pytest.mark.parametrize(("a", "b"), [((3, 7), (8, 4)), ((3,), (8, 3))])
def test_bad_shapes_rejected(a, b) -> None:
    with pytest.raises(ValueError):
        LoraFactors(a=np.zeros(a), b=np.zeros(b), scale=1.0)


# --- the core file (emshield/core/v1): one parser, zero-copy views or owned copies ---------------

import json  # noqa: E402
import struct  # noqa: E402

from safetensors.numpy import load as st_load  # noqa: E402
from safetensors.numpy import save as st_save  # noqa: E402

from emshield.core import ModelFileError, core_from_bytes, core_to_bytes, core_view  # noqa: E402


def _core(seed: int = 0) -> dict[str, LoraFactors]:
    rng = np.random.default_rng(seed)
    return {"model.layers.0.self_attn.q_proj.weight": LoraFactors(
                rng.standard_normal((2, 6)).astype(np.float32), rng.standard_normal((5, 2)).astype(np.float32), 2.0),
            "model.layers.0.self_attn.v_proj.weight": LoraFactors(
                rng.standard_normal((3, 6)).astype(np.float16), rng.standard_normal((4, 3)).astype(np.float16), 0.25)}


def _same(x, y) -> bool:
    return x.keys() == y.keys() and all(
        x[k].scale == y[k].scale and x[k].a.dtype == y[k].a.dtype and x[k].b.dtype == y[k].b.dtype
        and np.array_equal(x[k].a, y[k].a) and np.array_equal(x[k].b, y[k].b) for k in x)


def test_core_view_arrays_are_read_only_views_of_the_buffer() -> None:
    buf = bytearray(core_to_bytes(_core()))
    core = core_view(buf)
    assert _same(core, _core())
    whole = np.frombuffer(buf, dtype=np.uint8)
    for f in core.values():
        assert np.shares_memory(f.a, whole) and np.shares_memory(f.b, whole)
        assert not f.a.flags.writeable and not f.b.flags.writeable
    start = 8 + int.from_bytes(buf[:8], "little")
    buf[start:] = bytes(len(buf) - start)  # a wipe of the buffer is seen through every array
    assert all(not f.a.any() and not f.b.any() for f in core.values())


def test_core_from_bytes_owns_writable_copies() -> None:
    buf = bytearray(core_to_bytes(_core()))
    core = core_from_bytes(buf)
    assert _same(core, _core())
    f = next(iter(core.values()))
    assert f.a.flags.writeable and not np.shares_memory(f.a, np.frombuffer(buf, dtype=np.uint8))
    buf[:] = bytes(len(buf))
    assert _same(core, _core())


def test_the_safetensors_library_agrees_with_our_reader_and_writer() -> None:
    core = _core(3)
    raw = core_to_bytes(core)
    theirs = st_load(raw)
    for name, f in core.items():
        assert np.array_equal(theirs[name + ".lora_A"], f.a) and np.array_equal(theirs[name + ".lora_B"], f.b)
        assert theirs[name + ".scale"] == f.scale
    assert raw == core_to_bytes(dict(reversed(list(core.items()))))


def _with_header(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


META = {"format": "emshield/core/v1"}
A = {"dtype": "F32", "shape": [1, 2], "data_offsets": [8, 16]}
B = {"dtype": "F32", "shape": [2, 1], "data_offsets": [16, 24]}
S = {"dtype": "F64", "shape": [], "data_offsets": [0, 8]}
ONE = struct.pack("<d", 1.0) + bytes(16)


def _minimal(**changes) -> bytes:
    header = {"__metadata__": META, "w.weight.lora_A": A, "w.weight.lora_B": B, "w.weight.scale": S}
    for k, v in changes.items():
        k = {"meta": "__metadata__", "a": "w.weight.lora_A", "b": "w.weight.lora_B", "s": "w.weight.scale"}.get(k, k)
        if v is None:
            header.pop(k)
        else:
            header[k] = v
    return header


def test_the_minimal_core_parses() -> None:
    """The base of the malformed cases below is itself valid, so each case fails for its own reason."""
    core = core_view(_with_header(_minimal(), ONE))
    assert core["w.weight"].shape == (2, 2) and core["w.weight"].scale == 1.0


@pytest.mark.parametrize(("raw", "match"), [
    (b"\x01\x02", "too short"),
    (struct.pack("<Q", 1 << 40) + b"{}", "header length"),
    (struct.pack("<Q", 3) + b"\xff\xfe{", "not JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (struct.pack("<Q", 27) + b'{"a": 1, "a": 2, "b": 3}   ', "duplicate"),
    (_with_header(_minimal(meta={"format": "emshield/core/v2"}), ONE), "format"),
    (_with_header(_minimal(meta={**META, "extra": 1}), ONE), "not a string map"),
    (_with_header(_minimal(meta=None), ONE), "not a string map"),
    (_with_header(_minimal(b=None), ONE[:16]), "lacks"),
    (_with_header(_minimal(), ONE + b"\x00"), "end where"),
    (_with_header(_minimal(b={**B, "data_offsets": [12, 20]}), ONE[:20]), "gaps or overlap"),
    (_with_header(_minimal(a={**A, "dtype": "BF16", "data_offsets": [8, 12]}, b={**B, "data_offsets": [12, 20]}),
                  ONE[:20]), "dtype"),
    (_with_header(_minimal(a={**A, "shape": [2]}), ONE), "matrices"),
    (_with_header(_minimal(a={**A, "shape": [1, True]}), ONE), "bad shape"),
    (_with_header(_minimal(a={**A, "shape": [1, 3]}), ONE), "does not match"),
    (_with_header(_minimal(a={**A, "extra": 1}), ONE), "exactly dtype"),
    (_with_header(_minimal(a={**A, "data_offsets": [16, 8]}), ONE), "bad data_offsets"),
    (_with_header(_minimal(s={**S, "dtype": "F32", "data_offsets": [0, 4]}, a={**A, "data_offsets": [4, 12]},
                           b={**B, "data_offsets": [12, 20]}), ONE[:20]), "float64 scalar"),
    (_with_header(_minimal(), struct.pack("<d", float("nan")) + bytes(16)), "finite"),
    (_with_header(_minimal(**{"w.weight.bias": {"dtype": "F32", "shape": [0], "data_offsets": [24, 24]}}), ONE),
     "unexpected tensor"),
    (_with_header({"__metadata__": META, "w.lora_A": A, "w.lora_B": B, "w.scale": S}, ONE), "must name a backbone"),
    (_with_header({"__metadata__": META}, b""), "no layers"),
])
def test_malformed_core_files_are_rejected(raw: bytes, match: str) -> None:
    with pytest.raises(ModelFileError, match=match):
        core_view(raw)
    with pytest.raises(ModelFileError, match=match):
        core_from_bytes(raw)


def test_library_written_files_are_read_and_other_metadata_is_ignored() -> None:
    core = _core(4)
    tensors = {f"{n}.{p}": x for n, f in core.items()
               for p, x in (("lora_A", f.a), ("lora_B", f.b), ("scale", np.array(f.scale)))}
    assert _same(core_view(st_save(tensors, metadata=META)), core)
    assert _same(core_view(st_save(tensors, metadata={**META, "note": "x"})), core)
    with pytest.raises(ModelFileError, match="format None"):
        core_view(st_save(tensors, metadata={"note": "x"}))
