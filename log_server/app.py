"""Flask app factory: the log's HTTP API (spec/api.md, spec/openapi.yaml).

Routes only parse and check input, call the store (reads) or the sequencer (writes), and shape
JSON. Every refusal is an `ApiError` answered as {"error": code, "detail": msg} with a 4xx, raised
before anything reaches the sequencer, so a refused request stores nothing.
"""

from __future__ import annotations

import base64
import gzip
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from emshield.tlog import merkle
from emshield.tlog.entry import MAX_ENTRY_SIZE
from emshield.tlog.tiles import TileError, parse_tile_path

from . import keys, tiles
from .batch import BatchFormatError, decode_batch
from .entries import EntryRejected, IssuerKeys, check_side_record, prepare_issuances, prepare_registration
from .sequencer import Appended, PreparedEntry, Sequencer
from .sequencer_service import RemoteSequencer
from .fast_append import AppendFastPath, submit_entries
from .storage import LOOKUP_FIELDS, IssuerRecord, LogStore, SqliteStore
from .witness import Cosigner, WitnessEndpoint, cosigned_note
from .wsgi_io import CBOR, INTERNAL_ERROR, ApiError, error_json, read_body



@dataclass(frozen=True)
class ServerConfig:
    """Everything `create_app` needs; limits are part of the API (spec/api.md, "Limits")."""

    db_path: Path
    key_path: Path | None = None  # default: <db>.signer-key
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch_entries: int = 10_000
    max_page: int = 1000
    max_lookup: int = 100
    max_side_record_bytes: int = 1 << 20
    max_sequencer_batch: int = 20_000
    witnesses: tuple[str, ...] = ()  # "URL=VERIFIER_KEY" of C2SP tlog-witnesses to submit checkpoints to
    witness_quorum: int = 0  # GET /checkpoint serves the latest checkpoint cosigned by this many of them
    witness_poll_s: float = 0.2
    sequencer_socket: Path | None = None  # set by `serve`: the sequencer process's Unix socket

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ServerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown server config keys: {sorted(unknown)}")
        cfg = cls(**{k: v for k, v in values.items()})
        return replace(cfg, db_path=Path(cfg.db_path), key_path=None if cfg.key_path is None else Path(cfg.key_path),
                       witnesses=tuple(cfg.witnesses),
                       sequencer_socket=None if cfg.sequencer_socket is None else Path(cfg.sequencer_socket))


def _error(status: int, code: str, detail: str) -> Response:
    return Response(error_json(code, detail), status=status, mimetype="application/json")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
               415: "unsupported_media_type"}
_INT = re.compile(r"0|[1-9][0-9]{0,18}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")


# -- parameter parsing ---------------------------------------------------------------------------


def _only_params(*allowed: str) -> None:
    extra = set(request.args) - set(allowed)
    if extra:
        raise ApiError(400, "unknown_parameter", f"unknown query parameter(s): {', '.join(sorted(extra))}")
    for name in request.args:
        if len(request.args.getlist(name)) > 1:
            raise ApiError(400, "bad_parameter", f"query parameter {name!r} given more than once")


def _int_param(name: str) -> int:
    raw = request.args.get(name)
    if raw is None:
        raise ApiError(400, "missing_parameter", f"query parameter {name!r} is required")
    if not _INT.fullmatch(raw):
        raise ApiError(400, "bad_parameter", f"{name} must be a non-negative decimal integer, got {raw[:40]!r}")
    return int(raw)


def _hex(raw: str, name: str, size: int | None = None) -> bytes:
    if not _HEX.fullmatch(raw or ""):
        raise ApiError(400, "bad_parameter", f"{name} must be lowercase hex, got {raw[:80]!r}")
    value = bytes.fromhex(raw)
    if size is not None and len(value) != size:
        raise ApiError(400, "bad_parameter", f"{name} must be {size} bytes ({2 * size} hex digits), got {len(value)}")
    return value


def _body(content_type: str, limit: int) -> bytes:
    return read_body(request.environ, content_type, limit)


# -- the app -------------------------------------------------------------------------------------


@dataclass
class _Log:
    """Per-app state shared by the request threads of one process."""

    config: ServerConfig
    store: LogStore
    sequencer: Sequencer | RemoteSequencer
    issuers: IssuerKeys
    origin: str
    witnesses: list[WitnessEndpoint]
    cosigner: Cosigner
    # Batch bodies are decoded and verified one at a time per process (see append_batch).
    batch_admission: threading.Lock = field(default_factory=threading.Lock)


def _log() -> _Log:
    return current_app.extensions["emshield_log"]


