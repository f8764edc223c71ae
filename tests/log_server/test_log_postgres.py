"""What only the PostgreSQL store has, on a real cluster (`_kit.postgres`): one sequencer at a time
across stores that stand for separate hosts, a writer that loses its session mid-batch publishing
nothing, passwords only from the environment, a server without fsync refused, proof queries that
are index scans, and a pg_dump of a live log that restores to a consistent tree.

Everything both stores share runs on both through the parametrised suite (`store_kind`)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import psycopg
import pytest
from click.testing import CliRunner

from _kit import postgres as kit_pg
from _kit.logs import ORIGIN, TOKEN, init_log, issuance, registration
from _kit.paths import BIN
from emshield.logclient.http import LogClient
from emshield.tlog import merkle
from emshield.tlog.checkpoint import verify_checkpoint
from log_server.admission import RegisteredIssuers, prepare_issuance, prepare_registration
from log_server.cli import main as log_cli
from log_server.keys import read_signer_key
from log_server.sequencer import Sequencer
from log_server.storage import StoreError, open_store
from log_server.storage import postgres as pgstore

TOKEN_ENV = {"EMSHIELD_LOG_OPERATOR_TOKEN": TOKEN}


@pytest.fixture
def pg_log(postgres, tmp_path):
    """A log on a fresh database of the session's cluster, and the cluster."""
    url = postgres.new_database()
    yield init_log(tmp_path, store=url), postgres
    postgres.drop_database(url)


def _sequencer(files) -> Sequencer:
    return Sequencer(open_store(files.db), read_signer_key(files.key_file), ORIGIN)


def _wait(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _lock_waiters(cluster, url: str) -> int:
    dbname = url.split("?", 1)[0].rsplit("/", 1)[1]
    return int(cluster.psql("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                            f" WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = '{dbname}'"))


def test_one_sequencer_at_a_time_across_hosts(pg_log, issuer_key) -> None:
    """Two stores on one database (two hosts): while one holds the write transaction the other's
    waits on the advisory lock inside PostgreSQL, then reads the first one's commit."""
    files, cluster = pg_log
    a, b = _sequencer(files), _sequencer(files)
    a.integrate([[prepare_registration(registration(issuer_key))]])
    issuers = RegisteredIssuers(a.store)
    first = [prepare_issuance(issuance(issuer_key, n), issuers) for n in range(5)]
    second = [prepare_issuance(issuance(issuer_key, n), issuers) for n in range(5, 9)]
    got: dict = {}
    with a.store.write() as tx:
        size = tx.tree_size()
        thread = threading.Thread(target=lambda: got.setdefault("b", b.integrate([second])))
        thread.start()
        _wait(lambda: _lock_waiters(cluster, files.db) == 1, "the second host to wait for the sequencer lock")
        assert "b" not in got  # still waiting: only one sequencer holds the lock
        assert size == 1
    thread.join(timeout=60)
    (b_done,) = got["b"]
    assert [r.index for r in b_done] == [1, 2, 3, 4]
    (a_done,) = a.integrate([first])  # A's compact range is stale: it notices B's commit
    assert [r.index for r in a_done] == [5, 6, 7, 8, 9]
    leaves = [lf.data for lf in a.store.leaves(0, 10)]
    cp = verify_checkpoint(b.store.latest_checkpoint().note, files.verifier)
    assert cp.size == 10 and cp.root_hash == merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])


class _Interrupted:
    """A store whose first write transaction, just before it adds its checkpoint, has its session
    ended by the server (as when a host's connection drops mid-batch) and lets ``meanwhile`` run."""

    def __init__(self, store, cluster, meanwhile) -> None:
        self._store, self._cluster, self._meanwhile = store, cluster, meanwhile
        self.interrupted = False

    def __getattr__(self, name):
        return getattr(self._store, name)

    def write(self):
        outer = self

        class Ctx:
            def __enter__(self):
                self._ctx = outer._store.write()
                tx = self._ctx.__enter__()
                if outer.interrupted:
                    return tx
                outer.interrupted = True
                real = tx.add_checkpoint

                def add_checkpoint(cp, border=None):
                    outer._cluster.psql(f"SELECT pg_terminate_backend({tx._c.info.backend_pid})")
                    outer._meanwhile()  # the other host takes the lock and commits its own batch
                    real(cp, border)

                tx.add_checkpoint = add_checkpoint
                return tx

            def __exit__(self, *exc):
                return self._ctx.__exit__(*exc)

        return Ctx()


def test_a_host_that_loses_the_lock_mid_batch_publishes_nothing(pg_log, issuer_key) -> None:
    files, cluster = pg_log
    b = _sequencer(files)
    b.integrate([[prepare_registration(registration(issuer_key))]])
    issuers = RegisteredIssuers(b.store)
    theirs = [prepare_issuance(issuance(issuer_key, n), issuers) for n in range(100, 103)]
    mine = [prepare_issuance(issuance(issuer_key, n), issuers) for n in range(3)]
    done: dict = {}
    a = Sequencer(_Interrupted(open_store(files.db), cluster, lambda: done.setdefault("b", b.integrate([theirs]))),
                  read_signer_key(files.key_file), ORIGIN)
    with pytest.raises(psycopg.OperationalError):
        a.integrate([mine])  # its leaves, nodes and checkpoint were written, then its session ended
    assert [r.index for r in done["b"][0]] == [1, 2, 3]  # B got the lock while A was "mid-batch"
    store = open_store(files.db)
    leaves = store.leaves(0, 10)
    assert [lf.data for lf in leaves][1:] == [e.data for e in theirs]  # nothing of A's batch is there
    sizes = [verify_checkpoint(store.checkpoint(s).note, files.verifier).size for s in (0, 1, 4)]
    assert sizes == [0, 1, 4] and store.latest_checkpoint().size == 4 and store.checkpoint(2) is None
    assert store.latest_checkpoint().root_hash == merkle.root_from_leaf_hashes([lf.leaf_hash for lf in leaves])
    (again,) = a.integrate([mine])  # A reconnects and goes on from the stored tree
    assert [r.index for r in again] == [4, 5, 6]


def _log_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")} | TOKEN_ENV
    return subprocess.run([str(BIN / "emshield-log"), *args], env=base | env, capture_output=True, text=True, timeout=60)


def test_passwords_come_from_the_environment_never_the_url(postgres, tmp_path) -> None:
    db = postgres.new_database()
    tcp = postgres.tcp_url(db.split("?", 1)[0].rsplit("/", 1)[1])  # TCP needs the password (scram-sha-256)
    with_password = tcp.replace("postgres@", f"postgres:{kit_pg.PASSWORD}@")
    for args in (["init", "--origin", ORIGIN, "--key-file", str(tmp_path / "k")], ["set-token"], ["serve"]):
        out = _log_cli(args[0], "--store", with_password, *args[1:], env={})
        assert out.returncode == 2 and "must not carry a password" in out.stderr, out.stderr
        assert kit_pg.PASSWORD not in out.stderr + out.stdout
    nowhere = {"PGPASSFILE": str(tmp_path / "no-such-file")}
    out = _log_cli("init", "--store", tcp, "--origin", ORIGIN, "--key-file", str(tmp_path / "k1"), env=nowhere)
    assert out.returncode == 4 and "cannot connect" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "k1").exists()
    out = _log_cli("init", "--store", tcp, "--origin", ORIGIN, "--key-file", str(tmp_path / "k2"), "--json",
                   env={"PGPASSWORD": kit_pg.PASSWORD} | nowhere)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["store"] == tcp
    # libpq ignores a password file that others can read, so the connection is refused
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{postgres.port}:*:postgres:{kit_pg.PASSWORD}\n")
    passfile.chmod(0o644)
    out = _log_cli("set-token", "--store", tcp, env={"PGPASSFILE": str(passfile)})
    assert out.returncode == 4 and "cannot connect" in out.stderr, out.stderr
    passfile.chmod(0o600)
    out = _log_cli("set-token", "--store", tcp, env={"PGPASSFILE": str(passfile)})
    assert out.returncode == 0, out.stderr
    postgres.drop_database(db)


