"""Sequencers in separate OS processes (as in several workers or API hosts) appending to one store
at the same time, some of them the same entries: one gap-free tree without duplicates, every
answer matching the store, and every commit's checkpoint signed over RFC 9162's root of exactly
the leaves before it, with the compact-range border its row carries."""

from __future__ import annotations

import multiprocessing as mp
import threading

from _kit.logs import ORIGIN, issuance, registration
from emshield.tlog import merkle
from emshield.tlog.checkpoint import verify_checkpoint
from log_server.admission import RegisteredIssuers, prepare_issuance, prepare_registration
from log_server.keys import read_signer_key
from log_server.sequencer import Sequencer
from log_server.storage import open_store

PROCESSES = 2
THREADS = 4


def _worker(db, key_file, origin, singles, batch, answers) -> None:
    """One "worker process": request threads submitting singles, and one batch, to its sequencer."""
    store = open_store(db)
    seq = Sequencer(store, read_signer_key(key_file), origin)
    got: list[tuple[bytes, int, bool]] = []
    lock = threading.Lock()

    def submit(entries, one_by_one: bool) -> None:
        for part in ([e] for e in entries) if one_by_one else [entries]:
            done = seq.submit(part)
            with lock:
                got.extend((d.leaf_hash, d.index, d.created) for d in done)

    threads = [threading.Thread(target=submit, args=(singles[t::THREADS], True)) for t in range(THREADS)]
    threads.append(threading.Thread(target=submit, args=(batch, False)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seq.stop()
    store.close()
    answers.put(got)


def test_sequencers_in_several_processes_build_one_tree(log_files, issuer_key) -> None:
    store = open_store(log_files.db)
    seq = Sequencer(store, read_signer_key(log_files.key_file), ORIGIN)
    seq.integrate([[prepare_registration(registration(issuer_key))]])
    issuers = RegisteredIssuers(store)
    entries = [prepare_issuance(issuance(issuer_key, n), issuers) for n in range(200)]
    shared = entries[:20]  # submitted by every process: appended once, answered alike
    store.close()  # a forked child must not inherit open connections (SQLite's POSIX locks are per process)
    ctx = mp.get_context("fork")
    answers = ctx.Queue()
    procs = []
    for p in range(PROCESSES):
        own = entries[20 + p * 90:20 + (p + 1) * 90]
        procs.append(ctx.Process(target=_worker, args=(log_files.db, log_files.key_file, ORIGIN,
                                                       shared + own[:60], own[60:] + shared[::-1], answers)))
    for proc in procs:
        proc.start()
    got = [answers.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0

    store = open_store(log_files.db)
    size = store.tree_size()
    assert size == 1 + len(entries)
    leaves = store.leaves(0, size)
    assert [lf.index for lf in leaves] == list(range(size))
    hashes = [lf.leaf_hash for lf in leaves]
    assert sorted(hashes[1:]) == sorted(e.leaf_hash for e in entries)  # each entry exactly once
    position = {h: i for i, h in enumerate(hashes)}
    for answered in got:
        assert all(position[h] == i for h, i, _ in answered)
    assert {h for answered in got for h, _, _ in answered} >= {e.leaf_hash for e in shared}
    assert sum(created for answered in got for _, _, created in answered) == len(entries)
    # the processes really took turns: neither appended its leaves as one block
    added = [sorted(i for _, i, created in answered if created) for answered in got]
    assert all(len(a) < a[-1] - a[0] + 1 for a in added), added

    rows = store._conn().execute("SELECT size, root, note, border FROM checkpoints ORDER BY size").fetchall()
    assert len(rows) > 10  # many group commits, the processes taking turns
    rng = merkle.CompactRange()
    for s, root, note, border in rows:
        while rng.size < s:
            rng.append(hashes[rng.size])
        cp = verify_checkpoint(note, log_files.verifier)
        assert (cp.size, cp.root_hash, root) == (s, rng.root(), rng.root())
        assert border == b"".join(h for _, h in rng.border_nodes())
    store.close()
