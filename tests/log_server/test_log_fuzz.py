"""A bounded, seeded fuzz run over every operation in spec/openapi.yaml against a served log (issue #20).

Hypothesis draws each request: parameters from the operation's OpenAPI schema or hostile values
(huge, negative, padded, non-numeric integers; bad hex and UUIDs; parameters missing, repeated
or unknown), bodies from CBOR strategies of our own (signed entries, entries mutated byte by byte,
arbitrary CBOR values, batches mixing both, random bytes), under any of several content types and
credentials. The run asserts: no 5xx, no request left unanswered (a hang fails on the client's
timeout), and afterwards every stored leaf decodes strictly and verifies under the key of an
issuer registered before it, the served checkpoint covering exactly those leaves. The
cross-parameter rules that OpenAPI cannot state (spec/api.md §1) come from each operation's
``x-parameter-rules``, so that draws satisfying them reach past the parameter checks.
"""

from __future__ import annotations

import re
import string
import uuid
from urllib.parse import quote

import cbor2
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _kit.logs import TOKEN, ed25519_key, issuance, registration
from _kit.paths import ROOT
from emshield.logclient.http import LogClient
from emshield.tlog import merkle
from emshield.tlog.entry import Issuance, IssuerRegistration, decode_entry, verify_entry_signature

SPEC = yaml.safe_load((ROOT / "spec" / "openapi.yaml").read_text())
METHODS = ("get", "post", "put", "delete")
OPERATIONS = sorted((path, method) for path, ops in SPEC["paths"].items() for method in ops if method in METHODS)
EXAMPLES = 500
ISSUER = ed25519_key("fuzz-issuer")

# -- parameter values ------------------------------------------------------------------------------

hostile_ints = st.sampled_from(["-1", "01", "1.0", "1e3", "", " 1", "0x10", "9223372036854775807",
                                "9223372036854775808", "99999999999999999999", "1" * 400, "٣"])
hostile_text = st.text(alphabet=string.printable + "\u00e9\u2014\x00", max_size=80)


def _value(schema: dict, known: dict[str, list[str]], name: str) -> st.SearchStrategy[str]:
    """A value for a parameter: one the schema allows (often one naming something stored), or not."""
    if "$ref" in schema:
        schema = SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    fitting: st.SearchStrategy[str]
    if schema.get("type") == "integer":
        fitting = st.integers(min_value=schema.get("minimum", 0), max_value=40).map(str) | hostile_ints
    elif schema.get("format") == "uuid":
        fitting = st.uuids().map(str) | st.just(str(uuid.UUID(int=3))) | st.just("not-a-uuid")
    elif "pattern" in schema:
        fitting = st.from_regex(schema["pattern"], fullmatch=True) | st.binary(max_size=40).map(bytes.hex)
    else:
        fitting = hostile_text
    choices = known.get(name, [])
    return (st.sampled_from(choices) | fitting) if choices else fitting | hostile_text


def _query(op: dict, path_params: set[str], known: dict[str, list[str]]):
    """Query pairs: each documented parameter present or not (the operation's rules applied half
    the time), now and then repeated, plus now and then an unknown one."""
    params = [p for p in op.get("parameters", []) if p.get("in") == "query" or "$ref" in p]
    params = [SPEC["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p for p in params]
    rules = op.get("x-parameter-rules", [])

    @st.composite
    def draw(d):
        pairs = []
        obey = d(st.booleans())
        exclusive = {n for r in rules if "exactly_one_of" in r for n in r["exactly_one_of"]}
        chosen = {d(st.sampled_from(r["exactly_one_of"])) for r in rules if "exactly_one_of" in r} if obey else set()
        for p in params:
            present = (p["name"] in chosen) if (obey and p["name"] in exclusive) else \
                (p.get("required", False) if obey else d(st.booleans()))
            if present:
                pairs.append((p["name"], d(_value(p["schema"], known, p["name"]))))
                if d(st.integers(0, 9)) == 0:
                    pairs.append((p["name"], d(_value(p["schema"], known, p["name"]))))
        if d(st.integers(0, 9)) == 0:
            pairs.append((d(st.sampled_from(["size", "limit", "start", "x"])), d(hostile_text)))
        if obey:  # an ordering rule a < b (or a <= b) broken by the draw: move b past a
            values = dict(pairs)
            for rule in rules:
                for kind, gap in (("less_than", 1), ("at_most", 0)):
                    a, b = rule.get(kind, (None, None))
                    if a in values and b in values and values[a].isdigit() and values[b].isdigit() \
                            and int(values[a]) + gap > int(values[b]):
                        pairs = [(k, str(int(values[a]) + gap) if k == b else v) for k, v in pairs]
        return pairs

    return draw()


# -- bodies ----------------------------------------------------------------------------------------

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=5),
    max_leaves=20)


