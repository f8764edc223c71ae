"""Audit tests: real `emshield-log` stores and servers (`_kit.logs`), witnesses (`_kit.witnesses`),
and the auditor run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from _kit.logs import issuer_key, log_files, server_factory  # noqa: F401  (fixtures)
from verifier.audit.cli import main as audit_cli


@pytest.fixture
def run_audit():
    """Run `emshield-audit ... --json` in-process: (exit code, parsed JSON output)."""

    def run(url: str, key: str, state: Path, *extra: str) -> tuple[int, dict]:
        result = CliRunner().invoke(audit_cli, ["--log", url, "--key", key, "--state", str(state), "--json", *extra])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        return result.exit_code, json.loads(result.stdout)

    return run