def test_a_database_that_is_no_log_store_is_refused_and_left_as_it_is(postgres, tmp_path) -> None:
    db = postgres.new_database()
    name = db.split("?", 1)[0].rsplit("/", 1)[1]
    postgres.psql("CREATE TABLE leaves(x int); INSERT INTO leaves VALUES (7)", name)
    with pytest.raises(StoreError, match="holds no EMShield log store"):
        open_store(db)
    result = CliRunner().invoke(log_cli, ["init", "--store", db, "--origin", ORIGIN, "--key-file",
                                          str(tmp_path / "k")], env=TOKEN_ENV)
    assert result.exit_code == 2 and "already has a table 'leaves'" in result.output, result.output
    assert not (tmp_path / "k").exists()
    assert postgres.psql("SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'", name) == "leaves"
    assert postgres.psql("SELECT x FROM leaves", name) == "7"
    postgres.psql("CREATE TABLE meta(key text, value bytea)", name)
    with pytest.raises(StoreError, match="is not an EMShield log store"):
        open_store(db)
    postgres.drop_database(db)


def test_a_server_without_fsync_is_refused(pg_log) -> None:
    files, cluster = pg_log
    cluster.psql("ALTER SYSTEM SET fsync = off")
    cluster.psql("SELECT pg_reload_conf()")
    try:
        _wait(lambda: cluster.psql("SHOW fsync") == "off", "the reload")
        with pytest.raises(StoreError, match="fsync=off"):
            open_store(files.db)
    finally:
        cluster.psql("ALTER SYSTEM RESET fsync")
        cluster.psql("SELECT pg_reload_conf()")
        _wait(lambda: cluster.psql("SHOW fsync") == "on", "the reload")
    open_store(files.db).close()


