"""Every bad input gets a 4xx with a JSON error naming what was wrong, and nothing is stored.

Uses the Flask test client on a real store (the HTTP layer is exercised for real in the
round-trip, restart and concurrency tests).
"""

from __future__ import annotations

import hashlib
import logging

import cbor2
import pytest

from _kit.logs import TOKEN, ed25519_key, issuance, public_bytes, registration
from emshield.tlog.entry import MAX_ENTRY_SIZE
from log_server.app import create_app

CBOR = "application/cbor"


@pytest.fixture
def env(log_files, issuer_key):
    """An app with one registered issuer (index 0), one revoked issuer (1) and 3 issuances (2-4)."""
    app = create_app(log_files.app_config() | {"max_body_bytes": 256 * 1024, "max_batch_entries": 50,
                      "max_side_record_bytes": 4096})
    client = app.test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    revoked_key = ed25519_key("revoked")
    for key in (issuer_key, revoked_key):
        r = client.post("/v1/issuers", data=registration(key), content_type=CBOR, headers=auth)
        assert r.status_code == 201, r.json
    r = client.post(f"/v1/issuers/{hashlib.sha256(b'x').hexdigest()}/revoke", headers=auth)
    assert r.status_code == 404
    from emshield.tlog.entry import issuer_key_id

    rk = issuer_key_id(public_bytes(revoked_key)).hex()
    assert client.post(f"/v1/issuers/{rk}/revoke", json={"reason": "key leaked"}, headers=auth).status_code == 200
    for n in range(3):
        assert client.post("/v1/entries", data=issuance(issuer_key, n), content_type=CBOR).status_code == 201
    return app, client, auth, revoked_key


def _state(app) -> tuple:
    """Everything a refused request must leave unchanged."""
    store = app.extensions["emshield_log"].store
    conn = store._conn()
    counts = tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                   for t in ("leaves", "nodes", "checkpoints", "issuers", "issuances", "side_records"))
    revoked = tuple(conn.execute("SELECT revoked_at FROM issuers ORDER BY leaf_idx").fetchall())
    return store.latest_checkpoint().note, counts, revoked


def _entry_map(key, n: int = 99) -> dict:
    return cbor2.loads(issuance(key, n))


