"""Helpers shared by the sealing tests: sample cores, fixed bindings, a real swtpm TPM 2.0 simulator."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from emshield.core import LoraFactors

from .ci import require
from .paths import VECTORS as VECTORS_ROOT

VECTORS = VECTORS_ROOT / "tee"
BACKBONE = bytes(range(32))
LEAF = bytes(range(100, 132))


def cores_equal(x: Mapping[str, LoraFactors], y: Mapping[str, LoraFactors]) -> bool:
    return x.keys() == y.keys() and all(
        x[k].scale == y[k].scale and x[k].a.dtype == y[k].a.dtype and x[k].b.dtype == y[k].b.dtype
        and np.array_equal(x[k].a, y[k].a) and np.array_equal(x[k].b, y[k].b) for k in x)


def make_core(seed: int = 0, layers: int = 2, dim: int = 32, rank: int = 4) -> dict[str, LoraFactors]:
    rng = np.random.default_rng(seed)
    return {f"model.layers.{i}.self_attn.{p}_proj.weight": LoraFactors(
        rng.standard_normal((rank, dim)).astype(np.float32), rng.standard_normal((dim, rank)).astype(np.float32),
        0.5 + i) for i in range(layers) for p in ("q", "v")}


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for swtpm")


@contextmanager
def start_swtpm(state: Path) -> Iterator[str]:
    """A real swtpm TPM 2.0 simulator on 127.0.0.1 with its state in `state`; yields its TCTI string."""
    exe = shutil.which("swtpm")
    require(exe is not None, "swtpm not installed (apt-get install swtpm)")
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError as e:
        require(False, f"tpm2-pytss not importable: {e}")
    port = _free_port_pair()
    proc = subprocess.Popen(
        [exe, "socket", "--tpm2", "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
         "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1", "--tpmstate", f"dir={state}",
         "--flags", "not-need-init,startup-clear"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"swtpm did not start: {proc.stderr.read().decode(errors='replace')}")
            time.sleep(0.05)
    try:
        yield f"swtpm:host=127.0.0.1,port={port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
