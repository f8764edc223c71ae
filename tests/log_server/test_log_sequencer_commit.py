"""The sequencer's commit path on real SQLite files: multi-row inserts of any size, the idempotency
look-up, per-unit all-or-nothing acceptance, and sequencers of several "processes" (each with its
own store connection and writer lock) taking turns on one file while keeping one RFC 9162 tree."""

from __future__ import annotations

import hashlib
import random
import sqlite3

import pytest

from emshield.tlog import merkle
from emshield.tlog.checkpoint import verify_checkpoint
from emshield.tlog.entry import issuer_key_id
from log_server import storage
from log_server.entries import IssuerKeys, prepare_issuance, prepare_registration
from log_server.keys import read_signer_key
from log_server.sequencer import AppendRejected, Appended, Sequencer
from log_server.storage import DuplicateLeaf, LeafRecord, SqliteStore


def _sequencer(log_files, kit) -> Sequencer:
    return Sequencer(SqliteStore(log_files.db), read_signer_key(log_files.key_file), kit.ORIGIN)


def _leaf_rows(start: int, count: int) -> list[tuple[int, bytes, bytes, str]]:
    rows = []
    for i in range(start, start + count):
        data = b"emshield multi-row test leaf %d" % i
        rows.append((i, merkle.leaf_hash(data), data, "test"))
    return rows


def test_inserts_of_any_size_store_every_row_in_order(tmp_path) -> None:
    """Row counts that need one statement, several power-of-two statements, and more than the
    per-statement maximum; plain tuples and LeafRecords alike."""
    store = SqliteStore.create(tmp_path / "rows.db", {"origin": b"rows"})
    start = 0
    for count in (1, 3, 2048, 5000, 37):
        rows = _leaf_rows(start, count)
        with store.write() as tx:
            tx.add_leaves(rows if count != 37 else [LeafRecord(*r) for r in rows])
        start += count
    stored = store.leaves(0, start + 10)
    assert [(lf.index, lf.leaf_hash, lf.data, lf.kind) for lf in stored] == _leaf_rows(0, start)
    with pytest.raises(ValueError, match="4 values"), store.write() as tx:
        tx.add_leaves([(start, bytes(32), b"x")])
    assert store.tree_size() == start  # the failed transaction was rolled back
    store.close()


