"""Every command walked through bad input: the shared exit codes of spec/cli.md, one line for the
user on stderr, and with `--json` one JSON error object on stdout.

The servers here are real: an `emshield-log` store made by `emshield-log init`, a static HTTP
server of an empty folder on 127.0.0.1 (a URL where no log lives), a port where nothing listens, and
one that accepts and never answers."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from _kit.logs import StaticSite, free_port, init_log, silent_listener
from _kit.paths import TINY
from emshield import exit_codes
from emshield.cli import main as emshield_cli
from log_server.cli import main as log_cli
from verifier.audit.cli import main as audit_cli
from verifier.verify.cli import main as verify_cli
from witness.cli import main as witness_cli

SUSPECT = TINY / "model.safetensors"


@pytest.fixture(scope="module")
def not_a_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real HTTP server on 127.0.0.1 where no log lives (an empty folder: 404 for /checkpoint)."""
    site = StaticSite(directory=tmp_path_factory.mktemp("empty-site")).start()
    try:
        yield site.url
    finally:
        site.stop()


@pytest.fixture(scope="module")
def log_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    return init_log(tmp_path_factory.mktemp("log")).verifier.verifier_key()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    files = {"empty": d / "empty.pt", "random": d / "random.pt", "text": d / "text.pt", "hostile": d / "hostile.pt",
             "hostile_legacy": d / "hostile-legacy.pt", "garbage": d / "garbage.bin"}
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(bytes((i * 197 + 13) % 256 for i in range(4096)))
    files["text"].write_text("just some text, not a model\n")
    files["garbage"].write_bytes(b"\x00\xffnot a database, not a key" * 40)

    class Evil:  # would run a command if the stock unpickler loaded it
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    torch.save({"w": Evil()}, files["hostile"])
    with open(files["hostile_legacy"], "wb") as f:
        pickle.dump({"w": Evil()}, f)
    return files


