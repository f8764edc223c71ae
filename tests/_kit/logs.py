"""Real logs for tests: stores made by `emshield-log init`, servers run by `emshield-log serve` on a
free 127.0.0.1 port, and deterministic issuer keys and entries (fixed seeds).

Stores are SQLite files or PostgreSQL databases of a throw-away cluster (`_kit.postgres`): the
`store_kind` fixture runs every test that uses `log_files` (or `store_location`) once on each,
so one suite checks both stores. The pytest fixtures at the bottom are imported by the conftests
that want them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
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
from log_server.storage import is_postgres

from . import postgres as pg
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
    db: Path | str  # the store: a SQLite file, or a postgresql:// URL
    key_file: Path
    verifier: NoteVerifier
    token: str = TOKEN

    @property
    def verifier_key(self) -> str:
        return self.verifier.verifier_key()

    def app_config(self) -> dict:
        """What `create_app` / `ServerConfig` need to open this log (store and signing key)."""
        return {"store": self.db, "key_path": self.key_file}


def init_log(directory: Path, origin: str = ORIGIN, store: Path | str | None = None) -> LogFiles:
    """`emshield-log init` of ``store`` (default: ``directory/log.db``), with the operator token from
    the environment variable; a PostgreSQL store's key goes to ``directory/log.signer-key``."""
    db = directory / "log.db" if store is None else store
    args = ["init", "--store", str(db), "--origin", origin, "--json"]
    if is_postgres(db):
        args += ["--key-file", str(directory / "log.signer-key")]
    result = CliRunner().invoke(log_cli, args, env={"EMSHIELD_LOG_OPERATOR_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    return LogFiles(db, Path(out["key_file"]), NoteVerifier.from_verifier_key(out["verifier_key"]))


def run_sql(store: Path | str, sql: str) -> str:
    """Run ``sql`` on the store with the database's own command-line tool (sqlite3, psql), as an
    operator or an attacker with access to the database would: behind the server's back."""
    if is_postgres(store):
        cmd = ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", str(store), "-c", sql]
    else:
        cmd = ["sqlite3", str(store), sql]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def sql_blob(store: Path | str, data: bytes) -> str:
    """``data`` as a literal of the store's SQL (for `run_sql`)."""
    return f"'\\x{data.hex()}'::bytea" if is_postgres(store) else f"X'{data.hex()}'"


def copy_store(files: LogFiles, directory: Path, cluster: pg.Cluster | None = None) -> LogFiles:
    """A second store with the same history so far and the same signing key (a copied log: how a
    fork starts). SQLite: an online backup of the file; PostgreSQL: pg_dump into a new database."""
    directory.mkdir(parents=True, exist_ok=True)
    if is_postgres(files.db):
        assert cluster is not None, "copying a PostgreSQL store needs its cluster"
        twin = cluster.new_database()
        dump = subprocess.run(["pg_dump", "--no-owner", "-d", str(files.db)], capture_output=True, timeout=120,
                              check=True).stdout
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", twin], input=dump, capture_output=True,
                       timeout=120, check=True)
        key = directory / "log.signer-key"
    else:
        twin = directory / "log.db"
        with sqlite3.connect(files.db) as src, sqlite3.connect(twin) as dst:
            src.backup(dst)
        key = directory / "log.db.signer-key"
    shutil.copy2(files.key_file, key)
    return LogFiles(twin, key, files.verifier, files.token)


# -- servers ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def silent_listener() -> Iterator[str]:
    """The URL of a 127.0.0.1 port that accepts connections (the kernel's backlog) and never answers:
    a hanging log, for the clients' timeouts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


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
    db: Path | str
    key_file: Path | None = None  # None: beside a SQLite store
    workers: int = 2
    threads: int = 8
    witnesses: list[str] = field(default_factory=list)  # URL=VERIFIER_KEY
    witness_quorum: int = 0
    server: str | None = None  # None: the command's default (granian)
    tiles_dir: Path | None = None  # the sequencer also writes static tiles here (`--tiles-dir`)
    body_timeout: float | None = None  # None: the command's default

    def command(self) -> list[str]:
        cmd = [str(BIN / "emshield-log"), "serve", "--store", str(self.db), "--port", str(self.port),
               "--workers", str(self.workers), "--threads", str(self.threads), "--log-level", "warning",
               "--witness-quorum", str(self.witness_quorum)]
        if self.key_file is not None:
            cmd += ["--key-file", str(self.key_file)]
        if self.tiles_dir is not None:
            cmd += ["--tiles-dir", str(self.tiles_dir)]
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
    db: Path | str

    @property
    def verifier_key(self) -> str:
        return self.verifier.verifier_key()


@contextmanager
def running_log(directory: Path, origin: str = ORIGIN, store: Path | str | None = None) -> Iterator[RunningLog]:
    """`emshield-log init`, then `emshield-log serve` (one worker) until the block ends."""
    files = init_log(directory, origin, store)
    server = ServerProcess(files.db, files.key_file, workers=1, threads=4).start()
    try:
        yield RunningLog(server.url, files.verifier, files.token, files.db)
    finally:
        server.stop()


@dataclass(kw_only=True)
class StaticSite(Daemon):
    """A directory served by `python -m http.server` (no log code): a static mirror of the tiles."""

    READY_STATUS = 200
    directory: Path

    def command(self) -> list[str]:
        return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.port), "--directory",
                str(self.directory)]


def wait_for_mirror(directory: Path, size: int, timeout: float = 60.0) -> None:
    """Until the static mirror's checkpoint file holds a tree of at least ``size`` leaves."""
    from log_server.static_tiles import written_size

    deadline = time.monotonic() + timeout
    while written_size(directory) < size:
        assert time.monotonic() < deadline, f"the mirror in {directory} did not reach size {size}"
        time.sleep(0.02)


# -- fixtures --------------------------------------------------------------------------------------

STORE_KINDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.Cluster]:
    """The session's PostgreSQL cluster (skips, or fails under CI=true, where there is none)."""
    cluster = pg.start_cluster(free_port())
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=STORE_KINDS)
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def store_location(store_kind: str, tmp_path: Path, request) -> Iterator[Path | str]:
    """Where a new log store goes: a SQLite file that does not exist yet, or an empty PostgreSQL
    database (dropped after the test)."""
    if store_kind == "sqlite":
        yield tmp_path / "log.db"
        return
    cluster = request.getfixturevalue("postgres")
    url = cluster.new_database()
    yield url
    cluster.drop_database(url)


@pytest.fixture
def log_files(tmp_path: Path, store_location: Path | str) -> LogFiles:
    return init_log(tmp_path, store=store_location)


@pytest.fixture
def sqlite_log_files(tmp_path: Path) -> LogFiles:
    """A log on SQLite only: for tests of what only the SQLite store has (pragmas, WAL, file upgrades)."""
    return init_log(tmp_path)


@pytest.fixture
def issuer_key() -> Ed25519PrivateKey:
    return ed25519_key("issuer-1")


@pytest.fixture
def server_factory():
    started: list[ServerProcess] = []

    def start(log: LogFiles | Path | str, **kw) -> ServerProcess:
        if isinstance(log, LogFiles):
            kw.setdefault("key_file", log.key_file)
            log = log.db
        srv = ServerProcess(log, **kw).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
