"""A real, throw-away PostgreSQL cluster for the tests: initdb in a temporary directory, a server
on a Unix socket there and on a free 127.0.0.1 port, one fresh database per test, stopped and
deleted when the session ends.

The server binaries come from Debian's postgresql-15 package (`./run` installs it as root).
initdb refuses to run as root, so as root the cluster belongs to the `postgres` user the package
creates, and runs under `runuser`. Unix-socket connections are trusted (the socket directory is
the test's own); TCP connections need the superuser's password (`PASSWORD`, scram-sha-256), so a
test can check that a password given through $PGPASSWORD works and that one in the URL is refused.

Where no server binaries are found the PostgreSQL half of the suite skips, saying why, and
`skipped_reason` feeds the summary line the conftest prints; under CI=true it fails instead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .ci import require

BIN_ENV = "EMSHIELD_TEST_PG_BIN"  # another server's bin directory (default: Debian's PostgreSQL 15)
BIN_DIRS = ("/usr/lib/postgresql/15/bin",)
SUPERUSER = "postgres"
PASSWORD = "emshield-test-superuser-password"
MAX_CONNECTIONS = 400

skipped_reason: str | None = None  # set once the cluster could not be had (for the summary line)


def server_bin() -> Path | None:
    for d in ([os.environ[BIN_ENV]] if os.environ.get(BIN_ENV) else BIN_DIRS):
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    return None


@dataclass
class Cluster:
    bin: Path
    root: Path
    port: int
    owner: str | None  # the OS user the server runs as (None: this process's user)
    _count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def socket_dir(self) -> Path:
        return self.root

    def url(self, dbname: str = "postgres") -> str:
        """A store URL over the Unix socket (trusted: no password)."""
        return f"postgresql:///{dbname}?host={self.socket_dir}&port={self.port}&user={SUPERUSER}"

    def tcp_url(self, dbname: str = "postgres") -> str:
        """The same database over 127.0.0.1 (needs $PGPASSWORD)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        out = subprocess.run([str(self.bin / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                              "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", dbname,
                              "-c", sql], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def new_database(self) -> str:
        """A fresh, empty database; its URL (Unix socket)."""
        with self._lock:
            self._count += 1
            name = f"emshield_test_{os.getpid()}_{self._count}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url`` (made by `new_database`), ending the sessions still on it."""
        name = url.split("?", 1)[0].rsplit("/", 1)[1]
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return cmd if self.owner is None else ["runuser", "-u", self.owner, "--", *cmd]

    def start(self) -> None:
        data = self.root / "data"
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self.owner is not None:
            shutil.chown(self.root, self.owner)
            shutil.chown(pwfile, self.owner)
        subprocess.run(self._as_owner([str(self.bin / "initdb"), "-D", str(data), "-U", SUPERUSER, "--pwfile",
                                       str(pwfile), "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
                                       "-E", "UTF8", "--locale=C"]),
                       check=True, capture_output=True, timeout=120)
        pwfile.unlink()
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.socket_dir}"
                   f" -c max_connections={MAX_CONNECTIONS}")  # fsync and synchronous_commit: on (the defaults)
        subprocess.run(self._as_owner([str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"),
                                       "-w", "-t", "60", "-o", options, "start"]),
                       check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        subprocess.run(self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                                       "-w", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def server_log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return ""


def _owner() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return ""
    return "postgres"


def start_cluster(port: int) -> Cluster:
    """A running cluster, or skip (fail under CI=true) with the reason."""
    global skipped_reason
    bin_dir = server_bin()
    owner = _owner()
    reason = None
    if bin_dir is None:
        reason = (f"PostgreSQL server binaries (initdb, pg_ctl) not found in {os.environ.get(BIN_ENV) or BIN_DIRS[0]}"
                  " (Debian package postgresql-15; `./run setup` as root installs it): the PostgreSQL half of the"
                  " store tests did not run")
    elif owner == "":
        reason = "running as root, but there is no `postgres` user to own a test cluster (initdb refuses root)"
    if reason is None:
        root = Path(tempfile.mkdtemp(prefix="emshield-pg-"))
        cluster = Cluster(bin_dir, root, port, owner)
        try:
            cluster.start()
            return cluster
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            reason = f"could not start a PostgreSQL test cluster: {exc} {detail.decode(errors='replace')[:500]}"
            cluster.stop()
    skipped_reason = reason
    require(False, reason)
    raise AssertionError("unreachable")
