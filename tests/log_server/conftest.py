"""Log-server test set-up: real stores made by `emshield-log init`, real servers on 127.0.0.1.

Helpers are handed out through fixtures (pytest runs with --import-mode=importlib, so test files
cannot import each other). Keys and entries are deterministic (fixed seeds).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from emshield.tlog import entry as E
from emshield.tlog.checkpoint import NoteVerifier
from log_server.cli import main as log_cli

BIN = Path(sys.executable).parent
ORIGIN = "test.emshield.example/log"
TOKEN = "test-operator-token-0123456789abcdefghijklmnop"
MARKING_PARAMS = bytes.fromhex("a1617601")  # canonical CBOR {"v": 1}; the log does not interpret it


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


@dataclass
class LogFiles:
    db: Path
    key_file: Path
    verifier: NoteVerifier
    token: str = TOKEN


def init_log(directory: Path, origin: str = ORIGIN) -> LogFiles:
    """`emshield-log init`, with the operator token from the environment variable."""
    db = directory / "log.db"
    result = CliRunner().invoke(log_cli, ["init", "--db", str(db), "--origin", origin, "--json"],
                                env={"EMSHIELD_LOG_OPERATOR_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    return LogFiles(db, Path(out["key_file"]), NoteVerifier.from_verifier_key(out["verifier_key"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(kw_only=True)
class Daemon:
    """A served command as a real subprocess in its own session, on a free 127.0.0.1 port.

    Subclasses say what to run (`command`) and which GET answer means it is up (READY_*)."""

    READY_PATH = "/"
    READY_STATUS = 200
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self):
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command()[0]} exited: {self.proc.stdout.read().decode(errors='replace')}")
            try:
                if requests.get(self.url + self.READY_PATH, timeout=1).status_code == self.READY_STATUS:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.command()[0]} did not come up within 30 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)  # the server, its workers and its sequencer (own session)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc.stdout.close()

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

    def command(self) -> list[str]:
        cmd = [str(BIN / "emshield-log"), "serve", "--db", str(self.db), "--port", str(self.port),
               "--workers", str(self.workers), "--threads", str(self.threads), "--log-level", "warning",
               "--witness-quorum", str(self.witness_quorum)]
        if self.server:
            cmd += ["--server", self.server]
        for w in self.witnesses:
            cmd += ["--witness", w]
        return cmd


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


@pytest.fixture
def kit():
    """The entry and key helpers, for test modules (they cannot import this conftest)."""
    return SimpleNamespace(ed25519_key=ed25519_key, public_bytes=public_bytes, registration=registration,
                           issuance=issuance, init_log=init_log, free_port=free_port, ORIGIN=ORIGIN, TOKEN=TOKEN)
