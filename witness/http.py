"""HTTP front of the witness: a plain WSGI app (one route needs no web framework) run
by gunicorn. One route, ``POST /add-checkpoint``; the body is read with a hard size limit before
anything is parsed, and every answer is what `Witness.add_checkpoint` decided.

gunicorn runs it with its ``asgi`` worker behind `emshield.asgi_wsgi.BufferedWsgi`, as the log
does: the worker's event loop reads each body (408 after BODY_TIMEOUT_S), so clients that send
their body slowly or not at all hold no request thread and cannot stop the witness cosigning."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.app.base import BaseApplication

from emshield.asgi_wsgi import BodyLimits, BufferedWsgi
from emshield.tlog.addcheckpoint import MAX_REQUEST_BYTES
from emshield.wsgi_body import DRAIN_LIMIT, Refusal, read_body

from .service import Answer, Witness, text_answer

BODY_TIMEOUT_S = 10.0
MAX_CONNECTIONS_PER_WORKER = 1024
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 409: "Conflict", 411: "Length Required", 413: "Content Too Large", 422: "Unprocessable Content",
            500: "Internal Server Error"}


def make_wsgi_app(make_witness: Callable[[], Witness]) -> Callable:
    """The WSGI app; ``make_witness`` runs once per process (after gunicorn's fork)."""
    state: dict[str, Witness] = {}

    def app(environ: dict[str, Any], start_response) -> Iterable[bytes]:
        answer = _route(environ, state, make_witness)
        headers = [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body))),
                   ("Cache-Control", "no-store")]
        if answer.status == 405:
            headers.append(("Allow", "POST"))  # RFC 9110 §15.5.6: a 405 says which methods are allowed
        start_response(f"{answer.status} {_REASONS.get(answer.status, 'Error')}", headers)
        return [answer.body]

    return app


def _route(environ: dict[str, Any], state: dict[str, Witness], make_witness) -> Answer:
    if environ.get("PATH_INFO") != "/add-checkpoint":
        return text_answer(404, "not found (the witness serves POST /add-checkpoint)")
    if environ.get("REQUEST_METHOD") != "POST":
        return text_answer(405, "use POST")
    if environ.get("QUERY_STRING"):
        return text_answer(400, "no query parameters are accepted")
    try:
        body = read_body(environ, MAX_REQUEST_BYTES, require_length=True)
    except Refusal as refused:
        return text_answer(refused.status, refused.detail)
    if "witness" not in state:
        state["witness"] = make_witness()
    return state["witness"].add_checkpoint(body)


class WitnessServer(BaseApplication):
    def __init__(self, make_app: Callable[[], Callable], options: dict[str, Any]) -> None:
        self._make_app = make_app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Callable:
        return self._make_app()  # in each worker, after the fork


def _refusal(status: int, code: str, detail: str) -> tuple[str, bytes]:
    answer = text_answer(status, detail)
    return answer.content_type, answer.body


def serve(make_witness: Callable[[], Witness], host: str, port: int, workers: int, threads: int,
          log_level: str = "info") -> None:
    """Block serving the witness with gunicorn until SIGTERM / SIGINT."""
    largest = MAX_REQUEST_BYTES + DRAIN_LIMIT
    limits = BodyLimits(max_body=largest, deadline_s=BODY_TIMEOUT_S, budget=2 * (largest + 1))
    WitnessServer(lambda: BufferedWsgi(make_wsgi_app(make_witness), threads, limits, _refusal), {
        "bind": f"{host}:{port}", "workers": workers, "worker_class": "asgi", "asgi_lifespan": "off",
        "worker_connections": MAX_CONNECTIONS_PER_WORKER, "timeout": 60, "graceful_timeout": 10,
        "loglevel": log_level, "accesslog": None, "proc_name": "emshield-witness"}).run()
