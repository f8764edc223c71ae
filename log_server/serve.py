"""Run the app under gunicorn (the production WSGI server) through its BaseApplication API.

Worker model: `gthread` workers (threads serve requests; a keep-alive connection does not pin a
thread). Each worker process loads its own app after the fork, so each has its own sequencer
thread; the store's write lock serialises them (see sequencer.py), so any number of workers is
safe. On two cores, two workers let request parsing and signature checks use both cores.
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from .app import ServerConfig, create_app


class LogServer(BaseApplication):
    def __init__(self, config: ServerConfig, options: dict[str, Any]) -> None:
        self._config = config
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self):
        return create_app(self._config)


def serve(config: ServerConfig, host: str, port: int, workers: int, threads: int, log_level: str = "info") -> None:
    """Block serving the log until gunicorn is told to stop (SIGTERM / SIGINT)."""
    options = {
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
    }
    LogServer(config, options).run()
