"""Run the app under a production WSGI server: Granian (the default of `emshield-log serve`) or gunicorn.

Both run `workers` processes that each load their own app after the fork; all of them hand
their verified entries to ONE sequencer process started here first (runtime/sequencer_service.py),
which group-commits for everybody. One worker per core lets request parsing and signature checks
use every core (Ed25519 verification in `cryptography` releases the GIL, but decoding and the
request machinery hold it).

- gunicorn: `gthread` workers, `threads` request threads each (a keep-alive connection does not
  pin a thread). HTTP parsing in pure Python.
- granian: HTTP parsing and connection handling in Rust (hyper); `threads` is the number of
  Python threads per worker that run the WSGI app, and also the per-worker backpressure (requests
  beyond it wait in Rust, not in Python). It spends less server CPU per append than gunicorn
  (bench/log_append.py measures both; figures in spec/notes/tlog-throughput.md). An append holds
  its thread until the group commit that contains it is fsync'ed, so `workers * threads` should be
  at least the number of concurrently appending clients.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

from .app import create_app
from .config import ServerConfig
from .runtime.gc_tuning import settle_after_startup
from .runtime.sequencer_service import sequencer_process

SERVERS = ("granian", "gunicorn")


def serve(config: ServerConfig, host: str, port: int, workers: int, threads: int, log_level: str = "info",
          server: str = "granian") -> None:
    """Block serving the log until the server is told to stop (SIGTERM / SIGINT)."""
    if server not in SERVERS:
        raise ValueError(f"unknown server {server!r}; one of {', '.join(SERVERS)}")
    with sequencer_process(config) as sock_path:
        config = replace(config, sequencer_socket=sock_path)
        if server == "gunicorn":
            _serve_gunicorn(config, host, port, workers, threads, log_level)
        else:
            _serve_granian(config, host, port, workers, threads, log_level)


def _serve_gunicorn(config: ServerConfig, host: str, port: int, workers: int, threads: int, log_level: str) -> None:
    from gunicorn.app.base import BaseApplication

    class LogServer(BaseApplication):
        def __init__(self, options: dict[str, Any]) -> None:
            self._options = options
            super().__init__()

        def load_config(self) -> None:
            for key, value in self._options.items():
                if key in self.cfg.settings and value is not None:
                    self.cfg.set(key, value)

        def load(self):
            return _app_for_worker(config)

    LogServer({
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "preload_app": False,  # each worker builds its app (and sequencer thread) after the fork
        "keepalive": 30,
        "timeout": 120,
        "graceful_timeout": 30,
        "loglevel": log_level,
        "accesslog": None,
        "proc_name": "emshield-log",
    }).run()


def _app_for_worker(config: ServerConfig):
    """The app for one worker process, built after the fork (collector settled: gc_tuning)."""
    app = create_app(config)
    settle_after_startup()
    return app


def _load_app(config: ServerConfig, _target: str):
    """Granian's target loader, called in each worker process after the fork."""
    return _app_for_worker(config)


def _serve_granian(config: ServerConfig, host: str, port: int, workers: int, threads: int, log_level: str) -> None:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    Granian(
        "emshield-log",  # a label only: the app comes from _load_app
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        websockets=False,
        workers=workers,
        blocking_threads=threads,
        backpressure=threads,
        http1_settings=HTTP1Settings(header_read_timeout=30_000, keep_alive=True),
        log_level=LogLevels(log_level),
        log_access=False,
        respawn_failed_workers=True,
    ).serve(target_loader=partial(_load_app, config))