def test_proof_and_lookup_queries_are_index_scans(pg_log, issuer_key) -> None:
    """The node read of any proof and the issuance look-ups are index scans, never a scan of a table."""
    files, cluster = pg_log
    seq = _sequencer(files)
    seq.integrate([[prepare_registration(registration(issuer_key))]])
    issuers = RegisteredIssuers(seq.store)
    for start in range(0, 6000, 2000):
        seq.integrate([[prepare_issuance(issuance(issuer_key, n), issuers) for n in range(start, start + 2000)]])
    conn = seq.store._conn()
    conn.execute("ANALYZE")
    size = seq.store.tree_size()
    ids: list = []

    def record(wanted):
        ids.extend(wanted)
        return seq.store.get_nodes(wanted)

    merkle.inclusion_proof(1234, size, record)
    merkle.consistency_proof(777, size, record)
    leaves = [i for lv, i in ids if lv == 0]
    inner = [(lv, i) for lv, i in ids if lv > 0]
    assert inner and leaves
    plans = [conn.execute("EXPLAIN (FORMAT JSON) " + pgstore.NODES_SQL,
                          (leaves, [lv for lv, _ in inner], [i for _, i in inner])).fetchone()[0]]
    for field, column in (("watermark_commitment", "watermark_key"), ("device_uuid", "device_key")):
        plans.append(conn.execute(f"EXPLAIN (FORMAT JSON) SELECT leaf_idx FROM issuances WHERE {column} = %s AND {field} = %s"
                                  " ORDER BY leaf_idx LIMIT 100", (5, b"x" if field != "device_uuid" else "u")).fetchone()[0])

    def scans(node, out):
        out.append((node["Node Type"], node.get("Relation Name")))
        for child in node.get("Plans", []):
            scans(child, out)
        return out

    for plan in plans:
        steps = scans(plan[0]["Plan"], [])
        assert not [s for s in steps if s[0] == "Seq Scan"], steps
        assert any("Index" in s[0] for s in steps), steps


def test_pg_dump_of_a_live_log_restores_to_a_consistent_tree(pg_log, server_factory, issuer_key, tmp_path) -> None:
    """pg_dump while clients append (after 150 acknowledged entries): the dump is one snapshot, so
    the restored store's latest checkpoint covers exactly its leaves, every proof verifies, and the
    live log's later tree extends it. Served again, the restored log appends from where it was."""
    files, cluster = pg_log
    srv = server_factory(files)
    log = LogClient(srv.url, operator_token=files.token)
    log.register_issuer(registration(issuer_key))
    entries = [issuance(issuer_key, n) for n in range(400)]
    acked: list[int] = []
    dumped: dict = {}
    lock = threading.Lock()

    def client(share: list[bytes]) -> None:
        c = LogClient(srv.url, timeout=30)
        for e in share:
            c.append(e)
            with lock:
                acked.append(1)
                take = len(acked) >= 150 and "taker" not in dumped
                if take:
                    dumped["taker"], dumped["acked"] = threading.get_ident(), len(acked)
            if take:  # this client dumps while the other seven keep appending
                dumped["bytes"] = subprocess.run(["pg_dump", "--no-owner", "-d", files.db], capture_output=True,
                                                 timeout=120, check=True).stdout

    threads = [threading.Thread(target=client, args=(entries[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert dumped.get("bytes"), "the dump was never taken"
    assert len(acked) == len(entries) and dumped["acked"] < len(entries)
    final = log.verified_checkpoint(files.verifier)

    restored = cluster.new_database()
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", restored], input=dumped["bytes"],
                   capture_output=True, timeout=120, check=True)
    store = open_store(restored)
    size = store.tree_size()
    cp = verify_checkpoint(store.latest_checkpoint().note, files.verifier)
    assert cp.size == size and 150 <= size < final.size
    hashes = [lf.leaf_hash for lf in store.leaves(0, size)]
    assert hashes == [merkle.leaf_hash(lf.data) for lf in store.leaves(0, size)]
    assert merkle.root_from_leaf_hashes(hashes) == cp.root_hash
    assert merkle.root_from_nodes(size, store.get_nodes) == cp.root_hash  # the stored nodes agree too
    for i in (0, size // 2, size - 1):
        merkle.verify_inclusion(hashes[i], i, size, merkle.inclusion_proof(i, size, store.get_nodes), cp.root_hash)
    log.prove_consistency(cp, final)  # the live log went on from the dumped tree
    store.close()
    srv2 = server_factory(restored, key_file=files.key_file)
    nxt = LogClient(srv2.url).append(issuance(issuer_key, 10_000))
    assert nxt.index == size
    srv2.stop()
    cluster.drop_database(restored)


def test_the_lock_keys_are_domain_separated() -> None:
    assert pgstore.SEQUENCER_LOCK != pgstore._lock_key(b"emshield/log-role/v1/cosigner")
    assert -(1 << 63) <= pgstore.SEQUENCER_LOCK < 1 << 63