def run(cli: click.Command, *args: object, env: dict | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def expect(result, code: int, needle: str = "", *, as_json: bool = False, one_line: bool = True) -> dict | None:
    """The exit code, the user's line on stderr, and with --json the error object on stdout."""
    assert result.exit_code == code, (code, result.exit_code, result.output)
    assert "Traceback" not in result.output, result.output
    assert needle in result.stderr, result.stderr
    if one_line:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line, written for the user
    if not as_json:
        return None
    doc = json.loads(result.stdout)
    assert doc["error"] == exit_codes.NAMES[code] and doc["exit_code"] == code and needle in doc["detail"], doc
    return doc


def test_the_table_is_one_to_one() -> None:
    codes = [exit_codes.OK, exit_codes.NEGATIVE, exit_codes.BAD_INPUT, exit_codes.LOG_MISBEHAVING,
             exit_codes.UNAVAILABLE, exit_codes.INTERNAL, exit_codes.CORE_ONLY, exit_codes.LOCAL_STATE]
    assert codes == list(range(8)) and sorted(exit_codes.NAMES) == codes
    assert len(set(exit_codes.NAMES.values())) == len(codes)
    table = (Path(__file__).parents[1] / "spec" / "cli.md").read_text()
    for code, name in exit_codes.NAMES.items():  # spec/cli.md lists the same codes under the same names
        assert f"| {code} | {name.replace('_', ' ').replace('log unavailable', 'log unavailable')} |" in table


def test_a_bug_exits_internal_with_its_traceback_never_negative() -> None:
    @click.group(cls=exit_codes.Group)
    def group() -> None:
        pass

    @group.command()
    def broken() -> None:
        raise KeyError("a bug")

    @group.command()
    def refuses() -> None:
        raise exit_codes.Failure("not like this")

    r = run(group, "broken")
    assert r.exit_code == exit_codes.INTERNAL and "internal error" in r.stderr and "Traceback" in r.stderr
    assert run(group, "refuses").exit_code == exit_codes.BAD_INPUT
    assert run(group, "--no-such-option").exit_code == exit_codes.BAD_INPUT  # click's usage errors


def test_emshield_subcommands_refuse_bad_input_with_2(tmp_path: Path, bad_files: dict[str, Path], log_key: str) -> None:
    core = bad_files["text"]
    expect(run(emshield_cli, "--no-such-option"), 2, "No such option", one_line=False)  # click's usage text
    expect(run(emshield_cli, "issue", "--log", "ftp://x", "--log-key", log_key, "--core", core, "--backbone", TINY,
               "--out", tmp_path / "o", "--device", tmp_path, "--json"), 2, "http(s) URL", as_json=True)
    expect(run(emshield_cli, "mark", "extract", "--params", bad_files["garbage"], "--core", core), 2)
    expect(run(emshield_cli, "decouple", "merge", "--backbone", TINY, "--core", bad_files["random"],
               "--out", tmp_path / "m"), 2)
    expect(run(emshield_cli, "device", "install", bad_files["garbage"], "--dir", tmp_path / "dev",
               "--log-key", log_key), 2)
    expect(run(emshield_cli, "issuer", "register", "--log", "http://127.0.0.1:1", "--core", core, "--backbone", TINY,
               "--name", "X", "--json", env={"EMSHIELD_LOG_OPERATOR_TOKEN": ""}), 2, "operator token", as_json=True)
    expect(run(emshield_cli, "issuer", "rotate", "--log", "http://127.0.0.1:1", "--dir", tmp_path / "none", "--json",
               env={"EMSHIELD_LOG_OPERATOR_TOKEN": ""}), 2, "operator token", as_json=True)
    trace = ["--log-key", log_key, "--backbone", TINY, "--json"]
    expect(run(emshield_cli, "trace", core, "--log", "ftp://x", *trace), 2, "http(s) URL", as_json=True)
    expect(run(emshield_cli, "trace", core, "--log", "http://127.0.0.1:1", "--dir", tmp_path / "none", *trace), 2,
           "issuer init", as_json=True)


def test_log_server_refuses_what_is_not_a_log_store_and_leaves_it_alone(bad_files: dict[str, Path]) -> None:
    for name in ("empty", "garbage"):
        before = bad_files[name].read_bytes()
        for args in (["serve", "--store", bad_files[name]], ["set-token", "--store", bad_files[name]]):
            expect(run(log_cli, *args, env={"EMSHIELD_LOG_OPERATOR_TOKEN": "t" * 40}), 2, "EMShield log store")
        assert bad_files[name].read_bytes() == before
    expect(run(log_cli, "init", "--store", "/nonexistent-dir/x.db", "--origin", "bad origin"), 2, "origin")


@pytest.mark.parametrize("name, needle", [("empty", "empty"), ("random", "not a readable torch file"),
                                          ("text", "not a readable torch file"),
                                          ("hostile", "nothing in the file was run"),
                                          ("hostile_legacy", "nothing in the file was run")])
def test_verify_explains_bad_suspect_files_without_unsafe_advice(bad_files: dict[str, Path], log_key: str,
                                                                 name: str, needle: str) -> None:
    r = run(verify_cli, bad_files[name], "--backbone", TINY, "--log", "http://127.0.0.1:1", "--log-key", log_key,
            "--json")
    expect(r, 2, needle, as_json=True)
    for unsafe in ("weights_only", "_use_new_zipfile_serialization", "will likely succeed"):
        assert unsafe not in r.output


def test_verify_and_audit_tell_a_wrong_url_from_a_down_log(tmp_path: Path, not_a_log: str, log_key: str) -> None:
    verify = ["--backbone", TINY, "--log-key", log_key, "--json"]
    expect(run(verify_cli, SUSPECT, "--log", not_a_log + "/wrong/path", *verify), 2, "", as_json=True)
    expect(run(verify_cli, SUSPECT, "--log", f"http://127.0.0.1:{free_port()}", *verify), 4, "", as_json=True)
    with silent_listener() as hanging:
        expect(run(verify_cli, SUSPECT, "--log", hanging, "--timeout", "0.5", *verify), 4, "", as_json=True)

    state = tmp_path / "audit.json"
    audit = ["--state", state, "--json"]
    expect(run(audit_cli, "--log", not_a_log, "--key", log_key, *audit), 2, "no EMShield log answers", as_json=True)
    expect(run(audit_cli, "--log", "notaurl", "--key", log_key, *audit), 2, "http(s) URL", as_json=True)
    expect(run(audit_cli, "--log", not_a_log, "--key", "garbage", *audit), 2, "--key", as_json=True)
    expect(run(audit_cli, "--log", f"http://127.0.0.1:{free_port()}", "--key", log_key, *audit), 4, "",
           as_json=True)
    key_file = tmp_path / "log.vkey"  # a key file works wherever a key does
    key_file.write_text(log_key + "\n")
    expect(run(audit_cli, "--log", not_a_log, "--key", key_file, *audit), 2, "no EMShield log answers", as_json=True)
    state.write_text("{not json")
    expect(run(audit_cli, "--log", not_a_log, "--key", log_key, *audit), 7, "corrupt", as_json=True)
    assert state.read_text() == "{not json"  # the auditor's own state is never overwritten on a refusal


def test_witness_refuses_bad_keys_and_state(tmp_path: Path, bad_files: dict[str, Path], log_key: str) -> None:
    key = tmp_path / "witness.key"
    assert run(witness_cli, "init", "--key-file", key, "--name", "witness.test/w").exit_code == 0
    expect(run(witness_cli, "serve", "--key-file", key, "--state", tmp_path / "w.db", "--log-key", "garbage"), 2,
           "--log-key")
    expect(run(witness_cli, "conflicts", "--state", bad_files["garbage"]), 2, "cannot read")
    expect(run(witness_cli, "init", "--key-file", key, "--name", "witness.test/w"), 2, "refusing to overwrite")
