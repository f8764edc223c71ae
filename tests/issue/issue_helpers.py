"""Set-up for the issuance tests: a real log server on 127.0.0.1 and fixture-shaped cores."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from click.testing import CliRunner

from emshield.core import LoraFactors
from emshield.tlog.checkpoint import NoteVerifier
from log_server.cli import main as log_cli

ROOT = Path(__file__).resolve().parents[2]
BACKBONE = ROOT / "fixtures" / "tiny-llama"
BIN = Path(sys.executable).parent
TOKEN = "issue-test-operator-token-0123456789abcdefghij"


@dataclass(frozen=True)
class RunningLog:
    url: str
    verifier: NoteVerifier
    token: str
    db: Path

    @property
    def verifier_key(self) -> str:
        return self.verifier.verifier_key()


@contextmanager
def running_log(directory: Path, origin: str = "issue-test.emshield.example/log") -> Iterator[RunningLog]:
    """`emshield-log init`, then `emshield-log serve` (own session) on a free port."""
    db = directory / "log.db"
    result = CliRunner().invoke(log_cli, ["init", "--db", str(db), "--origin", origin, "--json"],
                                env={"EMSHIELD_LOG_OPERATOR_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    verifier = NoteVerifier.from_verifier_key(json.loads(result.output)["verifier_key"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(BIN / "emshield-log"), "serve", "--db", str(db), "--port", str(port), "--workers", "1",
                             "--threads", "4", "--log-level", "warning"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "log server exited"
            try:
                if requests.get(url + "/checkpoint", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "log server did not come up in 30 s"
            time.sleep(0.1)
        yield RunningLog(url, verifier, TOKEN, db)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def fixture_core(seed: int = 0, rank: int = 4, scale: float = 0.02) -> dict[str, LoraFactors]:
    """A random rank-`rank` core for the tiny-llama fixture's q/v projections (hidden 128, 2 of 4 KV heads)."""
    rng = np.random.default_rng(seed)
    core = {}
    for i in range(4):
        for proj, out in (("q_proj", 128), ("v_proj", 64)):
            a = (rng.standard_normal((rank, 128)) / np.sqrt(128)).astype(np.float32)
            b = (rng.standard_normal((out, rank)) * scale).astype(np.float32)
            core[f"model.layers.{i}.self_attn.{proj}.weight"] = LoraFactors(a, b, 2.0)
    return core
