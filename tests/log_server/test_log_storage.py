"""Store and sequencer: the tree is RFC 9162's at every batch, proofs cost one indexed query of
O(log n) nodes, refused requests do not disturb their batch, and several sequencers (as in
several gunicorn workers) share one store safely."""

from __future__ import annotations

import math

from _kit.logs import ORIGIN, ed25519_key, issuance, registration
from emshield.tlog import merkle
from emshield.tlog.checkpoint import verify_checkpoint
from log_server.admission import RegisteredIssuers, prepare_issuance, prepare_registration
from log_server.app import create_app
from log_server.errors import Refusal
from log_server.keys import read_signer_key
from log_server.sequencer import Sequencer
from log_server.storage import open_store

TABLES = {"leaves", "nodes", "checkpoints", "issuers", "issuances", "side_records", "meta"}


def _sequencer(log_files) -> Sequencer:
    store = open_store(log_files.db)
    return Sequencer(store, read_signer_key(log_files.key_file), ORIGIN)


def test_every_batch_is_integrated_and_signed(log_files, issuer_key) -> None:
    seq = _sequencer(log_files)
    store = seq.store
    (reg,) = seq.integrate([[prepare_registration(registration(issuer_key))]])
    assert reg[0].index == 0
    leaves = [registration(issuer_key)]
    n = 0
    for batch_size in (1, 2, 3, 7, 16, 1, 33, 64, 5):
        batch = [issuance(issuer_key, n + i) for i in range(batch_size)]
        n += batch_size
        (done,) = seq.integrate([[prepare_issuance(b, RegisteredIssuers(store)) for b in batch]])
        assert [d.index for d in done] == list(range(len(leaves), len(leaves) + batch_size))
        leaves += batch
        cp = verify_checkpoint(store.latest_checkpoint().note, log_files.verifier)
        assert cp.size == len(leaves)
        assert cp.root_hash == merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
    hashes = [merkle.leaf_hash(x) for x in leaves]
    size = len(leaves)
    calls = []

    def counting(ids):
        calls.append(len(ids))
        return store.get_nodes(ids)

    for m in range(1, size + 1):
        root_m = merkle.root_from_leaf_hashes(hashes[:m])
        for i in {0, m // 2, m - 1}:
            calls.clear()
            proof = merkle.inclusion_proof(i, m, counting)
            merkle.verify_inclusion(hashes[i], i, m, proof, root_m)
            assert len(calls) <= 1 and sum(calls) <= 2 * math.ceil(math.log2(m) + 1)
        calls.clear()
        proof = merkle.consistency_proof(m, size, counting)
        merkle.verify_consistency(m, size, proof, root_m, merkle.root_from_leaf_hashes(hashes))
        assert len(calls) <= 1 and sum(calls) <= 2 * math.ceil(math.log2(size) + 1)


def test_a_proof_request_is_a_constant_number_of_indexed_queries(sqlite_log_files, issuer_key) -> None:
    """SQLite's query plans (PostgreSQL's: test_log_postgres.py)."""
    log_files = sqlite_log_files
    seq = _sequencer(log_files)
    seq.integrate([[prepare_registration(registration(issuer_key))]])
    seq.integrate([[prepare_issuance(issuance(issuer_key, n), RegisteredIssuers(seq.store)) for n in range(300)]])
    app = create_app(log_files.app_config())
    store = app.extensions["emshield_log"].store
    conn = store._conn()  # the test client serves requests on this thread
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    client = app.test_client()
    for url in ("/v1/proof/inclusion?index=123&tree_size=301", "/v1/proof/consistency?first=77&second=301",
                f"/v1/proof/inclusion?tree_size=301&leaf_hash={merkle.leaf_hash(issuance(issuer_key, 5)).hex()}"):
        statements.clear()
        assert client.get(url).status_code == 200
        assert 1 <= len(statements) <= 5, statements
        for sql in statements:
            plan = [str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            for step in plan:  # every access to a stored table is a B-tree search, never a scan
                words = step.split()
                if words[0] in ("SCAN", "SEARCH") and words[1] in TABLES:
                    assert words[0] == "SEARCH", (sql, plan)
            assert any(step.startswith("SEARCH") for step in plan), (sql, plan)
    conn.set_trace_callback(None)
    nodes_sql = [s for s in statements if "FROM nodes" in s or "FROM leaves WHERE idx IN" in s]
    assert nodes_sql, statements


def test_a_refused_request_does_not_disturb_its_batch(log_files, issuer_key) -> None:
    seq = _sequencer(log_files)
    stranger = ed25519_key("stranger")
    seq.integrate([[prepare_registration(registration(issuer_key))],
                   [prepare_registration(registration(stranger, "Stranger"))]])
    good1 = [prepare_issuance(issuance(issuer_key, 1), RegisteredIssuers(seq.store))]
    bad = [prepare_issuance(issuance(issuer_key, 2), RegisteredIssuers(seq.store)),
           prepare_registration(registration(stranger, "Renamed"))]  # key already registered
    good2 = [prepare_issuance(issuance(issuer_key, 3), RegisteredIssuers(seq.store))]
    out = seq.integrate([good1, bad, good2])
    assert [r.index for r in out[0]] == [2]
    assert isinstance(out[1], Refusal) and out[1].code == "issuer_exists"
    assert [r.index for r in out[2]] == [3]
    assert seq.store.tree_size() == 4 and seq.store.index_of(bad[0].leaf_hash) is None


def test_two_sequencers_on_one_store_keep_one_tree(log_files, issuer_key) -> None:
    """Two processes' sequencers interleave through the database write lock; each notices the
    other's leaves and rebuilds its compact range from the stored nodes."""
    a, b = _sequencer(log_files), _sequencer(log_files)
    a.integrate([[prepare_registration(registration(issuer_key))]])
    leaves = [registration(issuer_key)]
    for round_ in range(6):
        for seq in (a, b, b, a):
            batch = [issuance(issuer_key, 100 * round_ + len(leaves) + i) for i in range(round_ + 1)]
            seq.integrate([[prepare_issuance(x, RegisteredIssuers(seq.store)) for x in batch]])
            leaves += batch
            cp = verify_checkpoint(seq.store.latest_checkpoint().note, log_files.verifier)
            assert cp.root_hash == merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
    assert [lf.data for lf in a.store.leaves(0, len(leaves))] == leaves


def test_the_writer_thread_acknowledges_after_commit(log_files, issuer_key) -> None:
    seq = _sequencer(log_files)
    seq.submit([prepare_registration(registration(issuer_key))])
    done = seq.submit([prepare_issuance(issuance(issuer_key, 1), RegisteredIssuers(seq.store))])
    # What was acknowledged is visible to a fresh connection (another process would see it too).
    fresh = open_store(log_files.db)
    assert fresh.index_of(done[0].leaf_hash) == 1 and fresh.latest_checkpoint().size == 2
    seq.stop()
    fresh.close()