@pytest.mark.parametrize("count", [5, 70])  # one statement; several under a savepoint
def test_a_stored_leaf_hash_makes_add_leaves_add_nothing(tmp_path, count: int) -> None:
    store = SqliteStore.create(tmp_path / "dup.db", {"origin": b"dup"})
    with store.write() as tx:
        tx.add_leaves(_leaf_rows(0, 100))
    stored = _leaf_rows(0, 100)[40]
    with store.write() as tx:
        rows = _leaf_rows(100, count)
        rows[-2] = (rows[-2][0], stored[1], stored[2], "again")
        with pytest.raises(DuplicateLeaf):
            tx.add_leaves(rows)
        assert tx.tree_size() == 100  # none of the rows before the repeat stayed
        tx.add_leaves(_leaf_rows(100, count))  # the transaction goes on
    assert store.tree_size() == 100 + count
    # any other constraint failure is not a repeat: it propagates as it is
    with pytest.raises(sqlite3.IntegrityError, match="leaves.idx") as caught, store.write() as tx:
        tx.add_leaves([(99, hashlib.sha256(b"fresh").digest(), b"fresh", "x")] * (count // 5))
    assert not isinstance(caught.value, DuplicateLeaf)
    store.close()


def test_indices_of_finds_stored_hashes_among_absent_ones(tmp_path) -> None:
    store = SqliteStore.create(tmp_path / "idx.db", {"origin": b"idx"})
    rows = _leaf_rows(0, 3000)
    with store.write() as tx:
        tx.add_leaves(rows)
    rng = random.Random(7)
    absent = [hashlib.sha256(b"absent %d" % i).digest() for i in range(2500)]
    for wanted in (1, 5, 2049, 5000):  # below, at and above one statement's worth, odd sizes
        present = rng.sample(rows, min(wanted, len(rows)) // 2 or 1)
        query = [r[1] for r in present] + absent[:wanted - len(present)]
        rng.shuffle(query)
        with store.write() as tx:
            found = tx.indices_of(query + query[:3])  # repeats are answered once
        assert found == {r[1]: r[0] for r in present}
    store.close()


def test_store_connections_keep_durable_settings(tmp_path) -> None:
    store = SqliteStore.create(tmp_path / "p.db", {"origin": b"p"})
    conn = store._conn()
    pragma = {name: conn.execute(f"PRAGMA {name}").fetchone()[0]
              for name in ("journal_mode", "synchronous", "foreign_keys", "temp_store", "wal_autocheckpoint")}
    # synchronous=2 is FULL: the WAL is fsync'ed at every COMMIT; temp_store=2 keeps statement journals in memory
    assert pragma == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "temp_store": 2,
                      "wal_autocheckpoint": storage.WAL_CHECKPOINT_PAGES}
    default = sqlite3.connect(":memory:").execute("PRAGMA cache_size").fetchone()[0]
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == default != -storage.WRITER_CACHE_KIB  # readers
    with store.write():
        pass
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == -storage.WRITER_CACHE_KIB
    store.close()


def test_sequencers_taking_turns_keep_one_tree(log_files, issuer_key, kit) -> None:
    """Three sequencers (as in three worker processes) commit groups of random sizes in random
    order; each finds the others' leaves and extends the same tree. Every checkpoint verifies and
    matches RFC 9162's root of all leaves so far, across power-of-two sizes."""
    seqs = [_sequencer(log_files, kit) for _ in range(3)]
    (reg,) = seqs[0].integrate([[prepare_registration(kit.registration(issuer_key))]])
    leaves = [kit.registration(issuer_key)]
    rng = random.Random(11)
    n = 0
    for _ in range(40):
        seq = rng.choice(seqs)
        batch = [kit.issuance(issuer_key, n + i) for i in range(rng.choice((1, 1, 2, 3, 5, 8, 17)))]
        n += len(batch)
        (done,) = seq.integrate([[prepare_issuance(b, IssuerKeys(seq.store)) for b in batch]])
        assert [d.index for d in done] == list(range(len(leaves), len(leaves) + len(batch)))
        leaves += batch
        cp = verify_checkpoint(seq.store.latest_checkpoint().note, log_files.verifier)
        assert (cp.size, cp.root_hash) == (len(leaves), merkle.root_from_leaf_hashes([merkle.leaf_hash(x)
                                                                                      for x in leaves]))
    # the stored nodes are exactly the perfect nodes of the tree: any proof verifies
    store = seqs[0].store
    root = merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
    for i in (0, len(leaves) // 3, len(leaves) - 1):
        proof = merkle.inclusion_proof(i, len(leaves), store.get_nodes)
        merkle.verify_inclusion(merkle.leaf_hash(leaves[i]), i, len(leaves), proof, root)
    for s in seqs:
        s.store.close()


def test_resubmission_in_a_mixed_unit_keeps_indices_dense(log_files, issuer_key, kit) -> None:
    seq = _sequencer(log_files, kit)
    seq.integrate([[prepare_registration(kit.registration(issuer_key))]])
    first = [prepare_issuance(kit.issuance(issuer_key, n), IssuerKeys(seq.store)) for n in range(3)]
    (done,) = seq.integrate([first])
    again = [first[1], prepare_issuance(kit.issuance(issuer_key, 10), IssuerKeys(seq.store)), first[1], first[0]]
    later = [prepare_issuance(kit.issuance(issuer_key, 11), IssuerKeys(seq.store))]
    out = seq.integrate([again, later])
    assert out[0] == [Appended(2, first[1].leaf_hash, False), Appended(4, again[1].leaf_hash, True),
                      Appended(2, first[1].leaf_hash, False), Appended(1, first[0].leaf_hash, False)]
    assert out[1] == [Appended(5, later[0].leaf_hash, True)]
    assert seq.store.tree_size() == 6 and seq.store.latest_checkpoint().size == 6
    seq.store.close()


def test_a_revoked_issuers_logged_entry_still_answers_its_index(log_files, issuer_key, kit) -> None:
    """Revocation is re-checked at commit for new entries; an entry logged before the revocation
    is re-submitted idempotently (it is already in the tree)."""
    seq = _sequencer(log_files, kit)
    seq.integrate([[prepare_registration(kit.registration(issuer_key))]])
    logged = prepare_issuance(kit.issuance(issuer_key, 1), IssuerKeys(seq.store))
    fresh = prepare_issuance(kit.issuance(issuer_key, 2), IssuerKeys(seq.store))
    seq.integrate([[logged]])
    with seq.store.write() as tx:
        tx.revoke_issuer(issuer_key_id(kit.public_bytes(issuer_key)), 1_700_000_500.0, "test")
    out = seq.integrate([[logged], [fresh]])
    assert out[0] == [Appended(1, logged.leaf_hash, False)]
    assert isinstance(out[1], AppendRejected) and out[1].code == "revoked_issuer"
    assert seq.store.tree_size() == 2
    seq.store.close()


def test_two_registrations_of_one_key_in_one_request_are_refused(log_files, issuer_key, kit) -> None:
    seq = _sequencer(log_files, kit)
    a = prepare_registration(kit.registration(issuer_key, "Name A"))
    b = prepare_registration(kit.registration(issuer_key, "Name B"))
    out = seq.integrate([[a, b]])
    assert isinstance(out[0], AppendRejected) and out[0].code == "issuer_exists"
    assert seq.store.tree_size() == 0 and seq.store.issuer(a.registration.key_id) is None
    (same,) = seq.integrate([[a, a]])  # the identical entry twice is one leaf
    assert same == [Appended(0, a.leaf_hash, True), Appended(0, a.leaf_hash, False)]
    assert seq.store.issuer(a.registration.key_id).leaf_index == 0
    again, other = seq.integrate([[a], [b]])  # later: the same entry is idempotent, another one refused
    assert again == [Appended(0, a.leaf_hash, False)]
    assert isinstance(other, AppendRejected) and other.code == "issuer_exists"
    assert seq.store.tree_size() == 1 and seq.store.latest_checkpoint().size == 1
    seq.store.close()


def test_a_failed_commit_leaves_nothing_and_the_next_one_rebuilds(log_files, issuer_key, kit) -> None:
    """A storage error inside the transaction (here a NOT NULL column, after the leaves were
    inserted) rolls everything back: no leaf, node or checkpoint. The sequencer's next commit
    starts from the store, not from its half-extended compact range."""
    seq = _sequencer(log_files, kit)
    seq.integrate([[prepare_registration(kit.registration(issuer_key))]])
    good = [prepare_issuance(kit.issuance(issuer_key, n), IssuerKeys(seq.store)) for n in range(4)]
    seq.integrate([good[:1]])
    broken = good[2]._replace(issuance=good[2].issuance._replace(device_uuid=None))
    with pytest.raises(sqlite3.IntegrityError, match="device_uuid"):
        seq.integrate([[good[1], broken]])
    assert seq.store.tree_size() == 2 and seq.store.latest_checkpoint().size == 2
    assert seq.store.get_nodes([(1, 0)]) == {(1, 0): merkle.node_hash(*(merkle.leaf_hash(lf.data)
                                                                       for lf in seq.store.leaves(0, 2)))}
    (done,) = seq.integrate([good[1:]])
    assert [d.index for d in done] == [2, 3, 4]
    cp = verify_checkpoint(seq.store.latest_checkpoint().note, log_files.verifier)
    leaves = [lf.data for lf in seq.store.leaves(0, 5)]
    assert cp.root_hash == merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
    seq.store.close()


def _traced(seq: Sequencer, units) -> tuple[list, list[str]]:
    """Integrate ``units``; the outcomes and every SQL statement it ran."""
    conn = seq.store._conn()  # integrate runs in this thread, on this thread's connection
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        out = seq.integrate(units)
    finally:
        conn.set_trace_callback(None)
    return out, statements


def _node_reads(seq: Sequencer, units) -> tuple[list, list[str]]:
    """Integrate ``units``; the outcomes and the node-table reads it made."""
    out, statements = _traced(seq, units)
    return out, [s for s in statements if "FROM nodes" in s or "FROM leaves WHERE idx IN" in s]


def _assert_tree(seq: Sequencer, log_files) -> None:
    size = seq.store.tree_size()
    cp = verify_checkpoint(seq.store.latest_checkpoint().note, log_files.verifier)
    leaves = [merkle.leaf_hash(lf.data) for lf in seq.store.leaves(0, size)]
    assert (cp.size, cp.root_hash) == (size, merkle.root_from_leaf_hashes(leaves))


@pytest.mark.parametrize("damage", ["none", "wrong bytes", "wrong length", "missing"])
def test_the_range_comes_from_the_checkpoint_row_unless_it_is_unusable(log_files, issuer_key, kit, damage) -> None:
    """Another process's commit is picked up from the border in its checkpoint row without
    reading nodes; a border that does not fold to the signed root, has the wrong length or is
    missing (rows from before borders were kept) is not used: the nodes are read instead."""
    a, b = _sequencer(log_files, kit), _sequencer(log_files, kit)
    a.integrate([[prepare_registration(kit.registration(issuer_key))]])
    b.integrate([[prepare_issuance(kit.issuance(issuer_key, 1), IssuerKeys(b.store))]])
    a.integrate([[prepare_issuance(kit.issuance(issuer_key, n), IssuerKeys(a.store)) for n in range(2, 7)]])
    border = {"none": None, "wrong bytes": bytes(32 * 2), "wrong length": b"\x00", "missing": "NULL"}[damage]
    if border is not None:
        other = sqlite3.connect(log_files.db, isolation_level=None)
        other.execute("UPDATE checkpoints SET border = ? WHERE size = 7", (None if border == "NULL" else border,))
        other.close()
    out, reads = _node_reads(b, [[prepare_issuance(kit.issuance(issuer_key, 7), IssuerKeys(b.store))]])
    assert out[0][0].index == 7
    assert bool(reads) == (damage != "none"), reads
    _assert_tree(b, log_files)
    # and the next process finds a good border again
    _, reads = _node_reads(a, [[prepare_issuance(kit.issuance(issuer_key, 8), IssuerKeys(a.store))]])
    assert reads == []
    _assert_tree(a, log_files)
    a.store.close()
    b.store.close()


def test_a_store_from_before_checkpoint_borders_gets_the_column(log_files, issuer_key, kit) -> None:
    seq = _sequencer(log_files, kit)
    seq.integrate([[prepare_registration(kit.registration(issuer_key))]])
    seq.store.close()
    old = sqlite3.connect(log_files.db, isolation_level=None)
    old.execute("ALTER TABLE checkpoints DROP COLUMN border")  # the schema as first shipped
    old.close()
    seq = _sequencer(log_files, kit)
    columns = [r[1] for r in seq.store._conn().execute("PRAGMA table_info(checkpoints)")]
    assert columns == ["size", "root", "note", "created_at", "border"]
    out, reads = _node_reads(seq, [[prepare_issuance(kit.issuance(issuer_key, 1), IssuerKeys(seq.store))]])
    assert out[0][0].index == 1 and reads  # the old row has no border: read from the nodes
    _assert_tree(seq, log_files)
    seq.store.close()


def _issuer_reads(seq: Sequencer, units) -> tuple[list, int]:
    out, statements = _traced(seq, units)
    return out, sum("FROM issuers" in s for s in statements)


def test_issuer_records_are_kept_until_a_revocation_anywhere(log_files, issuer_key, kit) -> None:
    """The commit re-checks revocation: a record read earlier is reused only while no issuer was
    revoked since, by any process (here another store connection and writer lock)."""
    seq = _sequencer(log_files, kit)
    other = SqliteStore(log_files.db)
    seq.integrate([[prepare_registration(kit.registration(issuer_key))]])
    kid = issuer_key_id(kit.public_bytes(issuer_key))
    entries = [prepare_issuance(kit.issuance(issuer_key, n), IssuerKeys(seq.store)) for n in range(5)]
    assert _issuer_reads(seq, [[entries[0]]])[1] == 1
    assert _issuer_reads(seq, [[entries[1]]])[1] == 0  # kept
    with other.write() as tx:  # revoking an unknown key changes nothing
        tx.revoke_issuer(bytes(32), 1_700_000_100.0, "no such issuer")
    assert _issuer_reads(seq, [[entries[2]]])[1] == 0
    with other.write() as tx:
        tx.revoke_issuer(kid, 1_700_000_200.0, "compromised")
    out, reads = _issuer_reads(seq, [[entries[3]]])
    assert reads == 1 and isinstance(out[0], AppendRejected) and out[0].code == "revoked_issuer"
    assert seq.store.tree_size() == 4
    other.close()
    seq.store.close()


def test_an_unknown_issuer_is_looked_up_again_at_the_next_commit(log_files, issuer_key, kit) -> None:
    a, b = _sequencer(log_files, kit), _sequencer(log_files, kit)
    stranger = kit.ed25519_key("registered later")
    a.integrate([[prepare_registration(kit.registration(issuer_key))]])
    entry = prepare_issuance(kit.issuance(issuer_key, 1), IssuerKeys(a.store))
    stranger_id = issuer_key_id(kit.public_bytes(stranger))
    early = entry._replace(issuance=entry.issuance._replace(issuer_key_id=stranger_id))
    out = a.integrate([[early]])
    assert isinstance(out[0], AppendRejected) and out[0].code == "unknown_issuer"
    b.integrate([[prepare_registration(kit.registration(stranger, "Stranger"))]])  # another process registers it
    (done,) = a.integrate([[early]])
    assert done[0].index == 2 and done[0].created
    a.store.close()
    b.store.close()
