"""POST /v1/entries answered by a bare WSGI handler in front of the Flask app.

Why: the single-entry append is the log's hottest request, and Flask's per-request machinery
(request context, URL matching, Response objects, jsonify) costs about as much CPU on this machine
as decoding the entry and checking its signature together (bench/log_append.py measures it). The
handler gives the same answers as the other routes (spec/api.md: status codes, JSON error bodies,
limits) and hands every other request to Flask unchanged.
"""

from __future__ import annotations

import base64
import logging
from http import HTTPStatus
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from emshield.tlog.entry import MAX_ENTRY_SIZE

from .entries import EntryRejected, IssuerKeys, prepare_issuance
from .sequencer import AppendRejected, Appended, PreparedEntry, Sequencer
from .sequencer_service import UNAVAILABLE, RemoteSequencer, SequencerUnavailable
from .wsgi_io import CBOR, INTERNAL_ERROR, ApiError, error_json, json_bytes, read_body

PATH = "/v1/entries"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class AppendFastPath:
    """WSGI middleware: ``POST /v1/entries`` here, everything else to ``app``."""

    def __init__(self, app: WsgiApp, issuers: IssuerKeys, sequencer: Sequencer | RemoteSequencer, on_request: Callable[[], None],
                 logger: logging.Logger) -> None:
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
        except ApiError as e:
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
            names = sorted({k for k, _ in parse_qsl(query, keep_blank_values=True)})
            if names:
                raise ApiError(400, "unknown_parameter", f"unknown query parameter(s): {', '.join(names)}")
        body = read_body(environ, CBOR, MAX_ENTRY_SIZE)
        try:
            prepared = prepare_issuance(body, self.issuers)
        except EntryRejected as rej:
            raise ApiError(rej.status, rej.code, rej.detail) from rej
        (done,) = submit_entries(self.sequencer, [prepared], self.logger, f"POST {PATH}")
        return (201 if done.created else 200), json_bytes(
            {"index": done.index, "leaf_hash": base64.b64encode(done.leaf_hash).decode("ascii"),
             "created": done.created})


def submit_entries(sequencer: Sequencer | RemoteSequencer, entries: list[PreparedEntry], logger: logging.Logger,
                   request_line: str) -> list[Appended]:
    """Hand admitted entries to the sequencer; its refusals and its absence become API errors
    (the same for this handler and the Flask routes)."""
    try:
        return sequencer.submit(entries)
    except AppendRejected as rej:
        raise ApiError(rej.status, rej.code, rej.detail) from rej
    except SequencerUnavailable as exc:
        logger.error("%s: %s", request_line, exc)
        raise ApiError(*UNAVAILABLE) from exc
