"""Run the app under a production server: Granian (the default of `emshield-log serve`) or gunicorn.

Both run `workers` processes that each load their own app after the fork; all of them hand
their verified entries to ONE sequencer process started here first (runtime/sequencer_service.py),
which group-commits for everybody. One worker per core lets request parsing and signature checks
use every core (Ed25519 verification in `cryptography` releases the GIL, but decoding and the
request machinery hold it).

Both servers run the WSGI app through `emshield.asgi_wsgi` (Granian's ASGI interface without
lifespan, gunicorn's ``asgi`` worker): the event loop of each worker reads every request body under
a deadline (408 after ``body_timeout_s``) and a per-process budget of body bytes in memory, and
only complete requests reach one of the worker's `threads` threads. A slow client therefore holds
a coroutine, not a thread, and cannot starve the others (spec/api.md §4, "Slow clients"). An
append holds its thread until the group commit that contains it is fsync'ed, so `workers * threads`
should be at least the number of concurrently appending clients.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from functools import partial
from typing import Any

from emshield.asgi_wsgi import BodyLimits, BufferedWsgi
from emshield.wsgi_body import DRAIN_LIMIT

from .app import create_app
from .config import ServerConfig
from .errors import error_json
from .runtime.gc_tuning import settle_after_startup
from .runtime.sequencer_service import sequencer_process

SERVERS = ("granian", "gunicorn")
# Connections one worker keeps open at once (slow clients included: each costs a coroutine).
MAX_CONNECTIONS_PER_WORKER = 4096
# Seconds a stopping server waits for a worker to finish gracefully before killing it (both servers).
# Bounded, because Granian otherwise waits forever: a SIGTERM sent to the whole process group can
# reach a worker before its main process, which then respawns it; the new worker never saw the
# signal and may miss the main process's own stop while it is still loading the app.
GRACEFUL_TIMEOUT_S = 30


class AddressInUse(RuntimeError):
    """The address to listen on is taken (by another log, or anything else)."""


def serve(config: ServerConfig, host: str, port: int, workers: int, threads: int, log_level: str = "info",
          server: str = "granian") -> None:
    """Block serving the log until the server is told to stop (SIGTERM / SIGINT)."""
    if server not in SERVERS:
        raise ValueError(f"unknown server {server!r}; one of {', '.join(SERVERS)}")
    refuse_taken_address(host, port)
    with sequencer_process(config) as sock_path:
        config = replace(config, sequencer_socket=sock_path)
        if server == "gunicorn":
            _serve_gunicorn(config, host, port, workers, threads, log_level)
        else:
            _serve_granian(config, host, port, workers, threads, log_level)


def refuse_taken_address(host: str, port: int) -> None:
    """Raise `AddressInUse` if something listens on ``host:port`` already.

    Granian binds every worker's socket with SO_REUSEPORT, so a second server on a taken port
    would start without a word and share the port with the first (the kernel then hands each new
    connection to either log); gunicorn would retry for seconds. A plain bind (SO_REUSEADDR, which
    allows only TIME_WAIT leftovers) fails at once while any socket listens there."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise AddressInUse(f"cannot listen on {host}:{port}: {exc}") from exc
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise AddressInUse(f"cannot listen on {host}:{port}: {exc.strerror}"
                                   " (is another server running there?)") from exc


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
            return _app_for_worker(config, threads)

    LogServer({
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "asgi",  # the app's own pool runs the WSGI app (`_app_for_worker`)
        "worker_connections": MAX_CONNECTIONS_PER_WORKER,
        "asgi_lifespan": "off",
        "preload_app": False,  # each worker builds its app after the fork
        "keepalive": 30,
        "timeout": 120,
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        "loglevel": log_level,
        "accesslog": None,
        "proc_name": "emshield-log",
    }).run()


def _app_for_worker(config: ServerConfig, threads: int) -> BufferedWsgi:
    """The app for one worker process, built after the fork (collector settled: gc_tuning)."""
    largest = config.max_body_bytes + DRAIN_LIMIT  # read whole, so that a refusal (413) keeps the connection
    # Room for one largest body per worker, as `BodyLimits` counts (twice): the memory that hostile
    # bodies can take (spec/api.md §4), while some twenty batches of 2,000 entries (~0.8 MB each) fit at once.
    limits = BodyLimits(max_body=largest, deadline_s=config.body_timeout_s, budget=2 * (largest + 1))
    app = BufferedWsgi(create_app(config), threads, limits, _refusal)
    settle_after_startup()
    return app


def _refusal(status: int, code: str, detail: str) -> tuple[str, bytes]:
    return "application/json", error_json(code, detail)


def _load_app(config: ServerConfig, threads: int, _target: str):
    """Granian's target loader, called in each worker process after the fork."""
    return _app_for_worker(config, threads)


def _serve_granian(config: ServerConfig, host: str, port: int, workers: int, threads: int, log_level: str) -> None:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    Granian(
        "emshield-log",  # a label only: the app comes from _load_app
        address=host,
        port=port,
        interface=Interfaces.ASGINL,
        http=HTTPModes.http1,
        websockets=False,
        workers=workers,
        backlog=MAX_CONNECTIONS_PER_WORKER,
        backpressure=MAX_CONNECTIONS_PER_WORKER,
        http1_settings=HTTP1Settings(header_read_timeout=int(config.body_timeout_s * 1000), keep_alive=True),
        log_level=LogLevels(log_level),
        log_access=False,
        respawn_failed_workers=True,
        workers_kill_timeout=GRACEFUL_TIMEOUT_S,
    ).serve(target_loader=partial(_load_app, config, threads))
