"""Safe loading and the backbone id: formats, layouts, hostile files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emshield.model.io import (
    ModelFileError, backbone_id, backbone_id_of, load_tensors, open_tensors, save_sharded, save_tensors,
)

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "spec" / "vectors" / "model"


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(32, 8, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=g),
        "model.layers.0.input_layernorm.weight": torch.ones(8),
        "model.norm.weight": torch.randn(8, generator=g).to(torch.bfloat16),
        "step": torch.tensor(7, dtype=torch.int64),
    }


def test_backbone_id_is_layout_independent(tmp_path: Path) -> None:
    t = _tensors()
    save_tensors(t, tmp_path / "single.safetensors")
    save_sharded(t, tmp_path / "sharded", max_shard_bytes=300)
    torch.save(t, tmp_path / "model.pt")
    (tmp_path / "folder").mkdir()
    save_tensors(t, tmp_path / "folder" / "model.safetensors")
    shards = list((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1, "the sharded layout must really have several shards"
    ids = {backbone_id(tmp_path / p) for p in ("single.safetensors", "sharded", "model.pt", "folder")}
    assert len(ids) == 1
    assert ids == {backbone_id_of(t)}


def test_backbone_id_changes_with_one_weight_name_dtype_or_shape(tmp_path: Path) -> None:
    t = _tensors()
    base = backbone_id_of(t)
    one = dict(t)
    w = t["model.layers.0.self_attn.q_proj.weight"].clone()
    w[3, 5] = torch.nextafter(w[3, 5], torch.tensor(10.0))  # one ulp of one weight
    one["model.layers.0.self_attn.q_proj.weight"] = w
    renamed = {("model.final_norm.weight" if k == "model.norm.weight" else k): v for k, v in t.items()}
    retyped = {**t, "model.layers.0.input_layernorm.weight": torch.ones(8, dtype=torch.float64)}
    reshaped = {**t, "model.layers.0.self_attn.q_proj.weight": t["model.layers.0.self_attn.q_proj.weight"].reshape(4, 16)}
    ids = [backbone_id_of(x) for x in (one, renamed, retyped, reshaped)]
    assert base not in ids and len(set(ids)) == 4


def test_backbone_id_vector() -> None:
    vec = json.loads((VECTORS / "backbone-id.json").read_text())
    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "I64": torch.int64, "F16": torch.float16}
    tensors = {}
    for name, spec in vec["tensors"].items():
        raw = bytearray(bytes.fromhex(spec["data_hex"]))
        flat = torch.frombuffer(raw, dtype=torch.uint8).view(dtypes[spec["dtype"]]) if raw else \
            torch.empty(0, dtype=dtypes[spec["dtype"]])
        tensors[name] = flat.reshape(spec["shape"])
    assert backbone_id_of(tensors) == vec["backbone_id"]


def test_fixture_backbone_id_matches_its_manifest() -> None:
    folder = ROOT / "fixtures" / "tiny-llama"
    manifest = json.loads((folder / "FIXTURE.json").read_text())
    assert backbone_id(folder) == manifest["backbone_id"]


def test_lazy_reads_return_single_tensors(tmp_path: Path) -> None:
    t = _tensors()
    save_sharded(t, tmp_path / "m", max_shard_bytes=300)
    with open_tensors(tmp_path / "m") as src:
        assert src.keys() == sorted(t)
        assert torch.equal(src.get("model.norm.weight"), t["model.norm.weight"])
        with pytest.raises(KeyError):
            src.get("nope")


class _Exploit:
    """A pickle payload that creates a file when unpickled, if anything unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_does_not_run(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model.norm.weight": torch.ones(2), "x": _Exploit(marker)}, evil,
               _use_new_zipfile_serialization=not legacy)
    # Sanity: the payload is live (an unrestricted load in a child process runs it).
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(evil)!r}, weights_only=False)"],
                   capture_output=True, timeout=120)
    assert marker.exists(), "the exploit fixture must really execute code when unpickled unsafely"
    marker.unlink()
    with pytest.raises(ModelFileError, match="refused"):
        load_tensors(evil)
    with pytest.raises(ModelFileError, match="refused") as exc:
        backbone_id(evil)
    assert not marker.exists(), "loading the malicious pickle ran its code"
    assert "posix.system" in str(exc.value) and "weights_only" not in str(exc.value)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("obj", [{"a": 1}, [torch.ones(2)], {"w": {"nested": torch.ones(2)}}])
