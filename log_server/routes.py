"""The log's HTTP API as one Flask blueprint (spec/api.md, spec/openapi.yaml).

Routes only parse and check input, call the store (reads) or the sequencer (writes), and shape
JSON (`records`). Every refusal is a `Refusal` raised before anything reaches the sequencer, so a
refused request stores nothing. ``POST /v1/entries`` is answered in front of Flask
(`runtime.fast_append`) with the same rules.
"""

from __future__ import annotations

import gzip
import time
import uuid

from flask import Blueprint, Response, jsonify, request

from emshield.tlog import merkle
from emshield.tlog.entry import MAX_ENTRY_SIZE
from emshield.tlog.tiles import TileError, parse_tile_path
from emshield.wsgi_body import read_body

from . import keys, tile_reader
from .admission import check_side_record, prepare_issuances, prepare_registration
from .batch import BatchFormatError, decode_batch
from .cosigning import cosigned_note
from .errors import Refusal
from .params import CBOR, hex_param, int_param, only_params
from .records import appended_json, attribution_json, b64, issuance_json, issuer_json
from .state import current
from .storage import ATTRIBUTION_LOOKUP_FIELDS, LOOKUP_FIELDS

api = Blueprint("log_api", __name__)


def _params(*allowed: str) -> dict[str, str]:
    return only_params(request.args.items(multi=True), *allowed)


def _body(content_type: str, limit: int) -> bytes:
    return read_body(request.environ, limit, content_type)


def _tree_size() -> int:
    cp = current().store.latest_checkpoint()
    return 0 if cp is None else cp.size