def _require_operator() -> None:
    header = request.headers.get("Authorization", "")
    if not header:
        raise ApiError(401, "missing_credential", "this operation needs the operator credential"
                                                  " (Authorization: Bearer <token>)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "bad_credential", "the Authorization header must be 'Bearer <token>'")
    # Read per request (operator calls are rare), so `emshield-log set-token` takes effect at once.
    digest = _log().store.meta(keys.TOKEN_META_KEY)
    if digest is None or not keys.token_matches(token.strip(), digest):
        raise ApiError(403, "wrong_credential", "the operator credential is not valid")


def _tree_size() -> int:
    cp = _log().store.latest_checkpoint()
    return 0 if cp is None else cp.size


def _submit(entries: list[PreparedEntry]) -> list[Appended]:
    return submit_entries(_log().sequencer, entries, current_app.logger, f"{request.method} {request.path}")


def _appended_json(a: Appended) -> dict[str, Any]:
    return {"index": a.index, "leaf_hash": b64(a.leaf_hash), "created": a.created}


def _issuer_json(i: IssuerRecord) -> dict[str, Any]:
    return {"key_id": i.key_id.hex(), "public_key": b64(i.public_key), "name": i.name, "index": i.leaf_index,
            "registered_at": i.registered_at, "revoked": i.revoked_at is not None,
            "revoked_at": i.revoked_at, "revocation_reason": i.revocation_reason}


def open_store(cfg: ServerConfig) -> tuple[SqliteStore, str]:
    """The store and its origin. Fails early if the store is not one `emshield-log init` made."""
    store = SqliteStore(cfg.db_path)
    origin_raw = store.meta("origin")
    if origin_raw is None or store.meta(keys.TOKEN_META_KEY) is None:
        raise RuntimeError(f"{cfg.db_path}: store has no origin or operator credential; re-run `emshield-log init`")
    return store, origin_raw.decode("utf-8")


def open_sequencer(cfg: ServerConfig) -> Sequencer:
    """The store's sequencer with the log's signing key. Fails early if the store or key is unusable."""
    store, origin = open_store(cfg)
    signer = keys.read_signer_key(cfg.key_path or keys.default_key_path(cfg.db_path))
    if signer.name != origin:
        raise RuntimeError(f"signing key name {signer.name!r} does not match the log origin {origin!r}")
    return Sequencer(store, signer, origin, max_batch=cfg.max_sequencer_batch)


def create_app(config: ServerConfig | Mapping[str, Any]) -> Flask:
    """The log's WSGI app for one store. Appends go to this process's own sequencer thread, or to
    the sequencer process at ``sequencer_socket`` (as `serve` runs it): then only that process
    holds the checkpoint signing key, not the workers that parse requests."""
    cfg = config if isinstance(config, ServerConfig) else ServerConfig.from_mapping(config)
    sequencer: Sequencer | RemoteSequencer
    if cfg.sequencer_socket is None:
        sequencer = open_sequencer(cfg)
        store, origin = sequencer.store, sequencer.origin
    else:
        store, origin = open_store(cfg)
        sequencer = RemoteSequencer(cfg.sequencer_socket)
    witnesses = [WitnessEndpoint.parse(w) for w in cfg.witnesses]
    if not 0 <= cfg.witness_quorum <= len(witnesses):
        raise ValueError(f"witness quorum {cfg.witness_quorum} is not within 0..{len(witnesses)} (configured witnesses)")
    if len({w.ident for w in witnesses}) != len(witnesses):
        raise ValueError("a witness key is configured twice")
    cosigner = Cosigner(store, witnesses, cfg.db_path.with_name(cfg.db_path.name + ".cosigner-lock"),
                        poll_s=cfg.witness_poll_s)

    app = Flask("emshield_log")
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.json.sort_keys = False
    issuers = IssuerKeys(store)
    app.extensions["emshield_log"] = _Log(cfg, store, sequencer, issuers, origin, witnesses, cosigner)
    # Started on the first request of each worker process (a thread does not survive a fork).
    app.before_request(cosigner.ensure_started)
    app.wsgi_app = AppendFastPath(app.wsgi_app, issuers, sequencer, cosigner.ensure_started,  # type: ignore[method-assign]
                                  app.logger)

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError) -> Response:
        return _error(e.status, e.code, e.detail)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        status = e.code or 500
        return _error(status, _HTTP_CODES.get(status, "http_error"), e.description or e.name)

    @app.errorhandler(Exception)
    def _internal_error(e: Exception) -> Response:
        app.logger.exception("request failed: %s %s", request.method, request.path)
        return _error(*INTERNAL_ERROR)

    @app.get("/checkpoint")
    def checkpoint() -> Response:
        """The latest signed checkpoint (C2SP tlog-checkpoint in a signed note), with witness
        cosignatures; with a witness quorum, the latest checkpoint that has reached it."""
        _only_params()
        lg = _log()
        note = cosigned_note(lg.store, lg.witnesses, cfg.witness_quorum)
        if note is None:
            raise ApiError(503, "no_checkpoint", "the log has no checkpoint yet" if cfg.witness_quorum == 0 else
                           f"no checkpoint is cosigned by {cfg.witness_quorum} witnesses yet")
        return Response(note, mimetype="text/plain", headers={"Cache-Control": "no-cache"})

    @app.get("/tile/<path:tile_path>")
    def tile(tile_path: str) -> Response:
        """C2SP tlog-tiles: hash tiles /tile/<L>/<N>[.p/<W>] and entry bundles /tile/entries/<N>[.p/<W>]."""
        _only_params()
        try:
            t = parse_tile_path(tile_path)
        except TileError as exc:
            raise ApiError(404, "bad_tile_path", str(exc)) from exc
        try:
            data = tiles.read(_log().store, t, _tree_size())
        except tiles.TileNotFound as exc:
            raise ApiError(404, "no_such_tile", str(exc)) from exc
        headers = {"Cache-Control": tiles.cache_control(t)}
        if t.level is None:  # entry bundles compress ~2.7x (CBOR map keys); hash tiles do not compress
            headers["Vary"] = "Accept-Encoding"
            if request.accept_encodings["gzip"] > 0:
                data = gzip.compress(data, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
        return Response(data, mimetype="application/octet-stream", headers=headers)

    @app.post("/v1/entries/batch")
    def append_batch():
        _only_params()
        body = _body(CBOR, cfg.max_body_bytes)
        try:
            items = decode_batch(body, cfg.max_batch_entries, MAX_ENTRY_SIZE)
        except BatchFormatError as exc:
            raise ApiError(400, "malformed_batch", str(exc)) from exc
        log = _log()
        # One batch at a time per process: batches decoded side by side share this process's GIL
        # and all finish late together, so the sequencer idles and then gets them all at once;
        # taken in turn, each reaches the sequencer as early as it can while the next is decoded.
        with log.batch_admission:
            try:
                prepared = prepare_issuances(items, log.issuers)
            except EntryRejected as rej:
                raise ApiError(rej.status, rej.code, f"entry {rej.position}: {rej.detail}") from rej
        done = _submit(prepared)
        created = sum(a.created for a in done)
        return jsonify(count=len(done), created=created, results=[_appended_json(a) for a in done]), \
            201 if created else 200

    @app.get("/v1/entries")
    def get_entries():
        _only_params("start", "end")
        start, end = _int_param("start"), _int_param("end")
        size = _tree_size()
        if start >= end:
            raise ApiError(400, "bad_range", f"start ({start}) must be less than end ({end})")
        if start >= size:
            raise ApiError(400, "out_of_range", f"start ({start}) is not below the tree size ({size})")
        stop = min(end, size, start + cfg.max_page)
        leaves = _log().store.leaves(start, stop)
        return jsonify(start=start, end=stop, tree_size=size,
                       entries=[{"index": lf.index, "leaf": b64(lf.data)} for lf in leaves])

    @app.get("/v1/proof/inclusion")
    def inclusion():
        _only_params("index", "leaf_hash", "tree_size")
        size = _int_param("tree_size")
        current = _tree_size()
        if not 1 <= size <= current:
            raise ApiError(400, "out_of_range", f"tree_size must be in [1, {current}], got {size}")
        has_index, has_hash = "index" in request.args, "leaf_hash" in request.args
        if has_index == has_hash:
            raise ApiError(400, "bad_parameter", "give exactly one of index and leaf_hash")
        if has_hash:
            lh = _hex(request.args["leaf_hash"], "leaf_hash", merkle.HASH_SIZE)
            found = _log().store.index_of(lh)
            if found is None:
                raise ApiError(404, "unknown_leaf", "no entry with this leaf hash")
            index = found
        else:
            index = _int_param("index")
        if index >= size:
            raise ApiError(400, "out_of_range", f"index {index} is not below tree_size {size}")
        store = _log().store
        proof = merkle.inclusion_proof(index, size, store.get_nodes)
        leaf = store.get_nodes([(0, index)])[(0, index)]
        return jsonify(index=index, tree_size=size, leaf_hash=b64(leaf), hashes=[b64(h) for h in proof])

    @app.get("/v1/proof/consistency")
    def consistency():
        _only_params("first", "second")
        first, second = _int_param("first"), _int_param("second")
        current = _tree_size()
        if not 1 <= first <= second <= current:
            raise ApiError(400, "out_of_range",
                           f"need 1 <= first <= second <= {current} (tree size), got first={first}, second={second}")
        proof = merkle.consistency_proof(first, second, _log().store.get_nodes)
        return jsonify(first=first, second=second, hashes=[b64(h) for h in proof])

    @app.get("/v1/issuances")
    def issuances():
        _only_params(*LOOKUP_FIELDS)
        given = [f for f in LOOKUP_FIELDS if f in request.args]
        if len(given) != 1:
            raise ApiError(400, "bad_parameter", f"give exactly one of {', '.join(LOOKUP_FIELDS)}")
        field = given[0]
        raw = request.args[field]
        if field == "device_uuid":
            try:
                value: bytes | str = str(uuid.UUID(raw))
            except ValueError as exc:
                raise ApiError(400, "bad_parameter", f"device_uuid is not a UUID: {raw[:60]!r}") from exc
        else:
            value = _hex(raw, field, None)
        store = _log().store
        rows = store.issuances(field, value, cfg.max_lookup)
        out = []
        for r in rows:
            leaf = store.leaf(r.leaf_index)
            out.append({"index": r.leaf_index, "leaf_hash": b64(leaf.leaf_hash), "leaf": b64(leaf.data),
                        "issuer_key_id": r.issuer_key_id.hex(), "device_uuid": r.device_uuid,
                        "has_side_record": store.side_record(r.leaf_index) is not None})
        return jsonify(issuances=out, truncated=len(rows) == cfg.max_lookup)

    @app.get("/v1/issuers")
    def issuers_list():
        _only_params()
        return jsonify(issuers=[_issuer_json(i) for i in _log().store.issuers()])

    @app.post("/v1/issuers")
    def register_issuer():
        _only_params()
        _require_operator()
        prepared = _prepare(prepare_registration, _body(CBOR, MAX_ENTRY_SIZE))
        (done,) = _submit([prepared])
        out = _appended_json(done) | {"key_id": prepared.registration.key_id.hex()}
        return jsonify(out), 201 if done.created else 200

    @app.post("/v1/issuers/<key_id>/revoke")
    def revoke_issuer(key_id: str):
        _only_params()
        _require_operator()
        kid = _hex(key_id, "key_id")
        payload = request.get_json(silent=True) if request.content_length else {}
        if not isinstance(payload, dict) or set(payload) - {"reason"} or not isinstance(payload.get("reason", ""), str):
            raise ApiError(400, "bad_body", 'the body must be JSON {"reason": "<text>"} (optional)')
        reason = payload.get("reason", "")
        if len(reason) > 1000:
            raise ApiError(400, "bad_body", "the reason is longer than 1000 characters")
        store = _log().store
        with store.write() as tx:
            issuer = tx.issuer(kid)
            if issuer is None:
                raise ApiError(404, "unknown_issuer", f"issuer {key_id} is not registered")
            if issuer.revoked_at is None:
                tx.revoke_issuer(kid, time.time(), reason)
        return jsonify(_issuer_json(store.issuer(kid)))

    @app.put("/v1/entries/<int:index>/side-record")
    def put_side_record(index: int):
        _only_params()
        data = _body("application/octet-stream", cfg.max_side_record_bytes)
        store = _log().store
        leaf = store.leaf(index) if index < _tree_size() else None
        if leaf is None:
            raise ApiError(404, "unknown_entry", f"no entry at index {index}")
        try:
            check_side_record(leaf.data, data)
        except EntryRejected as rej:
            raise ApiError(rej.status, rej.code, rej.detail) from rej
        with store.write() as tx:
            existing = store.side_record(index)
            if existing is None:
                tx.put_side_record(index, data)
        if existing is not None and existing != data:  # cannot happen for a collision-free hash
            raise ApiError(409, "side_record_exists", "a different side record is stored for this entry")
        return jsonify(index=index, stored=existing is None), 201 if existing is None else 200

    @app.get("/v1/entries/<int:index>/side-record")
    def get_side_record(index: int):
        _only_params()
        data = _log().store.side_record(index)
        if data is None:
            raise ApiError(404, "no_side_record", f"no side record for entry {index}")
        return Response(data, mimetype="application/octet-stream")

    return app


def _prepare(fn, body: bytes):
    try:
        return fn(body)
    except EntryRejected as rej:
        raise ApiError(rej.status, rej.code, rej.detail) from rej
