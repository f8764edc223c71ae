"""Attribution entries (spec/entry.md, "Attribution"; spec/api.md, POST /v1/entries and GET
/v1/attributions) over real HTTP on both stores: admitted only when they open a logged issuance's
secret-mark commitment, every refusal with its own code and nothing stored, idempotent, found by
suspect SHA-256 and by issuance index; and a store created before attributions gets their table."""

from __future__ import annotations

import base64
import hashlib

import pytest

from _kit.attributions import attribution, secret_issuance
from _kit.logs import ed25519_key, issuance, public_bytes, registration, run_sql
from emshield.logclient.http import AttributionHit, LogClient, LogClientError
from emshield.tlog import entry as E
from emshield.tlog import merkle
from log_server.storage import open_store

SUSPECT = b"the leaked model file"


def _attributions_stored(log_files) -> int:
    return int(run_sql(log_files.db, "SELECT count(*) FROM attributions"))


@pytest.fixture
def env(log_files, server_factory, issuer_key):
    """A served log: issuer (0), its rotated key registered as another issuer (1), a revoked issuer
    (2); a secret-mark issuance (3), an issuance without secret-mark fields (4), another secret-mark
    issuance (5)."""
    srv = server_factory(log_files)
    log = LogClient(srv.url, operator_token=log_files.token)
    rotated, revoked = ed25519_key("issuer-1-rotated"), ed25519_key("revoked")
    for key, name in ((issuer_key, "Acme Models"), (rotated, "Acme Models (2027 key)"), (revoked, "Gone")):
        log.register_issuer(registration(key, name))
    log.revoke_issuer(E.issuer_key_id(public_bytes(revoked)), "key leaked")
    first, second = secret_issuance(issuer_key, 1), secret_issuance(issuer_key, 2)
    assert [log.append(d).index for d in (first.leaf, issuance(issuer_key, 7), second.leaf)] == [3, 4, 5]
    return log, first, second, rotated, revoked


def test_attributions_are_appended_and_found_both_ways(env, log_files, issuer_key) -> None:
    log, first, second, rotated, _ = env
    data = attribution(issuer_key, 3, first.leaf_hash, first.key, SUSPECT)
    done = log.append(data)
    assert (done.index, done.leaf_hash, done.created) == (6, merkle.leaf_hash(data), True)
    again = log.append(data)  # the same bytes again: idempotent, nothing added
    assert (again.index, again.created) == (6, False)
    # The signer need not be the issuance's key: a rotated key (registered as an issuer) signs.
    other = attribution(rotated, 5, second.leaf_hash, second.key, SUSPECT, score_e6=0, terms=1)
    assert log.append(other).index == 7
    third = attribution(issuer_key, 3, first.leaf_hash, first.key, b"another copy")
    assert log.append(third).index == 8
    assert log.verified_checkpoint(log_files.verifier).size == 9 and _attributions_stored(log_files) == 3

    kid, rotated_kid = E.issuer_key_id(public_bytes(issuer_key)), E.issuer_key_id(public_bytes(rotated))
    suspect = hashlib.sha256(SUSPECT).digest()
    assert log.attributions(suspect_sha256=suspect) == [
        AttributionHit(6, merkle.leaf_hash(data), data, kid, 3),
        AttributionHit(7, merkle.leaf_hash(other), other, rotated_kid, 5)]
    assert [h.index for h in log.attributions(issuance_index=3)] == [6, 8]
    assert [h.index for h in log.attributions(issuance_index=5)] == [7]
    assert log.attributions(issuance_index=4) == [] and log.attributions(suspect_sha256=bytes(32)) == []
    assert log.attribution_lookup(suspect_sha256=hashlib.sha256(b"another copy").digest()).truncated is False
    # What the log serves is the leaf: it decodes to the attribution that was appended.
    hit = log.attributions(issuance_index=5)[0]
    assert E.decode_entry(hit.leaf).entry == E.decode_entry(other).entry
    with pytest.raises(ValueError, match="exactly one"):
        log.attributions(suspect_sha256=suspect, issuance_index=3)
    with pytest.raises(ValueError, match="exactly one"):
        log.attributions()


