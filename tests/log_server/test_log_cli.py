"""`emshield-log init`, `set-token` and `serve`: keys, credential handling and clear refusals."""

from __future__ import annotations

import hashlib
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
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert not db.exists() and not (tmp_path / "log.db.signer-key").exists()
    ok = runner.invoke(log_cli, ["init", "--db", str(db), "--origin", "ok.example/log", "--json"])
    assert ok.exit_code == 0, ok.output
    again = runner.invoke(log_cli, ["init", "--db", str(db), "--origin", "ok.example/log"])
    assert again.exit_code == 2 and "already exists" in again.output


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "emshield-log"), "serve", *args, "--port", "1"], capture_output=True, text=True,
                          timeout=60)


def test_serve_refuses_unusable_store_or_key(tmp_path: Path, log_files, store_kind, request) -> None:
    out = _serve("--db", str(tmp_path / "missing.db"))
    assert out.returncode == 2 and "does not exist" in out.stderr
    key = ["--key-file", str(log_files.key_file)]
    if store_kind == "postgresql":  # an empty database is no log, and a PostgreSQL store has no default key file
        empty = request.getfixturevalue("postgres").new_database()
        out = _serve("--store", empty, *key)
        assert out.returncode == 2 and "holds no EMShield log store" in out.stderr, out.stderr
        out = _serve("--store", str(log_files.db))
        assert out.returncode == 2 and "give --key-file" in out.stderr, out.stderr
    log_files.key_file.chmod(0o644)
    out = _serve("--store", str(log_files.db), *key)
    assert out.returncode == 2 and "readable by others" in out.stderr
    log_files.key_file.chmod(0o600)
    (tmp_path / "other").mkdir()
    stranger = init_log(tmp_path / "other", origin="other.example/log")
    out = _serve("--store", str(log_files.db), "--key-file", str(stranger.key_file))
    assert out.returncode == 2 and "does not match the log origin" in out.stderr


def test_a_file_that_is_no_log_store_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """serve and set-token on an empty file, random bytes, a SQLite database of something else and a
    text file: one line saying it is not a log store, no traceback, and the file unchanged (an empty
    file must not become a SQLite database, nor a database switch to WAL mode)."""
    import sqlite3

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    noise = tmp_path / "random.bin"
    noise.write_bytes(hashlib.sha256(b"noise").digest() * 200)
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE things(x)")
    header = tmp_path / "header-only.db"
    header.write_bytes(b"SQLite format 3\x00" + bytes(100))
    files = [empty, noise, text, other, header]
    before = {f: f.read_bytes() for f in files}
    for f in files:
        out = _serve("--store", str(f))
        result = CliRunner().invoke(log_cli, ["set-token", "--store", str(f)],
                                    env={"EMSHIELD_LOG_OPERATOR_TOKEN": "x" * 40})
        for where, code, message in (("serve", out.returncode, out.stderr), ("set-token", result.exit_code,
                                                                               result.output)):
            assert code == 2, (where, f, message)
            assert "Traceback" not in message and len(message.strip().splitlines()) == 1, (where, f, message)
            assert "is not an EMShield log store" in message, (where, f, message)
        assert f.read_bytes() == before[f], f
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(("-wal", "-shm", "-journal"))) == [], \
        list(tmp_path.iterdir())


def test_set_token_replaces_the_operator_credential(log_files, server_factory, issuer_key) -> None:
    srv = server_factory(log_files, workers=1)
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
