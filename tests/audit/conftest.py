"""Audit and witness tests reuse the log-server test kit (real `emshield-log` stores and servers).

pytest runs with --import-mode=importlib, so that conftest is loaded here by path and its
fixtures re-exported, instead of being copied. The witness subprocess builds on its `Daemon`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from emshield.tlog.checkpoint import CosignatureVerifier
from verifier.audit_cli import main as audit_cli

_spec = importlib.util.spec_from_file_location("emshield_log_server_test_kit",
                                               Path(__file__).parents[1] / "log_server" / "conftest.py")
_kit = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _kit  # dataclasses look their module up there
_spec.loader.exec_module(_kit)

log_files = _kit.log_files
issuer_key = _kit.issuer_key
server_factory = _kit.server_factory
kit = _kit.kit


@pytest.fixture
def run_audit():
    """Run `emshield-audit ... --json` in-process: (exit code, parsed JSON output)."""

    def run(url: str, key: str, state: Path, *extra: str) -> tuple[int, dict]:
        result = CliRunner().invoke(audit_cli, ["--log", url, "--key", key, "--state", str(state), "--json", *extra])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        return result.exit_code, json.loads(result.output)

    return run


@dataclass
class WitnessProcess(_kit.Daemon):
    """`emshield-audit witness serve` (gunicorn); up once it answers GET /add-checkpoint with 405."""

    READY_PATH = "/add-checkpoint"
    READY_STATUS = 405
    key_file: Path
    state: Path
    log_keys: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        cmd = [str(_kit.BIN / "emshield-audit"), "witness", "serve", "--key-file", str(self.key_file), "--state",
               str(self.state), "--port", str(self.port), "--log-level", "warning"]
        for k in self.log_keys:
            cmd += ["--log-key", k]
        return cmd

    def post(self, body: bytes) -> requests.Response:
        return requests.post(self.url + "/add-checkpoint", data=body, timeout=10)


@pytest.fixture
def witness_key(tmp_path):
    """Make a witness key with `emshield-audit witness init`: (key file, verifier)."""

    def make(name: str) -> tuple[Path, CosignatureVerifier]:
        path = tmp_path / f"{name.replace('/', '_')}.key"
        result = CliRunner().invoke(audit_cli, ["witness", "init", "--key-file", str(path), "--name", name, "--json"])
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