def test_every_refused_attribution_has_its_code_and_stores_nothing(env, log_files, issuer_key) -> None:
    log, first, second, _, revoked = env
    stranger = ed25519_key("never registered")
    good = attribution(issuer_key, 3, first.leaf_hash, first.key)
    m = bytearray(good)
    m[-1] ^= 1  # the last byte of the map is inside the last value (suspect or leaf hash): still well-formed
    signature_flipped = E.encode_entry(E.SignedEntry(E.decode_entry(good).entry,
                                                      bytes([E.decode_entry(good).signature[0] ^ 1])
                                                      + E.decode_entry(good).signature[1:]))
    registration_leaf = log.entries(0, 1)[0].data
    cases = [
        ("unknown signer", attribution(stranger, 3, first.leaf_hash, first.key), 403, "unknown_issuer"),
        ("revoked signer", attribution(revoked, 3, first.leaf_hash, first.key), 403, "revoked_issuer"),
        ("signature bit flipped", signature_flipped, 400, "bad_signature"),
        ("field changed after signing", bytes(m), 400, "bad_signature"),
        ("index beyond the tree", attribution(issuer_key, 6, first.leaf_hash, first.key), 400, "issuance_not_logged"),
        ("index far beyond the tree", attribution(issuer_key, 2**63 - 1, first.leaf_hash, first.key), 400,
         "issuance_not_logged"),
        ("index of a registration", attribution(issuer_key, 0, merkle.leaf_hash(registration_leaf), first.key), 400,
         "not_an_issuance"),
        ("leaf hash of another issuance", attribution(issuer_key, 3, second.leaf_hash, first.key), 400,
         "issuance_leaf_mismatch"),
        ("issuance without secret-mark fields",
         attribution(issuer_key, 4, merkle.leaf_hash(log.entries(4, 5)[0].data), first.key), 400, "no_secret_mark"),
        ("another issuance's key and nonce", attribution(issuer_key, 3, first.leaf_hash, second.key), 400,
         "commitment_mismatch"),
        ("wrong detection key", attribution(issuer_key, 3, first.leaf_hash, first.key, detection_key_bytes=bytes(32)),
         400, "commitment_mismatch"),
        ("wrong nonce", attribution(issuer_key, 3, first.leaf_hash, first.key, nonce=first.key.key), 400,
         "commitment_mismatch"),
        ("malformed", good[:-1], 400, "malformed_entry"),
    ]
    before = log.checkpoint_note()
    for desc, data, status, code in cases:
        with pytest.raises(LogClientError) as err:
            log.append(data)
        assert (err.value.status, err.value.code) == (status, code), (desc, err.value)
        assert "\n" not in err.value.detail and len(err.value.detail) < 300, desc
    # In a batch an attribution is refused as a whole request (they are appended one at a time).
    with pytest.raises(LogClientError) as err:
        log.append_batch([issuance(issuer_key, 50), good])
    assert (err.value.status, err.value.code) == (400, "wrong_entry_type") and "POST /v1/entries" in err.value.detail
    assert log.checkpoint_note() == before and _attributions_stored(log_files) == 0
    assert log.attributions(issuance_index=3) == []
    assert log.append(good).index == 6  # the honest one still goes in


@pytest.mark.parametrize("query, code", [
    ("", "bad_parameter"),
    ("suspect_sha256=" + "00" * 32 + "&issuance_index=3", "bad_parameter"),
    ("suspect_sha256=" + "00" * 31, "bad_parameter"),
    ("suspect_sha256=" + "AB" * 32, "bad_parameter"),
    ("issuance_index=03", "bad_parameter"),
    ("issuance_index=-1", "bad_parameter"),
    ("issuance_index=9223372036854775808", "out_of_range"),
    ("issuance_index=1&issuance_index=2", "bad_parameter"),
    ("device_uuid=x", "unknown_parameter"),
])
def test_lookup_parameters_are_checked(env, query: str, code: str) -> None:
    log = env[0]
    resp = log.session.get(f"{log.url}/v1/attributions?{query}", timeout=10)
    assert resp.status_code == 400 and resp.json()["error"] == code, resp.text


def test_lookup_answers_in_the_documented_shape(env, issuer_key) -> None:
    log, first, *_ = env
    data = attribution(issuer_key, 3, first.leaf_hash, first.key, SUSPECT)
    log.append(data)
    resp = log.session.get(f"{log.url}/v1/attributions", params={"suspect_sha256": hashlib.sha256(SUSPECT).hexdigest()},
                           timeout=10)
    assert resp.status_code == 200
    assert resp.json() == {"attributions": [{
        "index": 6, "leaf_hash": base64.b64encode(merkle.leaf_hash(data)).decode(),
        "leaf": base64.b64encode(data).decode(), "issuer_key_id": E.issuer_key_id(public_bytes(issuer_key)).hex(),
        "issuance_index": 3}], "truncated": False}


def test_a_store_created_before_attributions_gets_their_table(log_files, server_factory, issuer_key) -> None:
    """Stores made before this version have no attributions table: opening one adds it, empty
    (SQLite in its upgrade transaction, PostgreSQL under the sequencer lock), and attributions
    are then appended and found as in a new store."""
    store = open_store(log_files.db)
    store.close()
    run_sql(log_files.db, "DROP TABLE attributions")
    srv = server_factory(log_files)
    log = LogClient(srv.url, operator_token=log_files.token)
    assert _attributions_stored(log_files) == 0
    log.register_issuer(registration(issuer_key))
    first = secret_issuance(issuer_key, 1)
    assert log.append(first.leaf).index == 1
    data = attribution(issuer_key, 1, first.leaf_hash, first.key, SUSPECT)
    assert log.append(data).index == 2
    assert [h.leaf for h in log.attributions(suspect_sha256=hashlib.sha256(SUSPECT).digest())] == [data]