def _bad_cases(key, revoked_key):
    good = issuance(key, 50)
    m = _entry_map(key)
    reversed_map = cbor2.dumps(dict(reversed(list(m.items()))))  # keys not in canonical order
    wrong_type = dict(m, device_uuid="00000000-0000-0000-0000-000000000063")
    flipped = bytearray(good)
    flipped[-1] ^= 1  # the last byte is inside the watermark commitment: signature no longer matches
    sig_flip = dict(m, sig=bytes(64))
    stranger = ed25519_key("stranger")
    impostor = issuance(stranger, 7)
    # An entry naming our issuer but signed by another key.
    forged = cbor2.dumps(dict(m, sig=cbor2.loads(issuance(stranger, 99))["sig"]), canonical=True)
    v2 = cbor2.dumps(dict(m, v=2), canonical=True)
    batch_bad_item = cbor2.dumps([issuance(key, 60), issuance(key, 61), bytes(flipped)], canonical=True)
    return [
        # (what, method, path, request kwargs, status, error code)
        ("wrong content type", "post", "/v1/entries", dict(data=good, content_type="application/json"), 415,
         "unsupported_media_type"),
        ("no content type", "post", "/v1/entries", dict(data=good), 415, "unsupported_media_type"),
        ("empty body", "post", "/v1/entries", dict(data=b"", content_type=CBOR), 400, "empty_body"),
        ("not CBOR", "post", "/v1/entries", dict(data=b"\xff\x00", content_type=CBOR), 400, "malformed_entry"),
        ("CBOR but not a map", "post", "/v1/entries", dict(data=cbor2.dumps([1, 2]), content_type=CBOR), 400,
         "malformed_entry"),
        ("non-canonical key order", "post", "/v1/entries", dict(data=reversed_map, content_type=CBOR), 400,
         "malformed_entry"),
        ("non-shortest integer", "post", "/v1/entries",
         dict(data=good.replace(b"\x61v\x01", b"\x61v\x18\x01", 1), content_type=CBOR), 400, "malformed_entry"),
        ("trailing bytes", "post", "/v1/entries", dict(data=good + b"\x00", content_type=CBOR), 400,
         "malformed_entry"),
        ("unknown field", "post", "/v1/entries",
         dict(data=cbor2.dumps(dict(m, extra=1), canonical=True), content_type=CBOR), 400, "malformed_entry"),
        ("missing field", "post", "/v1/entries",
         dict(data=cbor2.dumps({k: v for k, v in m.items() if k != "issued_at"}, canonical=True), content_type=CBOR),
         400, "malformed_entry"),
        ("wrong field type", "post", "/v1/entries", dict(data=cbor2.dumps(wrong_type, canonical=True), content_type=CBOR),
         400, "malformed_entry"),
        ("unknown version", "post", "/v1/entries", dict(data=v2, content_type=CBOR), 400, "malformed_entry"),
        ("oversized body", "post", "/v1/entries", dict(data=b"\xa0" * (MAX_ENTRY_SIZE + 1), content_type=CBOR), 413,
         "body_too_large"),
        ("tampered entry", "post", "/v1/entries", dict(data=bytes(flipped), content_type=CBOR), 400, "bad_signature"),
        ("zero signature", "post", "/v1/entries", dict(data=cbor2.dumps(sig_flip, canonical=True), content_type=CBOR),
         400, "bad_signature"),
        ("signed by another key", "post", "/v1/entries", dict(data=forged, content_type=CBOR), 400, "bad_signature"),
        ("unknown issuer", "post", "/v1/entries", dict(data=impostor, content_type=CBOR), 403, "unknown_issuer"),
        ("revoked issuer", "post", "/v1/entries", dict(data=issuance(revoked_key, 1), content_type=CBOR), 403,
         "revoked_issuer"),
        ("registration on the entries path", "post", "/v1/entries",
         dict(data=registration(stranger), content_type=CBOR), 400, "wrong_entry_type"),
        ("query parameter on append", "post", "/v1/entries?x=1", dict(data=good, content_type=CBOR), 400,
         "unknown_parameter"),
        # batch
        ("batch: not an array", "post", "/v1/entries/batch", dict(data=cbor2.dumps({"a": 1}), content_type=CBOR), 400,
         "malformed_batch"),
        ("batch: empty array", "post", "/v1/entries/batch", dict(data=b"\x80", content_type=CBOR), 400,
         "malformed_batch"),
        ("batch: indefinite array", "post", "/v1/entries/batch", dict(data=b"\x9f" + cbor2.dumps(good) + b"\xff",
                                                                       content_type=CBOR), 400, "malformed_batch"),
        ("batch: item not bytes", "post", "/v1/entries/batch", dict(data=cbor2.dumps(["text"]), content_type=CBOR),
         400, "malformed_batch"),
        ("batch: trailing bytes", "post", "/v1/entries/batch",
         dict(data=cbor2.dumps([good], canonical=True) + b"\x00", content_type=CBOR), 400, "malformed_batch"),
        ("batch: non-shortest length", "post", "/v1/entries/batch", dict(data=b"\x98\x01" + cbor2.dumps(good),
                                                                          content_type=CBOR), 400, "malformed_batch"),
        ("batch: too many entries", "post", "/v1/entries/batch",
         dict(data=cbor2.dumps([issuance(key, 100 + i) for i in range(51)], canonical=True), content_type=CBOR),
         400, "malformed_batch"),
        ("batch: one bad entry", "post", "/v1/entries/batch", dict(data=batch_bad_item, content_type=CBOR), 400,
         "bad_signature"),
        ("batch: over the body limit", "post", "/v1/entries/batch", dict(data=b"\x81" + b"\x00" * 300_000,
                                                                          content_type=CBOR), 413, "body_too_large"),
        # issuer registration and revocation
        ("register: no credential", "post", "/v1/issuers", dict(data=registration(stranger), content_type=CBOR),
         401, "missing_credential"),
        ("register: not bearer", "post", "/v1/issuers", dict(data=registration(stranger), content_type=CBOR,
                                                             headers={"Authorization": "Basic abc"}), 401,
         "bad_credential"),
        ("register: wrong token", "post", "/v1/issuers", dict(data=registration(stranger), content_type=CBOR,
                                                              headers={"Authorization": "Bearer " + "x" * 40}), 403,
         "wrong_credential"),
        ("register: an issuance", "post", "/v1/issuers", dict(data=good, content_type=CBOR, auth=True), 400,
         "wrong_entry_type"),
        ("register: bad self-signature", "post", "/v1/issuers",
         dict(data=cbor2.dumps(dict(cbor2.loads(registration(stranger)), sig=bytes(64)), canonical=True),
              content_type=CBOR, auth=True), 400, "bad_signature"),
        ("register: same key, other name", "post", "/v1/issuers",
         dict(data=registration(key, "Someone Else"), content_type=CBOR, auth=True), 409, "issuer_exists"),
        ("revoke: no credential", "post", "/v1/issuers/" + "00" * 32 + "/revoke", dict(), 401, "missing_credential"),
        ("revoke: unknown issuer", "post", "/v1/issuers/" + "00" * 32 + "/revoke", dict(auth=True), 404,
         "unknown_issuer"),
        ("revoke: key id not hex", "post", "/v1/issuers/zz/revoke", dict(auth=True), 400, "bad_parameter"),
        ("revoke: bad body", "post", "/v1/issuers/" + "00" * 32 + "/revoke", dict(auth=True, json=[1]), 400,
         "bad_body"),
        # reads
        ("inclusion: missing tree_size", "get", "/v1/proof/inclusion?index=0", {}, 400, "missing_parameter"),
        ("inclusion: not a number", "get", "/v1/proof/inclusion?index=a&tree_size=3", {}, 400, "bad_parameter"),
        ("inclusion: negative", "get", "/v1/proof/inclusion?index=-1&tree_size=3", {}, 400, "bad_parameter"),
        ("inclusion: leading zero", "get", "/v1/proof/inclusion?index=01&tree_size=3", {}, 400, "bad_parameter"),
        ("inclusion: huge", "get", "/v1/proof/inclusion?index=0&tree_size=" + "9" * 30, {}, 400, "bad_parameter"),
        ("inclusion: tree_size 0", "get", "/v1/proof/inclusion?index=0&tree_size=0", {}, 400, "out_of_range"),
        ("inclusion: beyond the tree", "get", "/v1/proof/inclusion?index=0&tree_size=6", {}, 400, "out_of_range"),
        ("inclusion: index >= tree_size", "get", "/v1/proof/inclusion?index=3&tree_size=3", {}, 400, "out_of_range"),
        ("inclusion: index and leaf_hash", "get", "/v1/proof/inclusion?index=0&tree_size=3&leaf_hash=" + "00" * 32, {},
         400, "bad_parameter"),
        ("inclusion: neither", "get", "/v1/proof/inclusion?tree_size=3", {}, 400, "bad_parameter"),
        ("inclusion: leaf_hash short", "get", "/v1/proof/inclusion?tree_size=3&leaf_hash=00", {}, 400,
         "bad_parameter"),
        ("inclusion: leaf_hash not hex", "get", "/v1/proof/inclusion?tree_size=3&leaf_hash=" + "zz" * 32, {}, 400,
         "bad_parameter"),
        ("inclusion: unknown leaf", "get", "/v1/proof/inclusion?tree_size=3&leaf_hash=" + "00" * 32, {}, 404,
         "unknown_leaf"),
        ("inclusion: unknown parameter", "get", "/v1/proof/inclusion?index=0&tree_size=3&x=1", {}, 400,
         "unknown_parameter"),
        ("inclusion: repeated parameter", "get", "/v1/proof/inclusion?index=0&index=1&tree_size=3", {}, 400,
         "bad_parameter"),
        ("consistency: first 0", "get", "/v1/proof/consistency?first=0&second=3", {}, 400, "out_of_range"),
        ("consistency: first > second", "get", "/v1/proof/consistency?first=4&second=3", {}, 400, "out_of_range"),
        ("consistency: beyond the tree", "get", "/v1/proof/consistency?first=1&second=6", {}, 400, "out_of_range"),
        ("consistency: missing second", "get", "/v1/proof/consistency?first=1", {}, 400, "missing_parameter"),
        ("entries: start >= end", "get", "/v1/entries?start=2&end=2", {}, 400, "bad_range"),
        ("entries: start beyond tree", "get", "/v1/entries?start=5&end=9", {}, 400, "out_of_range"),
        ("entries: missing end", "get", "/v1/entries?start=0", {}, 400, "missing_parameter"),
        ("issuances: no selector", "get", "/v1/issuances", {}, 400, "bad_parameter"),
        ("issuances: two selectors", "get", "/v1/issuances?fingerprint_hash=00&watermark_commitment=00", {}, 400,
         "bad_parameter"),
        ("issuances: bad hex", "get", "/v1/issuances?watermark_commitment=xyz", {}, 400, "bad_parameter"),
        ("issuances: bad uuid", "get", "/v1/issuances?device_uuid=not-a-uuid", {}, 400, "bad_parameter"),
        # side records
        ("side record: wrong type", "put", "/v1/entries/2/side-record", dict(data=b"x", content_type=CBOR), 415,
         "unsupported_media_type"),
        ("side record: no such entry", "put", "/v1/entries/99/side-record",
         dict(data=b"x", content_type="application/octet-stream"), 404, "unknown_entry"),
        ("side record: entry without fingerprint", "put", "/v1/entries/2/side-record",
         dict(data=b"x", content_type="application/octet-stream"), 400, "no_fingerprint_hash"),
        ("side record: registration entry", "put", "/v1/entries/0/side-record",
         dict(data=b"x", content_type="application/octet-stream"), 400, "no_fingerprint_hash"),
        ("side record: too large", "put", "/v1/entries/2/side-record",
         dict(data=b"x" * 5000, content_type="application/octet-stream"), 413, "body_too_large"),
        ("side record: none stored", "get", "/v1/entries/2/side-record", {}, 404, "no_side_record"),
        # integers the store cannot hold (signed 64-bit): never 500
        ("side record: index 2**63", "get", "/v1/entries/9223372036854775808/side-record", {}, 404,
         "no_side_record"),
        ("side record: 20-digit index", "get", "/v1/entries/99999999999999999999/side-record", {}, 404, "not_found"),
        ("side record: index with a leading zero", "get", "/v1/entries/02/side-record", {}, 404, "not_found"),
        ("side record: largest index", "get", "/v1/entries/9223372036854775807/side-record", {}, 404,
         "no_side_record"),
        ("side record put: index 2**63", "put", "/v1/entries/9223372036854775808/side-record",
         dict(data=b"x", content_type="application/octet-stream"), 404, "unknown_entry"),
        ("side record put: largest index", "put", "/v1/entries/9223372036854775807/side-record",
         dict(data=b"x", content_type="application/octet-stream"), 404, "unknown_entry"),
        ("entries: start 2**63", "get", "/v1/entries?start=9223372036854775808&end=9223372036854775809", {}, 400,
         "out_of_range"),
        ("inclusion: index 2**63", "get", "/v1/proof/inclusion?index=9223372036854775808&tree_size=1", {}, 400,
         "out_of_range"),
        ("inclusion: tree_size 2**63", "get", "/v1/proof/inclusion?index=0&tree_size=9223372036854775808", {}, 400,
         "out_of_range"),
        ("consistency: second 2**63", "get", "/v1/proof/consistency?first=1&second=9223372036854775808", {}, 400,
         "out_of_range"),
        ("tile: index past 2**64", "get", "/tile/0/x999/x999/x999/x999/x999/x999/x999/999", {}, 404, "no_such_tile"),
        # routing
        ("unknown path", "get", "/v1/nothing", {}, 404, "not_found"),
        ("wrong method", "delete", "/v1/entries", {}, 405, "method_not_allowed"),
        ("checkpoint with parameters", "get", "/checkpoint?size=1", {}, 400, "unknown_parameter"),
    ]


