"""A 100 MiB core file is sealed and mounted with bounded memory (peak RSS measured in a fresh process)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from emshield.core import LoraFactors, core_to_bytes
from emshield.tee.device import init_device

LAYERS, DIM, RANK = 50, 4096, 64  # 50 × (64×4096 + 4096×64) float32 = 100 MiB of factors

SCRIPT = r"""
import hashlib, json, sys
from emshield.tee.device import load_device
from emshield.tee.mount import mount
from emshield.tee.blobformat import CONTENT_CORE
from emshield.tee.seal import seal_stream

def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

mode, device_dir, src, blob, backbone, leaf = sys.argv[1:7]
device = load_device(device_dir)
backbone, leaf = bytes.fromhex(backbone), bytes.fromhex(leaf)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)
base = status_kib("VmRSS")
assert status_kib("VmHWM") <= base + 256, "peak RSS was not reset"
out = {}
if mode == "seal":
    with open(src, "rb") as f, open(blob, "wb") as g:
        seal_stream(f, g, int(sys.argv[7]), device.record.public, device.binding(backbone, leaf),
                    content_type=CONTENT_CORE)
else:
    with mount(blob, device, backbone, leaf) as m:
        out["sha256"] = hashlib.sha256(m.plaintext).hexdigest()
        out["memory"] = m.memory_kind
        out["layers"] = len(m.core)
        out["checksum"] = float(sum(f.a[:, :8].astype("float64").sum() + f.b[-8:].astype("float64").sum()
                                    for f in m.core.values()))
out["peak_growth_kib"] = status_kib("VmHWM") - base
print(json.dumps(out))
"""


def _run(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
def test_100mib_core_seal_and_mount_with_bounded_memory(tmp_path) -> None:
    device = init_device(tmp_path / "d", "file")
    src, blob = tmp_path / "synthetic-core.safetensors", tmp_path / "synthetic.sealed"
    rng = np.random.default_rng(100)
    core = {f"model.layers.{i}.mlp.up_proj.weight": LoraFactors(
        rng.standard_normal((RANK, DIM), dtype=np.float32), rng.standard_normal((DIM, RANK), dtype=np.float32), 2.0)
        for i in range(LAYERS)}
    plaintext = core_to_bytes(core)  # the issuer's copy of a synthetic core (not a secret)
    size = len(plaintext)
    assert size > 100 << 20
    src.write_bytes(plaintext)
    digest = hashlib.sha256(plaintext).hexdigest()
    checksum = float(sum(f.a[:, :8].astype("float64").sum() + f.b[-8:].astype("float64").sum() for f in core.values()))
    del plaintext, core
    ids = [bytes(range(32)).hex(), bytes(range(32, 64)).hex()]
    sealed = _run("seal", str(device.directory), str(src), str(blob), *ids, str(size))
    chunks = -(-size // (1 << 20))
    assert blob.stat().st_size == size + 80 + 112 + 16 * chunks
    assert sealed["peak_growth_kib"] < 16 << 10, f"seal used {sealed['peak_growth_kib']} KiB for a {size}-byte stream"
    mounted = _run("mount", str(device.directory), "", str(blob), *ids)
    assert mounted["sha256"] == digest and mounted["layers"] == LAYERS and mounted["checksum"] == checksum
    # the mount holds the plaintext itself (secret memory counts in RSS) and parses it without a copy:
    # nothing beyond a few chunks more
    assert mounted["peak_growth_kib"] < (size >> 10) + (16 << 10), mounted