def _require_operator() -> None:
    header = request.headers.get("Authorization", "")
    if not header:
        raise Refusal(401, "missing_credential", "this operation needs the operator credential"
                                                 " (Authorization: Bearer <token>)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Refusal(401, "bad_credential", "the Authorization header must be 'Bearer <token>'")
    # Read per request (operator calls are rare), so `emshield-log set-token` takes effect at once.
    digest = current().store.meta(keys.TOKEN_META_KEY)
    if digest is None or not keys.token_matches(token.strip(), digest):
        raise Refusal(403, "wrong_credential", "the operator credential is not valid")


@api.get("/checkpoint")
def checkpoint() -> Response:
    """The latest signed checkpoint (C2SP tlog-checkpoint in a signed note), with witness
    cosignatures; with a witness quorum, the latest checkpoint that has reached it."""
    _params()
    log = current()
    quorum = log.config.witness_quorum
    note = cosigned_note(log.store, log.witnesses, quorum)
    if note is None:
        raise Refusal(503, "no_checkpoint", "the log has no checkpoint yet" if quorum == 0 else
                      f"no checkpoint is cosigned by {quorum} witnesses yet")
    return Response(note, mimetype="text/plain", headers={"Cache-Control": "no-cache"})


@api.get("/tile/<path:tile_path>")
def tile(tile_path: str) -> Response:
    """C2SP tlog-tiles: hash tiles /tile/<L>/<N>[.p/<W>] and entry bundles /tile/entries/<N>[.p/<W>]."""
    _params()
    try:
        t = parse_tile_path(tile_path)
    except TileError as exc:
        raise Refusal(404, "bad_tile_path", str(exc)) from exc
    try:
        data = tile_reader.read(current().store, t, _tree_size())
    except tile_reader.TileNotFound as exc:
        raise Refusal(404, "no_such_tile", str(exc)) from exc
    headers = {"Cache-Control": tile_reader.cache_control(t)}
    if t.level is None:  # entry bundles compress ~2.7x (CBOR map keys); hash tiles do not compress
        headers["Vary"] = "Accept-Encoding"
        if request.accept_encodings["gzip"] > 0:
            data = gzip.compress(data, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
    return Response(data, mimetype="application/octet-stream", headers=headers)


@api.post("/v1/entries/batch")
def append_batch():
    _params()
    log = current()
    body = _body(CBOR, log.config.max_body_bytes)
    try:
        items = decode_batch(body, log.config.max_batch_entries, MAX_ENTRY_SIZE)
    except BatchFormatError as exc:
        raise Refusal(400, "malformed_batch", str(exc)) from exc
    # One batch at a time per process: batches decoded side by side share this process's GIL
    # and all finish late together, so the sequencer idles and then gets them all at once;
    # taken in turn, each reaches the sequencer as early as it can while the next is decoded.
    with log.batch_admission:
        try:
            prepared = prepare_issuances(items, log.issuers)
        except Refusal as rej:
            raise Refusal(rej.status, rej.code, f"entry {rej.position}: {rej.detail}") from rej
    done = log.sequencer.submit(prepared)
    created = sum(a.created for a in done)
    return jsonify(count=len(done), created=created, results=[appended_json(a) for a in done]), \
        201 if created else 200


@api.get("/v1/entries")
def get_entries():
    q = _params("start", "end")
    start, end = int_param(q, "start"), int_param(q, "end")
    size = _tree_size()
    if start >= end:
        raise Refusal(400, "bad_range", f"start ({start}) must be less than end ({end})")
    if start >= size:
        raise Refusal(400, "out_of_range", f"start ({start}) is not below the tree size ({size})")
    stop = min(end, size, start + current().config.max_page)
    leaves = current().store.leaves(start, stop)
    return jsonify(start=start, end=stop, tree_size=size,
                   entries=[{"index": lf.index, "leaf": b64(lf.data)} for lf in leaves])


@api.get("/v1/proof/inclusion")
def inclusion():
    q = _params("index", "leaf_hash", "tree_size")
    size = int_param(q, "tree_size")
    current_size = _tree_size()
    if not 1 <= size <= current_size:
        raise Refusal(400, "out_of_range", f"tree_size must be in [1, {current_size}], got {size}")
    has_index, has_hash = "index" in q, "leaf_hash" in q
    if has_index == has_hash:
        raise Refusal(400, "bad_parameter", "give exactly one of index and leaf_hash")
    store = current().store
    if has_hash:
        lh = hex_param(q["leaf_hash"], "leaf_hash", merkle.HASH_SIZE)
        found = store.index_of(lh)
        if found is None:
            raise Refusal(404, "unknown_leaf", "no entry with this leaf hash")
        index = found
    else:
        index = int_param(q, "index")
    if index >= size:
        raise Refusal(400, "out_of_range", f"index {index} is not below tree_size {size}")
    proof = merkle.inclusion_proof(index, size, store.get_nodes)
    leaf = store.get_nodes([(0, index)])[(0, index)]
    return jsonify(index=index, tree_size=size, leaf_hash=b64(leaf), hashes=[b64(h) for h in proof])


@api.get("/v1/proof/consistency")
def consistency():
    q = _params("first", "second")
    first, second = int_param(q, "first"), int_param(q, "second")
    current_size = _tree_size()
    if not 1 <= first <= second <= current_size:
        raise Refusal(400, "out_of_range",
                      f"need 1 <= first <= second <= {current_size} (tree size), got first={first}, second={second}")
    proof = merkle.consistency_proof(first, second, current().store.get_nodes)
    return jsonify(first=first, second=second, hashes=[b64(h) for h in proof])


@api.get("/v1/issuances")
def issuances():
    q = _params(*LOOKUP_FIELDS)
    given = [f for f in LOOKUP_FIELDS if f in q]
    if len(given) != 1:
        raise Refusal(400, "bad_parameter", f"give exactly one of {', '.join(LOOKUP_FIELDS)}")
    field = given[0]
    raw = q[field]
    if field == "device_uuid":
        try:
            value: bytes | str = str(uuid.UUID(raw))
        except ValueError as exc:
            raise Refusal(400, "bad_parameter", f"device_uuid is not a UUID: {raw[:60]!r}") from exc
    else:
        value = hex_param(raw, field, None)
    log = current()
    store = log.store
    rows = store.issuances(field, value, log.config.max_lookup)
    out = [issuance_json(r, store.leaf(r.leaf_index), store.side_record(r.leaf_index) is not None) for r in rows]
    return jsonify(issuances=out, truncated=len(rows) == log.config.max_lookup)


@api.get("/v1/attributions")
def attributions():
    """Attribution entries by the suspect file's SHA-256 or by the attributed issuance's index,
    with the same caps and parameter rules as /v1/issuances."""
    q = _params(*ATTRIBUTION_LOOKUP_FIELDS)
    given = [f for f in ATTRIBUTION_LOOKUP_FIELDS if f in q]
    if len(given) != 1:
        raise Refusal(400, "bad_parameter", f"give exactly one of {', '.join(ATTRIBUTION_LOOKUP_FIELDS)}")
    field = given[0]
    value = hex_param(q[field], field, 32) if field == "suspect_sha256" else int_param(q, field)
    log = current()
    store = log.store
    rows = store.attributions(field, value, log.config.max_lookup)
    out = [attribution_json(r, store.leaf(r.leaf_index)) for r in rows]
    return jsonify(attributions=out, truncated=len(rows) == log.config.max_lookup)


@api.get("/v1/issuers")
def issuers_list():
    _params()
    return jsonify(issuers=[issuer_json(i) for i in current().store.issuers()])


@api.post("/v1/issuers")
def register_issuer():
    _params()
    _require_operator()
    prepared = prepare_registration(_body(CBOR, MAX_ENTRY_SIZE))
    (done,) = current().sequencer.submit([prepared])
    out = appended_json(done) | {"key_id": prepared.registration.key_id.hex()}
    return jsonify(out), 201 if done.created else 200


@api.post("/v1/issuers/<key_id>/revoke")
def revoke_issuer(key_id: str):
    _params()
    _require_operator()
    kid = hex_param(key_id, "key_id")
    payload = request.get_json(silent=True) if request.content_length else {}
    if not isinstance(payload, dict) or set(payload) - {"reason"} or not isinstance(payload.get("reason", ""), str):
        raise Refusal(400, "bad_body", 'the body must be JSON {"reason": "<text>"} (optional)')
    reason = payload.get("reason", "")
    if len(reason) > 1000:
        raise Refusal(400, "bad_body", "the reason is longer than 1000 characters")
    store = current().store
    with store.write() as tx:
        issuer = tx.issuer(kid)
        if issuer is None:
            raise Refusal(404, "unknown_issuer", f"issuer {key_id} is not registered")
        if issuer.revoked_at is None:
            tx.revoke_issuer(kid, time.time(), reason)
    return jsonify(issuer_json(store.issuer(kid)))


@api.put("/v1/entries/<index:index>/side-record")
def put_side_record(index: int):
    _params()
    log = current()
    data = _body("application/octet-stream", log.config.max_side_record_bytes)
    store = log.store
    leaf = store.leaf(index) if index < _tree_size() else None
    if leaf is None:
        raise Refusal(404, "unknown_entry", f"no entry at index {index}")
    check_side_record(leaf.data, data)
    with store.write() as tx:
        existing = store.side_record(index)
        if existing is None:
            tx.put_side_record(index, data)
    if existing is not None and existing != data:  # cannot happen for a collision-free hash
        raise Refusal(409, "side_record_exists", "a different side record is stored for this entry")
    return jsonify(index=index, stored=existing is None), 201 if existing is None else 200


@api.get("/v1/entries/<index:index>/side-record")
def get_side_record(index: int):
    _params()
    data = current().store.side_record(index) if index < _tree_size() else None
    if data is None:
        raise Refusal(404, "no_side_record", f"no side record for entry {index}")
    return Response(data, mimetype="application/octet-stream")
