"""Real logs for tests: stores made by `emshield-log init`, servers run by `emshield-log serve` on a
free 127.0.0.1 port, and deterministic issuer keys and entries (fixed seeds).

The pytest fixtures at the bottom are imported by the conftests that want them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from emshield.tlog import entry as E
from emshield.tlog.checkpoint import NoteVerifier
from log_server.cli import main as log_cli

from .paths import BIN

ORIGIN = "test.emshield.example/log"
TOKEN = "test-operator-token-0123456789abcdefghijklmnop"
MARKING_PARAMS = bytes.fromhex("a1617601")  # canonical CBOR {"v": 1}; the log does not interpret it


# -- keys and entries ------------------------------------------------------------------------------


def ed25519_key(seed: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"emshield-test/" + seed.encode()).digest())


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def registration(key: Ed25519PrivateKey, name: str = "Acme Models") -> bytes:
    return E.sign_entry(E.IssuerRegistration(public_bytes(key), name, MARKING_PARAMS, 1_700_000_000), key).encode()


def issuance(key: Ed25519PrivateKey, n: int, *, policy: str = "watermark", fingerprint_hash: bytes | None = None,
             device: int | None = None) -> bytes:
    """A deterministic issuance entry, distinct for every ``n``."""
    wm = hashlib.sha256(b"wm" + n.to_bytes(8, "big")).digest() if policy in ("watermark", "both") else None
    fp = fingerprint_hash if policy in ("fingerprint", "both") else None
    dev = uuid.UUID(int=n if device is None else device).bytes
    entry = E.Issuance(dev, hashlib.sha256(b"backbone").digest(), wm, fp, policy, 1_700_000_000 + n,
                       E.issuer_key_id(public_bytes(key)))
    return E.sign_entry(entry, key).encode()


# -- stores ----------------------------------------------------------------------------------------


@dataclass
class LogFiles:
    db: Path
    key_file: Path
    verifier: NoteVerifier
    token: str = TOKEN

    @property
    def verifier_key(self) -> str:
        return self.verifier.verifier_key()


def init_log(directory: Path, origin: str = ORIGIN) -> LogFiles:
    """`emshield-log init`, with the operator token from the environment variable."""
    db = directory / "log.db"
    result = CliRunner().invoke(log_cli, ["init", "--db", str(db), "--origin", origin, "--json"],
                                env={"EMSHIELD_LOG_OPERATOR_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    return LogFiles(db, Path(out["key_file"]), NoteVerifier.from_verifier_key(out["verifier_key"]))


# -- servers ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(kw_only=True)
class Daemon:
    """A served command as a real subprocess in its own session, on a free 127.0.0.1 port.

    Subclasses say what to run (`command`) and which GET answer means it is up (READY_*). Its output
    goes to a file (a pipe nobody reads would block a chatty server), shown if it fails to start."""

    READY_PATH = "/"
    READY_STATUS = 200
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    output: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self):
        fd, name = tempfile.mkstemp(prefix="emshield-test-daemon-", suffix=".log")
        self.output = Path(name)
        with os.fdopen(fd, "wb") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command()[0]} exited: {self.read_output()}")
            try:
                if requests.get(self.url + self.READY_PATH, timeout=1).status_code == self.READY_STATUS:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.command()[0]} did not come up within 30 s: {self.read_output()}")

    def read_output(self) -> str:
        return "" if self.output is None else self.output.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)  # the server, its workers and its sequencer (own session)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.output is not None:
            self.output.unlink(missing_ok=True)

    def kill(self) -> None:
        """A crash: SIGKILL to master and workers at once, no clean shutdown."""
        self.stop(signal.SIGKILL)


@dataclass
class ServerProcess(Daemon):
    """`emshield-log serve`; up once it serves a checkpoint."""

    READY_PATH = "/checkpoint"
    db: Path
    workers: int = 2
    threads: int = 8
    witnesses: list[str] = field(default_factory=list)  # URL=VERIFIER_KEY
    witness_quorum: int = 0
    server: str | None = None  # None: the command's default (granian)
    body_timeout: float | None = None  # None: the command's default

    def command(self) -> list[str]:
        cmd = [str(BIN / "emshield-log"), "serve", "--db", str(self.db), "--port", str(self.port),
               "--workers", str(self.workers), "--threads", str(self.threads), "--log-level", "warning",
               "--witness-quorum", str(self.witness_quorum)]
        if self.server:
            cmd += ["--server", self.server]
        if self.body_timeout is not None:
            cmd += ["--body-timeout", str(self.body_timeout)]
        for w in self.witnesses:
            cmd += ["--witness", w]
        return cmd


@dataclass(frozen=True)
class RunningLog:
    """A served log: where it answers and what a client needs to trust and write to it."""

    url: str
    verifier: NoteVerifier
    token: str
    db: Path

    @property
    def verifier_key(self) -> str:
        return self.verifier.verifier_key()


@contextmanager
def running_log(directory: Path, origin: str = ORIGIN) -> Iterator[RunningLog]:
    """`emshield-log init`, then `emshield-log serve` (one worker) until the block ends."""
    files = init_log(directory, origin)
    server = ServerProcess(files.db, workers=1, threads=4).start()
    try:
        yield RunningLog(server.url, files.verifier, files.token, files.db)
    finally:
        server.stop()


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def log_files(tmp_path: Path) -> LogFiles:
    return init_log(tmp_path)


@pytest.fixture
def issuer_key() -> Ed25519PrivateKey:
    return ed25519_key("issuer-1")


@pytest.fixture
def server_factory():
    started: list[ServerProcess] = []

    def start(db: Path, **kw) -> ServerProcess:
        srv = ServerProcess(db, **kw).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
