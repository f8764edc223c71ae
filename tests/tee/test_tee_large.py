"""A 100 MiB core is sealed and mounted with bounded memory (peak RSS measured in a fresh process)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from emshield.tee.device import init_device

SIZE = 100 << 20

SCRIPT = r"""
import hashlib, json, sys
from emshield.tee.device import load_device
from emshield.tee.mount import mount
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
        seal_stream(f, g, int(sys.argv[7]), device.record.public, device.binding(backbone, leaf))
else:
    with mount(blob, device, backbone, leaf) as m:
        out["sha256"] = hashlib.sha256(m.plaintext).hexdigest()
        out["memory"] = m.memory_kind
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
    src, blob = tmp_path / "synthetic.bin", tmp_path / "synthetic.sealed"
    digest = hashlib.sha256()
    with open(src, "wb") as f:  # synthetic bytes (not a secret), written without holding 100 MiB
        block = hashlib.shake_256(b"emshield/test/large").digest(1 << 20)
        for i in range(SIZE >> 20):
            chunk = bytes([i % 256]) + block[1:]
            digest.update(chunk)
            f.write(chunk)
    ids = [bytes(range(32)).hex(), bytes(range(32, 64)).hex()]
    sealed = _run("seal", str(device.directory), str(src), str(blob), *ids, str(SIZE))
    assert blob.stat().st_size == SIZE + 80 + 112 + 16 * (SIZE >> 20)
    assert sealed["peak_growth_kib"] < 16 << 10, f"seal used {sealed['peak_growth_kib']} KiB for a {SIZE}-byte stream"
    mounted = _run("mount", str(device.directory), "", str(blob), *ids)
    assert mounted["sha256"] == digest.hexdigest()
    # the mount holds the plaintext itself (secret memory counts in RSS); nothing beyond a few chunks more
    assert mounted["peak_growth_kib"] < (SIZE >> 10) + (16 << 10), mounted
