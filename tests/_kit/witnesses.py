"""A real C2SP tlog-witness for tests: `emshield-witness init` keys and `emshield-witness serve`
(gunicorn) on 127.0.0.1, with fixtures that start them and stop them after the test."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from emshield.tlog.checkpoint import CosignatureVerifier
from witness.cli import main as witness_cli

from .logs import Daemon
from .paths import BIN


@dataclass
class WitnessProcess(Daemon):
    """`emshield-witness serve`; up once it answers GET /add-checkpoint with 405."""

    READY_PATH = "/add-checkpoint"
    READY_STATUS = 405
    key_file: Path
    state: Path
    log_keys: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        cmd = [str(BIN / "emshield-witness"), "serve", "--key-file", str(self.key_file), "--state",
               str(self.state), "--port", str(self.port), "--log-level", "warning"]
        for k in self.log_keys:
            cmd += ["--log-key", k]
        return cmd

    def post(self, body: bytes) -> requests.Response:
        return requests.post(self.url + "/add-checkpoint", data=body, timeout=10)


@pytest.fixture
def witness_key(tmp_path):
    """Make a witness key with `emshield-witness init`: (key file, verifier)."""

    def make(name: str) -> tuple[Path, CosignatureVerifier]:
        path = tmp_path / f"{name.replace('/', '_')}.key"
        result = CliRunner().invoke(witness_cli, ["init", "--key-file", str(path), "--name", name, "--json"])
        assert result.exit_code == 0, result.output
        assert path.stat().st_mode & 0o777 == 0o600
        return path, CosignatureVerifier.from_verifier_key(json.loads(result.output)["verifier_key"])

    return make


@pytest.fixture
def witness_factory(tmp_path, witness_key):
    started: list[WitnessProcess] = []

    def start(name: str, log_keys: list[str]) -> tuple[WitnessProcess, CosignatureVerifier]:
        key_file, verifier = witness_key(name)
        w = WitnessProcess(key_file=key_file, state=tmp_path / f"{key_file.stem}.db", log_keys=log_keys).start()
        started.append(w)
        return w, verifier

    yield start
    for w in started:
        w.stop()
