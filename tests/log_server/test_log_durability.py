"""Restarts, crashes and concurrent clients against `emshield-log serve` subprocesses.

The tree, the checkpoints and the indexes survive a clean restart byte for byte; after a SIGKILL
in the middle of concurrent appends every acknowledged entry is still at its index and the new
tree extends the old one; concurrent appends leave no gaps and no duplicates.
"""

from __future__ import annotations

import hashlib
import threading

from _kit.logs import ed25519_key, issuance, public_bytes, registration
from emshield.logclient.http import LogClient, LogClientError
from emshield.tlog import merkle
from emshield.tlog.checkpoint import verify_checkpoint
from emshield.tlog.entry import decode_entry, issuer_key_id


def _verified_tree(log: LogClient, verifier) -> tuple:
    """The latest checkpoint and all leaves, checked against each other."""
    cp = log.verified_checkpoint(verifier)
    leaves = [e.data for e in log.iter_entries(0, cp.size)] if cp.size else []
    assert merkle.root_from_leaf_hashes([merkle.leaf_hash(d) for d in leaves]) == cp.root_hash
    return cp, leaves


def _run_clients(url: str, jobs: list[list[bytes]], after_ack=None) -> tuple[list[tuple[bytes, int]], list[Exception]]:
    """Append each job's entries in turn, one client thread per job; ``after_ack(acked)`` runs after
    every acknowledgement (outside the lock), so a test can act on a condition, not on a clock."""
    acked: list[tuple[bytes, int]] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def work(entries: list[bytes]) -> None:
        log = LogClient(url, timeout=30)
        for e in entries:
            try:
                r = log.append(e)
            except LogClientError as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                acked.append((e, r.index))
            if after_ack is not None:
                after_ack(acked)

    threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return acked, errors


def test_state_survives_a_clean_restart(log_files, server_factory, issuer_key) -> None:
    from emshield.marking.fingerprint import Fingerprint

    srv = server_factory(log_files)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    other = ed25519_key("issuer-2")
    log.register_issuer(registration(other, "Other Lab"))
    log.revoke_issuer(issuer_key_id(public_bytes(other)), "test")
    fp = Fingerprint(hashlib.sha256(b"p").digest(), (("l", (7, 8, 9)),))
    log.append_batch([issuance(issuer_key, n) for n in range(20)])
    fp_entry = issuance(issuer_key, 20, policy="both", fingerprint_hash=fp.hash())
    fp_index = log.append(fp_entry).index
    assert log.put_side_record(fp_index, fp.to_cbor())
    cp, leaves = _verified_tree(log, log_files.verifier)
    note = log.checkpoint_note()
    lookups = [log.issuances(device_uuid=decode_entry(leaves[5]).entry.device_uuid_text),
               log.issuances(fingerprint_hash=fp.hash()),
               log.issuances(watermark_commitment=decode_entry(fp_entry).entry.watermark_commitment)]
    issuers = log.issuers()

    srv.stop()
    srv2 = server_factory(log_files)
    log2 = LogClient(srv2.url, operator_token=log_files.token)
    assert log2.checkpoint_note() == note
    assert _verified_tree(log2, log_files.verifier) == (cp, leaves)
    assert [log2.issuances(device_uuid=decode_entry(leaves[5]).entry.device_uuid_text),
            log2.issuances(fingerprint_hash=fp.hash()),
            log2.issuances(watermark_commitment=decode_entry(fp_entry).entry.watermark_commitment)] == lookups
    assert lookups[1][0].index == fp_index and lookups[1][0].has_side_record
    assert log2.issuers() == issuers and [i.revoked for i in issuers] == [False, True]
    assert log2.side_record(fp_index) == fp.to_cbor()
    # The log goes on from where it was: next index, an extension of the old tree, no duplicate.
    assert log2.append(issuance(issuer_key, 3)).created is False
    nxt = log2.append(issuance(issuer_key, 100))
    assert (nxt.index, nxt.created) == (cp.size, True)
    log2.prove_consistency(cp, log2.verified_checkpoint(log_files.verifier))


def _watch_checkpoints(url: str, stop: threading.Event) -> list[bytes]:
    """Every distinct checkpoint note the server serves until it dies or ``stop`` is set."""
    seen: list[bytes] = []
    log = LogClient(url, timeout=5)

    def poll() -> None:
        while not stop.is_set():
            try:
                note = log.checkpoint_note()
            except LogClientError:
                return  # the server is gone
            if not seen or seen[-1] != note:
                seen.append(note)
            stop.wait(0.01)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    return seen  # filled by the thread as it goes


def test_crash_during_concurrent_appends_loses_no_acknowledged_entry(log_files, server_factory, issuer_key) -> None:
    srv = server_factory(log_files)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    entries = [issuance(issuer_key, n) for n in range(1200)]
    before = log.verified_checkpoint(log_files.verifier)

    stop = threading.Event()
    served = _watch_checkpoints(srv.url, stop)  # a reader watching checkpoints throughout
    killed = threading.Event()
    kill_lock = threading.Lock()

    def kill_once_a_third_is_acknowledged(acked: list) -> None:
        # SIGKILL master and workers while 8 clients append: after 400 of 1,200 acknowledgements
        # and 3 served checkpoints, whatever the machine's speed.
        if len(acked) >= len(entries) // 3 and len(served) >= 3:
            with kill_lock:
                if not killed.is_set():
                    srv.kill()
                    killed.set()

    acked, errors = _run_clients(srv.url, [entries[i::8] for i in range(8)], kill_once_a_third_is_acknowledged)
    stop.set()
    assert killed.is_set(), "the kill condition was never met; the test proves nothing"
    assert len(acked) < len(entries) and errors, "the server was not killed during the appends"

    srv2 = server_factory(log_files)
    log2 = LogClient(srv2.url, operator_token=log_files.token)
    cp, leaves = _verified_tree(log2, log_files.verifier)
    for data, index in acked:
        assert leaves[index] == data
    assert len(set(leaves)) == len(leaves)
    log2.prove_consistency(before, cp)
    # Every checkpoint anyone was ever shown before the crash is a prefix of the recovered tree.
    for note in served:
        old = verify_checkpoint(note, log_files.verifier)
        assert old.size <= cp.size
        if old.size:
            log2.prove_consistency(old, cp)
            assert merkle.root_from_leaf_hashes([merkle.leaf_hash(d) for d in leaves[:old.size]]) == old.root_hash
    nxt = log2.append(issuance(issuer_key, 5000))
    assert nxt.index == cp.size


def test_concurrent_appends_leave_no_gaps_or_duplicates(log_files, server_factory, issuer_key) -> None:
    srv = server_factory(log_files, workers=2, threads=8)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    entries = [issuance(issuer_key, n) for n in range(320)]
    # 16 clients; every entry is also sent by a second client at about the same time.
    jobs = [entries[i::8] for i in range(8)] + [list(reversed(entries[i::8])) for i in range(8)]
    acked, errors = _run_clients(srv.url, jobs)
    assert not errors
    assert len(acked) == 2 * len(entries)
    index_of: dict[bytes, int] = {}
    for data, index in acked:
        assert index_of.setdefault(data, index) == index, "one entry got two indices"
    assert sorted(index_of.values()) == list(range(1, len(entries) + 1)), "gaps or duplicates"
    cp, leaves = _verified_tree(log, log_files.verifier)
    assert cp.size == len(entries) + 1
    assert all(leaves[i] == d for d, i in index_of.items())