def test_every_bad_input_is_refused_and_nothing_is_stored(env, issuer_key, caplog) -> None:
    app, client, auth, revoked_key = env
    before = _state(app)
    caplog.set_level(logging.WARNING)
    cases = _bad_cases(issuer_key, revoked_key)
    assert len({c[0] for c in cases}) == len(cases)
    for what, method, path, kw, status, code in cases:
        kw = dict(kw)
        if kw.pop("auth", False):
            kw["headers"] = auth
        resp = getattr(client, method)(path, **kw)
        assert resp.status_code == status, (what, resp.status_code, resp.get_data()[:300])
        body = resp.get_json()
        assert body is not None and set(body) == {"error", "detail"}, (what, resp.get_data()[:300])
        assert body["error"] == code, (what, body)
        assert isinstance(body["detail"], str) and body["detail"], what
        assert _state(app) == before, f"{what}: the store changed"
    # A client's mistake is not the server's: nothing reaches the server log (no stack traces to flood it).
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text[:2000]


def test_a_405_says_which_methods_are_allowed(env) -> None:
    """RFC 9110 §15.5.6: a 405 carries Allow, here too for the append answered in front of Flask."""
    _, client, _, _ = env
    for method, path, allowed in [("delete", "/v1/entries", {"GET", "HEAD", "OPTIONS", "POST"}),
                                  ("post", "/checkpoint", {"GET", "HEAD", "OPTIONS"}),
                                  ("get", "/v1/entries/batch", {"POST", "OPTIONS"}),
                                  ("delete", "/v1/entries/2/side-record", {"GET", "HEAD", "OPTIONS", "PUT"})]:
        resp = getattr(client, method)(path)
        assert (resp.status_code, resp.json["error"]) == (405, "method_not_allowed"), (method, path)
        assert set(resp.headers["Allow"].split(", ")) == allowed, (method, path, resp.headers.get("Allow"))
        assert resp.headers["Content-Type"] == "application/json"


