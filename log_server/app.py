"""Flask app factory: one log store served over the HTTP API (spec/api.md).

The factory only wires the parts: the store, the sequencer appends go through (this process's
own, or the sequencer process's when `serve` runs several workers), the witnesses' cosigner, the
API blueprint (`routes`), the error handlers, and the bare append handler in front of Flask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from .admission import RegisteredIssuers
from .config import ServerConfig, open_log, open_sequencer
from .cosigning import Cosigner, WitnessEndpoint
from .errors import INTERNAL_ERROR, Refusal, error_json
from .explorer import explorer
from .params import IndexConverter
from .routes import api
from .runtime.fast_append import PATH as FAST_APPEND_PATH
from .runtime.fast_append import AppendFastPath
from .runtime.sequencer_service import RemoteSequencer
from .sequencer import SequencerLike
from .state import EXTENSION, LogState

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
               415: "unsupported_media_type"}


def _error(status: int, code: str, detail: str) -> Response:
    return Response(error_json(code, detail), status=status, mimetype="application/json")


def create_app(config: ServerConfig | Mapping[str, Any]) -> Flask:
    """The log's WSGI app for one store. Appends go to this process's own sequencer thread, or to
    the sequencer process at ``sequencer_socket`` (as `serve` runs it): then only that process
    holds the checkpoint signing key, not the workers that parse requests."""
    cfg = config if isinstance(config, ServerConfig) else ServerConfig.from_mapping(config)
    sequencer: SequencerLike
    if cfg.sequencer_socket is None:
        local = open_sequencer(cfg)
        sequencer, store, origin = local, local.store, local.origin
    else:
        store, origin = open_log(cfg)
        sequencer = RemoteSequencer(cfg.sequencer_socket)
    witnesses = [WitnessEndpoint.parse(w) for w in cfg.witnesses]
    if not 0 <= cfg.witness_quorum <= len(witnesses):
        raise ValueError(f"witness quorum {cfg.witness_quorum} is not within 0..{len(witnesses)} (configured witnesses)")
    if len({w.ident for w in witnesses}) != len(witnesses):
        raise ValueError("a witness key is configured twice")
    cosigner = Cosigner(store, witnesses, poll_s=cfg.witness_poll_s)

    app = Flask("emshield_log")
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.json.sort_keys = False
    issuers = RegisteredIssuers(store)
    app.extensions[EXTENSION] = LogState(cfg, store, sequencer, issuers, origin, witnesses, cosigner)
    # Started on the first request of each worker process (a thread does not survive a fork).
    app.before_request(cosigner.ensure_started)
    app.url_map.converters["index"] = IndexConverter
    app.register_blueprint(api)
    app.register_blueprint(explorer)
    app.register_error_handler(Refusal, _refused)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    app.wsgi_app = AppendFastPath(app.wsgi_app, issuers, sequencer, cosigner.ensure_started,  # type: ignore[method-assign]
                                  app.logger)
    return app


def _refused(e: Refusal) -> Response:
    return _error(e.status, e.code, e.detail)


def _http_error(e: HTTPException) -> Response:
    status = e.code or 500
    response = _error(status, _HTTP_CODES.get(status, "http_error"), e.description or e.name)
    # Werkzeug's own headers (a 405's Allow, which RFC 9110 §15.5.6 requires), with our body's type.
    for name, value in e.get_headers(request.environ):
        if name.lower() != "content-type":
            response.headers[name] = value
    if status == 405 and request.path == FAST_APPEND_PATH:  # answered in front of Flask: not in its URL map
        response.headers["Allow"] = ", ".join(sorted({*response.headers["Allow"].split(", "), "POST"}))
    return response


def _internal_error(e: Exception) -> Response:
    current_app.logger.exception("request failed: %s %s", request.method, request.path)
    return _error(*INTERNAL_ERROR)
