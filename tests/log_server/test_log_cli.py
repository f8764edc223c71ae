"""`emshield-log init`, `set-token` and `serve`: keys, credential handling and clear refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from _kit.logs import init_log, registration
from emshield.logclient.http import LogClient, LogClientError
from emshield.tlog.checkpoint import NoteVerifier, verify_checkpoint
from log_server.cli import main as log_cli
from log_server.storage import SqliteStore

BIN = Path(sys.executable).parent


def test_init_creates_store_key_and_generated_token(tmp_path: Path, server_factory, issuer_key) -> None:
    db = tmp_path / "log.db"
    env = {k: v for k, v in os.environ.items() if k != "EMSHIELD_LOG_OPERATOR_TOKEN"}
    out = subprocess.run([str(BIN / "emshield-log"), "init", "--db", str(db), "--origin", "example.org/log"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    verifier = NoteVerifier.from_verifier_key(lines["verifier key"])
    token = lines["operator token (shown once, only its hash is stored)"]
    key_file = tmp_path / "log.db.signer-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert token.encode() not in db.read_bytes() and token.encode() not in key_file.read_bytes()
    store = SqliteStore(db)
    cp = verify_checkpoint(store.latest_checkpoint().note, verifier)  # the empty tree, signed at init
    assert (cp.origin, cp.size) == ("example.org/log", 0)
    store.close()
    srv = server_factory(db, workers=1)
    assert LogClient(srv.url, operator_token=token).register_issuer(registration(issuer_key)).index == 0


def test_init_refuses_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    db = tmp_path / "log.db"
    cases = [
        (["--origin", "has space"], {}, "origin must be"),
        (["--origin", "a+b"], {}, "origin must be"),
        (["--origin", ""], {}, "origin must be"),
        (["--origin", "ok.example/log"], {"EMSHIELD_LOG_OPERATOR_TOKEN": "short"}, "at least 32"),
    ]
    for args, env, message in cases:
        result = runner.invoke(log_cli, ["init", "--db", str(db), *args], env=env)
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert not db.exists() and not (tmp_path / "log.db.signer-key").exists()
    ok = runner.invoke(log_cli, ["init", "--db", str(db), "--origin", "ok.example/log", "--json"])
    assert ok.exit_code == 0, ok.output
    again = runner.invoke(log_cli, ["init", "--db", str(db), "--origin", "ok.example/log"])
    assert again.exit_code != 0 and "already exists" in again.output


def test_serve_refuses_unusable_store_or_key(tmp_path: Path, log_files) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "emshield-log"), "serve", *args, "--port", "1"], capture_output=True,
                              text=True, timeout=60)

    out = serve("--db", str(tmp_path / "missing.db"))
    assert out.returncode != 0 and "does not exist" in out.stderr
    not_a_log = tmp_path / "other.db"
    not_a_log.write_bytes(b"SQLite format 3\x00" + bytes(100))
    out = serve("--db", str(not_a_log))
    assert out.returncode != 0 and "Error" in out.stderr
    log_files.key_file.chmod(0o644)
    out = serve("--db", str(log_files.db))
    assert out.returncode != 0 and "readable by others" in out.stderr
    log_files.key_file.chmod(0o600)
    (tmp_path / "other").mkdir()
    stranger = init_log(tmp_path / "other", origin="other.example/log")
    out = serve("--db", str(log_files.db), "--key-file", str(stranger.key_file))
    assert out.returncode != 0 and "does not match the log origin" in out.stderr


def test_set_token_replaces_the_operator_credential(log_files, server_factory, issuer_key) -> None:
    srv = server_factory(log_files.db, workers=1)
    result = CliRunner().invoke(log_cli, ["set-token", "--db", str(log_files.db), "--json"],
                                env={"EMSHIELD_LOG_OPERATOR_TOKEN": None})
    assert result.exit_code == 0, result.output
    new = json.loads(result.output)["operator_token"]
    try:
        LogClient(srv.url, operator_token=log_files.token).register_issuer(registration(issuer_key))
        raise AssertionError("the old token still works")
    except LogClientError as exc:
        assert exc.code == "wrong_credential"
    assert LogClient(srv.url, operator_token=new).register_issuer(registration(issuer_key)).created