@st.composite
def mutated(d, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, cut short, extended or spliced."""
    buf = bytearray(data)
    for _ in range(d(st.integers(1, 4))):
        kind = d(st.sampled_from(["flip", "cut", "append", "insert"]))
        at = d(st.integers(0, max(0, len(buf) - 1)))
        if kind == "flip" and buf:
            buf[at] ^= 1 << d(st.integers(0, 7))
        elif kind == "cut":
            del buf[at:]
        elif kind == "append":
            buf += d(st.binary(min_size=1, max_size=8))
        else:
            buf[at:at] = d(st.binary(min_size=1, max_size=8))
    return bytes(buf)


def entries():
    fresh = st.integers(1000, 10**6).map(lambda n: issuance(ISSUER, n))
    stranger = st.integers(0, 50).map(lambda n: issuance(ed25519_key("fuzz-stranger"), n))
    return (fresh | stranger | st.just(registration(ISSUER)) | st.just(registration(ed25519_key("fuzz-new"), "New"))
            | fresh.flatmap(mutated) | cbor_values.map(cbor2.dumps) | st.binary(max_size=200))


def batches():
    return (st.lists(entries(), min_size=0, max_size=6).map(lambda items: cbor2.dumps(items, canonical=True))
            | st.lists(entries(), min_size=1, max_size=4).map(lambda items: cbor2.dumps(items)).flatmap(mutated)
            | cbor_values.map(cbor2.dumps))


def body_for(path: str):
    if path == "/v1/entries/batch":
        return batches()
    if path.endswith("/side-record"):
        return st.binary(max_size=300) | cbor_values.map(cbor2.dumps)
    if path.endswith("/revoke"):
        return st.sampled_from([b"", b'{"reason": "fuzz"}', b"{}", b"[]", b'{"reason": 5}', b"\xff"])
    return entries()


content_types = st.sampled_from(["application/cbor", "application/octet-stream", "application/json",
                                 "text/plain", "application/CBOR; charset=x", None])


# -- the run ---------------------------------------------------------------------------------------


def _checked_tree(url: str, verifier) -> int:
    """Every stored leaf is a valid entry by an issuer registered before it; returns the size."""
    log = LogClient(url)
    cp = log.verified_checkpoint(verifier)
    leaves = [e.data for e in log.iter_entries(0, cp.size)]
    assert merkle.root_from_leaf_hashes([merkle.leaf_hash(d) for d in leaves]) == cp.root_hash
    keys: dict[bytes, Ed25519PublicKey] = {}
    for index, data in enumerate(leaves):
        signed = decode_entry(data)
        entry = signed.entry
        if isinstance(entry, IssuerRegistration):
            key = Ed25519PublicKey.from_public_bytes(entry.issuer_public_key)
            verify_entry_signature(signed, key)
            keys[entry.key_id] = key
        else:
            assert isinstance(entry, Issuance), index
            verify_entry_signature(signed, keys[entry.issuer_key_id])
    return cp.size


def test_fuzzing_every_operation_finds_no_5xx_no_hang_and_stores_no_invalid_entry(log_files, server_factory) -> None:
    srv = server_factory(log_files, workers=1, threads=4)
    log = LogClient(srv.url, operator_token=TOKEN)
    log.register_issuer(registration(ISSUER))
    seeded = log.append_batch([issuance(ISSUER, n) for n in range(20)])
    first = decode_entry(issuance(ISSUER, 0)).entry
    known = {"index": ["0", "5", "20"], "tree_size": ["21", "1"], "start": ["0", "3"], "end": ["21", "4"],
             "first": ["1", "7"], "second": ["21", "9"], "leaf_hash": [seeded[3].leaf_hash.hex()],
             "watermark_commitment": [first.watermark_commitment.hex()], "device_uuid": [first.device_uuid_text],
             "fingerprint_hash": ["00" * 32], "key_id": [first.issuer_key_id.hex()],
             "tile_path": ["0/000.p/21", "entries/000.p/21", "1/000.p/1", "0/x001/000", "entries/000"]}
    session = requests.Session()
    seen: dict[tuple[str, str], list[int]] = {}

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one_request(data) -> None:
        path, method = data.draw(st.sampled_from(OPERATIONS))
        op = SPEC["paths"][path][method]
        path_params = {p["name"]: p for p in SPEC["paths"][path].get("parameters", []) + op.get("parameters", [])
                       if p.get("in") == "path"}
        url_path = path
        for name, p in path_params.items():
            value = data.draw(_value(p["schema"], known, name) if name != "tile_path" else
                              st.sampled_from(known[name]) | st.text(alphabet="0123456789x./entris", max_size=30))
            url_path = url_path.replace("{" + name + "}", quote(value, safe="/"))
        query = data.draw(_query(op, set(path_params), known))
        headers = {}
        ctype = data.draw(content_types)
        if ctype:
            headers["Content-Type"] = ctype
        if "security" in op:
            auth = data.draw(st.sampled_from([None, f"Bearer {TOKEN}", "Bearer wrong-token", "Basic x", "Bearer"]))
            if auth:
                headers["Authorization"] = auth
            if auth == f"Bearer {TOKEN}" and path.endswith("/revoke"):  # keep the fuzzing issuer registered
                url_path = f"/v1/issuers/{data.draw(st.binary(min_size=1, max_size=33)).hex()}/revoke"
        body = data.draw(body_for(path)) if method in ("post", "put") else None
        r = session.request(method.upper(), srv.url + url_path, params=query, data=body, headers=headers,
                            timeout=20)
        seen.setdefault((path, method), []).append(r.status_code)
        assert r.status_code < 500, (method, url_path, query, r.status_code, r.text[:300])
        if r.status_code >= 400:
            err = r.json()
            assert set(err) == {"error", "detail"} and re.fullmatch(r"[a-z_]+", err["error"]), r.text[:300]

    one_request()
    assert set(seen) == set(OPERATIONS), f"operations never drawn: {set(OPERATIONS) - set(seen)}"
    # Some draws got past the checks: the fuzzing reaches the stores, not only the parsers.
    assert any(s < 300 for (p, m), codes in seen.items() if m == "get" for s in codes)
    assert _checked_tree(srv.url, log_files.verifier) >= 21
    assert srv.proc.poll() is None and "Traceback" not in srv.read_output(), srv.read_output()[-3000:]
