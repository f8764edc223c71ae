"""POST /v1/entries answered by a bare WSGI handler in front of the Flask app.

Why: the single-entry append is the log's hottest request, and Flask's per-request machinery
(request context, URL matching, Response objects, jsonify) costs about as much CPU as decoding the
entry and checking its signature together (bench/log_append.py measures it). The handler applies
the same rules as the routes (`params`, `admission`, `records`, `errors`: status codes, JSON error
bodies, limits) and hands every other request to Flask unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from emshield.tlog.entry import MAX_ENTRY_SIZE
from emshield.wsgi_body import read_body

from ..admission import RegisteredIssuers, prepare_entry
from ..errors import INTERNAL_ERROR, Refusal, error_json, json_bytes
from ..params import CBOR, only_params
from ..records import appended_json
from ..sequencer import SequencerLike

PATH = "/v1/entries"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class AppendFastPath:
    """WSGI middleware: ``POST /v1/entries`` here, everything else to ``app``."""

    def __init__(self, app: WsgiApp, issuers: RegisteredIssuers, sequencer: SequencerLike,
                 on_request: Callable[[], None], logger: logging.Logger) -> None:
        self.app = app
        self.issuers = issuers
        self.sequencer = sequencer
        self.on_request = on_request
        self.logger = logger

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        self.on_request()
        try:
            status, body = self._append(environ)
        except Refusal as e:
            status, body = e.status, error_json(e.code, e.detail)
        except Exception:
            self.logger.exception("request failed: POST %s", PATH)
            status, code, detail = INTERNAL_ERROR
            body = error_json(code, detail)
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def _append(self, environ: dict[str, Any]) -> tuple[int, bytes]:
        query = environ.get("QUERY_STRING", "")
        if query:
            only_params(parse_qsl(query, keep_blank_values=True))
        body = read_body(environ, MAX_ENTRY_SIZE, CBOR)
        (done,) = self.sequencer.submit([prepare_entry(body, self.issuers)])
        return (201 if done.created else 200), json_bytes(appended_json(done))
