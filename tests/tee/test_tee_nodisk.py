"""No plaintext core ever touches disk: seal a core with a recognisable random pattern, mount it, use
it (in-process and through a child command), then scan the temp dirs, the device dir and every
captured output for its bytes."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from _kit.tee import BACKBONE, LEAF
from emshield.core import LoraFactors, core_to_bytes
from emshield.device.cli import device_group
from emshield.tee.device import init_device
from emshield.tee.mount import mount
from emshield.tee.seal import seal_core

MAX_SCAN = 512 << 20


def _needles(plaintext: bytes) -> list[bytes]:
    """32-byte windows of the tensor data, raw and hex-encoded (a leak through a print would be hex/text)."""
    step = len(plaintext) // 9
    raw = [plaintext[i: i + 32] for i in range(step, len(plaintext) - 32, step)]
    return raw + [r.hex().encode() for r in raw]


def _scan(roots: list[tuple[Path, bool]], needles: list[bytes], since: float) -> list[str]:
    """Files under roots (only those changed since `since` for shared dirs) containing any needle."""
    hits = []
    for root, only_new in roots:
        for dirpath, _, files in os.walk(root, onerror=lambda e: None):
            for name in files:
                p = Path(dirpath) / name
                try:
                    st = p.lstat()
                    if not p.is_file() or p.is_symlink() or st.st_size > MAX_SCAN:
                        continue
                    if only_new and max(st.st_mtime, st.st_ctime) < since:
                        continue
                    data = p.read_bytes()
                except OSError:
                    continue
                if any(n in data for n in needles):
                    hits.append(str(p))
    return hits


def test_no_plaintext_on_disk_or_in_output(tmp_path: Path, capfd) -> None:
    since = time.time() - 1
    rng = np.random.default_rng(2026)
    core = {f"layers.{i}.q_proj.weight": LoraFactors(rng.standard_normal((8, 512)).astype(np.float32),
                                                     rng.standard_normal((512, 8)).astype(np.float32), 2.0)
            for i in range(4)}
    plaintext = core_to_bytes(core)
    needles = _needles(plaintext[8 + int.from_bytes(plaintext[:8], "little"):])
    dev = tmp_path / "device"
    device = init_device(dev, "file")
    blob = tmp_path / "core.sealed"
    blob.write_bytes(seal_core(core, device.record.public, device.binding(BACKBONE, LEAF)))
    del plaintext

    with mount(blob, device, BACKBONE, LEAF) as m:  # use it: merge-style arithmetic on the core
        norms = [float(np.linalg.norm(f.delta())) for f in m.core.values()]
    assert all(n > 0 for n in norms)
    child = ("import hashlib, numpy as np; from emshield.tee.mount import attach_inherited\n"
             "with attach_inherited() as v: print('child saw', len(v), 'bytes, sum', int(np.frombuffer(v, np.uint8).sum()))")
    r = CliRunner().invoke(device_group, ["mount", str(blob), "--backbone-id", BACKBONE.hex(), "--leaf-hash",
                                          LEAF.hex(), "--dir", str(dev), "--", sys.executable, "-c", child])
    assert r.exit_code == 0, r.output
    captured = capfd.readouterr()
    assert "child saw" in captured.out

    outputs = (r.output + captured.out + captured.err).encode()
    assert not [n for n in needles if n in outputs], "plaintext bytes in command output"
    roots = [(tmp_path, False), (dev, False), (Path(tempfile.gettempdir()), True), (Path("/dev/shm"), True),
             (Path.cwd(), True)]
    hits = _scan(roots, needles, since)
    assert not hits, f"plaintext core bytes found on disk: {hits}"

    # positive control: the scanner does find the pattern when it is on disk
    control = tmp_path / "control"
    control.mkdir()
    (control / "leak.bin").write_bytes(b"xx" + needles[3] + b"yy")
    assert _scan([(control, True)], needles, since) == [str(control / "leak.bin")]
