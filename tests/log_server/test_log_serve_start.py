"""How `emshield-log serve` starts: an occupied port is refused, a crashed server's socket
directory is reclaimed, and a default start prints no warning (issues #18 and #20)."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from _kit.logs import init_log
from _kit.paths import BIN
from log_server.runtime.sequencer_service import SOCKET_DIR_PREFIX, socket_dir_base

SERVERS = ["granian", "gunicorn"]


@pytest.fixture
def short_dir():
    """A store directory with a short path, so the socket directory goes beside the store (not
    to the temp directory, where other servers keep theirs) unless $XDG_RUNTIME_DIR is set."""
    with tempfile.TemporaryDirectory(prefix="emshield-t-") as d:
        yield Path(d)


@pytest.mark.parametrize("kind", SERVERS)
def test_a_second_log_on_an_occupied_port_is_refused(log_files, server_factory, short_dir: Path, kind) -> None:
    first = server_factory(log_files, workers=1, threads=8, server=kind)
    assert "WARNING" not in first.read_output(), first.read_output()  # e.g. Granian's "quite high" threads
    second = init_log(short_dir)
    before = set(socket_dir_base(second.db).glob(SOCKET_DIR_PREFIX + "*"))
    run = subprocess.run([str(BIN / "emshield-log"), "serve", "--db", str(second.db), "--port", str(first.port),
                          "--server", kind, "--workers", "1"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{first.port}" in lines[0] and "in use" in lines[0], run.stderr
    assert set(socket_dir_base(second.db).glob(SOCKET_DIR_PREFIX + "*")) == before, "it started a sequencer anyway"


def test_a_killed_servers_socket_directory_is_reclaimed_at_the_next_start(server_factory, short_dir: Path) -> None:
    log_files = init_log(short_dir)
    base = socket_dir_base(log_files.db)
    assert base == Path(os.environ.get("XDG_RUNTIME_DIR") or short_dir).resolve()
    before = set(base.glob(SOCKET_DIR_PREFIX + "*"))
    first = server_factory(log_files, workers=1, threads=2)
    (mine,) = set(base.glob(SOCKET_DIR_PREFIX + "*")) - before
    assert mine.name.startswith(f"{SOCKET_DIR_PREFIX}{first.proc.pid}-") and (mine.stat().st_mode & 0o777) == 0o700
    first.kill()
    assert mine.exists()  # SIGKILL leaves it behind
    second = server_factory(log_files, workers=1, threads=2)
    assert not mine.exists(), "the stale socket directory was not reclaimed"
    (now,) = set(base.glob(SOCKET_DIR_PREFIX + "*")) - before
    assert now.name.startswith(f"{SOCKET_DIR_PREFIX}{second.proc.pid}-")
    second.stop()
    assert not now.exists()  # a clean stop removes its own


@pytest.mark.parametrize("kind", SERVERS)
def test_a_stopped_server_leaves_no_traceback(log_files, server_factory, kind) -> None:
    server = server_factory(log_files, workers=2, threads=2, server=kind)
    os.killpg(server.proc.pid, signal.SIGTERM)
    server.proc.wait(timeout=60)
    assert "Traceback" not in server.read_output(), server.read_output()[-3000:]