def test_side_record_must_match_the_committed_fingerprint(env, issuer_key) -> None:
    from emshield.marking.fingerprint import Fingerprint

    app, client, _, _ = env
    fp = Fingerprint(hashlib.sha256(b"params").digest(), (("layers.0.q", (1, 2, 3)), ("layers.0.v", (4, 5, 6))))
    other = Fingerprint(fp.params_digest, (("layers.0.q", (1, 2, 4)), ("layers.0.v", (4, 5, 6))))
    r = client.post("/v1/entries", data=issuance(issuer_key, 7, policy="fingerprint", fingerprint_hash=fp.hash()),
                    content_type=CBOR)
    index = r.json["index"]
    before = _state(app)
    octet = "application/octet-stream"
    for bad in (other.to_cbor(), fp.to_cbor() + b"\x00", b"\xa0"):
        resp = client.put(f"/v1/entries/{index}/side-record", data=bad, content_type=octet)
        assert resp.status_code == 400 and resp.json["error"] == "side_record_mismatch", resp.json
    assert _state(app) == before
    assert client.put(f"/v1/entries/{index}/side-record", data=fp.to_cbor(), content_type=octet).status_code == 201
    assert client.put(f"/v1/entries/{index}/side-record", data=fp.to_cbor(), content_type=octet).json["stored"] is False
    got = client.get(f"/v1/entries/{index}/side-record")
    assert got.status_code == 200 and got.data == fp.to_cbor()
    hits = client.get(f"/v1/issuances?fingerprint_hash={fp.hash().hex()}").json["issuances"]
    assert [h["index"] for h in hits] == [index] and hits[0]["has_side_record"]