def test_pickles_that_are_not_flat_tensor_dicts_are_refused(tmp_path: Path, obj, legacy: bool) -> None:
    torch.save(obj, tmp_path / "x.pt", _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ModelFileError, match="refused"):
        load_tensors(tmp_path / "x.pt")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool])
def test_legacy_and_zip_torch_files_read_exactly(tmp_path: Path, dtype: torch.dtype) -> None:
    """`torch.save(..., _use_new_zipfile_serialization=False)` files are read (they used to be bad
    input), views of shared storages included, bit for bit, by the restricted unpickler."""
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6).to(dtype)
    tensors = {"a": base, "a_t": base.t(), "slice": base[1:3, 2:], "scalar": base[0, 0]}
    for legacy in (True, False):
        torch.save(tensors, tmp_path / "x.pt", _use_new_zipfile_serialization=not legacy)
        back = load_tensors(tmp_path / "x.pt")
        assert set(back) == set(tensors)
        for k, v in tensors.items():
            assert back[k].dtype == v.dtype and torch.equal(back[k], v), (legacy, k)


def test_corrupt_torch_files_are_refused_with_a_message_for_the_user(tmp_path: Path) -> None:
    """Truncated, empty or altered files: a one-line refusal that never tells the user to re-save
    the file nor quotes torch's advice to load it with weights_only=False."""
    torch.save({"w": torch.ones(64)}, tmp_path / "ok.pt", _use_new_zipfile_serialization=False)
    data = (tmp_path / "ok.pt").read_bytes()
    cases = {"empty": b"", "text": b"hello world\n", "truncated": data[:-20], "header only": data[:40],
             "random": bytes(range(256)) * 4}
    torch.save({"w": torch.ones(64)}, tmp_path / "z.pt")
    cases["zip truncated"] = (tmp_path / "z.pt").read_bytes()[:300]
    for name, raw in cases.items():
        (tmp_path / "bad.pt").write_bytes(raw)
        with pytest.raises(ModelFileError) as exc:
            load_tensors(tmp_path / "bad.pt")
        msg = str(exc.value)
        assert "\n" not in msg and "weights_only" not in msg and "re-sav" not in msg.lower() \
            and "_use_new_zipfile" not in msg, (name, msg)


def test_a_storage_claiming_more_than_the_file_holds_is_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(8)}, tmp_path / "x.pt", _use_new_zipfile_serialization=False)
    data = bytearray((tmp_path / "x.pt").read_bytes())
    at = len(data) - 8 * 4 - 8  # the storage's element count, just before its 32 bytes
    data[at:at + 8] = (1 << 40).to_bytes(8, "little")
    (tmp_path / "x.pt").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="elements|ends inside"):
        load_tensors(tmp_path / "x.pt")


def test_bad_paths_and_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        open_tensors(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelFileError, match="not a valid safetensors"):
        open_tensors(tmp_path / "junk.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(ModelFileError):
        open_tensors(tmp_path / "junk.pt")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ModelFileError, match="unknown model file type"):
        open_tensors(tmp_path / "w.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="no model.safetensors"):
        open_tensors(tmp_path / "empty")
    sharded = save_sharded(_tensors(), tmp_path / "sh", max_shard_bytes=300)
    next(sharded.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(ModelFileError, match="missing safetensors file"):
        open_tensors(sharded)
    idx = tmp_path / "trav"
    idx.mkdir()
    (idx / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../evil.safetensors"}}))
    with pytest.raises(ModelFileError, match="plain file name"):
        open_tensors(idx)