def test_revocation_stops_appends_but_keeps_history(env, issuer_key) -> None:
    app, client, auth, _ = env
    kid = public_bytes(issuer_key)
    from emshield.tlog.entry import issuer_key_id

    key_id = issuer_key_id(kid).hex()
    r = client.post(f"/v1/issuers/{key_id}/revoke", json={"reason": "retired"}, headers=auth)
    assert r.status_code == 200 and r.json["revoked"] and r.json["revocation_reason"] == "retired"
    r = client.post("/v1/entries", data=issuance(issuer_key, 40), content_type=CBOR)
    assert (r.status_code, r.json["error"]) == (403, "revoked_issuer")
    # Entries logged before the revocation stay, and so does the registration.
    assert client.get("/v1/entries?start=0&end=10").json["tree_size"] == 5
    listed = {i["key_id"]: i for i in client.get("/v1/issuers").json["issuers"]}
    assert listed[key_id]["revoked"] and listed[key_id]["index"] == 0
    # Revoking twice keeps the first revocation.
    again = client.post(f"/v1/issuers/{key_id}/revoke", json={"reason": "other"}, headers=auth).json
    assert again["revocation_reason"] == "retired"


def test_entries_are_paged_and_batches_deduplicate(log_files, issuer_key) -> None:
    app = create_app(log_files.app_config() | {"max_page": 3})
    client = app.test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/v1/issuers", data=registration(issuer_key), content_type=CBOR, headers=auth).status_code == 201
    a, b = issuance(issuer_key, 1), issuance(issuer_key, 2)
    r = client.post("/v1/entries/batch", data=cbor2.dumps([a, b, a, b, a], canonical=True), content_type=CBOR)
    assert r.status_code == 201 and r.json["created"] == 2
    assert [(x["index"], x["created"]) for x in r.json["results"]] == [(1, True), (2, True), (1, False), (2, False),
                                                                        (1, False)]
    again = client.post("/v1/entries/batch", data=cbor2.dumps([b, a], canonical=True), content_type=CBOR)
    assert again.status_code == 200 and [x["index"] for x in again.json["results"]] == [2, 1]
    for n in range(3, 8):
        client.post("/v1/entries", data=issuance(issuer_key, n), content_type=CBOR)
    seen, start = [], 0
    while True:
        page = client.get(f"/v1/entries?start={start}&end=100").json
        assert len(page["entries"]) <= 3 and page["tree_size"] == 8
        seen += [e["index"] for e in page["entries"]]
        start = page["end"]
        if start == page["tree_size"]:
            break
    assert seen == list(range(8))
