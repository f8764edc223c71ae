"""Many API hosts on one PostgreSQL database: three `emshield-log serve` processes on their own
ports, each with its own sequencer, 32 clients appending through all three, and the host that
holds the sequencer lock killed with SIGKILL (master, worker and sequencer at once) ten times
while the clients go on. After every kill, and at the end: every acknowledged entry is at its
index, every checkpoint any host served is a prefix of the tree (its root is the root of the
leaves before its size), and an entry sent to two hosts at the same moment is stored once.

Kills are triggered by conditions (enough acknowledgements since the last restart, and a host
seen holding the lock in pg_locks), never by the clock."""

from __future__ import annotations

import threading

import pytest

from _kit.logs import ServerProcess, init_log, issuance, registration
from emshield.logclient.http import LogClient, LogClientError
from emshield.tlog import merkle
from emshield.tlog.checkpoint import verify_checkpoint
from log_server.storage import open_store

HOSTS = 3
CLIENTS = 32
KILLS = 10
ACKS_PER_CYCLE = 40
ENTRIES_PER_CLIENT = 2000  # a bound only: the clients stop as soon as the kills are done
WAIT_S = 120.0


class Fleet:
    """The running hosts; each one's store URL carries its name (application_name) so that the
    test can tell from pg_locks which host's sequencer holds the lock."""

    def __init__(self, url: str, key_file) -> None:
        self.url, self.key_file = url, key_file
        self.lock = threading.Lock()
        self.hosts: dict[str, ServerProcess] = {}
        self.generation = 0

    def start(self, name: str) -> None:
        srv = ServerProcess(f"{self.url}&application_name={name}", self.key_file, workers=1, threads=8).start()
        with self.lock:
            self.hosts[name] = srv

    def urls(self) -> list[str]:
        with self.lock:
            return [h.url for h in self.hosts.values()]

    def kill(self, name: str) -> None:
        with self.lock:
            srv = self.hosts.pop(name)
        srv.kill()

    def stop(self) -> None:
        for srv in list(self.hosts.values()):
            srv.stop()


def _append_anywhere(fleet: Fleet, first: int, entry: bytes) -> int:
    """Append through one host after another until one acknowledges (appends are idempotent)."""
    for attempt in range(2000):
        urls = fleet.urls()
        url = urls[(first + attempt) % len(urls)]
        try:
            return LogClient(url, timeout=30).append(entry).index
        except LogClientError as exc:
            if exc.status not in (0, 500, 503):
                raise
    raise AssertionError("no host acknowledged the entry")


def _lock_holder(cluster, dbname: str) -> str | None:
    return cluster.psql("SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                        f" WHERE l.locktype = 'advisory' AND l.granted AND a.datname = '{dbname}'"
                        " AND a.application_name LIKE 'host-%' LIMIT 1") or None


def _check(files, acked: list[tuple[bytes, int]], served: set[bytes]) -> int:
    """Every acknowledged entry at its index; every served checkpoint a prefix of the stored tree."""
    store = open_store(files.db)
    try:
        cp = verify_checkpoint(store.latest_checkpoint().note, files.verifier)
        leaves = store.leaves(0, cp.size)
    finally:
        store.close()
    assert len(leaves) == cp.size
    data = [lf.data for lf in leaves]
    for entry, index in acked:
        assert index < cp.size and data[index] == entry, f"acknowledged entry at {index} lost"
    assert len(set(data)) == len(data), "an entry is stored twice"
    notes = sorted((verify_checkpoint(n, files.verifier) for n in served), key=lambda c: c.size)
    rng = merkle.CompactRange()
    for old in notes:
        assert old.size <= cp.size, "a host served a checkpoint beyond the stored tree"
        while rng.size < old.size:
            rng.append(merkle.leaf_hash(data[rng.size]))
        assert rng.root() == old.root_hash, f"a served checkpoint of size {old.size} is not a prefix of the tree"
    assert merkle.root_from_leaf_hashes([merkle.leaf_hash(d) for d in data]) == cp.root_hash
    return cp.size


def _duplicate_to_two_hosts(fleet: Fleet, files, entry: bytes) -> None:
    """The same entry to two hosts at the same moment: one index for both, one stored leaf."""
    urls = fleet.urls()[:2]
    barrier = threading.Barrier(2)
    got: list = []

    def send(url: str) -> None:
        barrier.wait()
        try:
            got.append(LogClient(url, timeout=30).append(entry))
        except LogClientError as exc:
            got.append(exc)

    threads = [threading.Thread(target=send, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == 2 and not [g for g in got if isinstance(g, Exception)], got
    assert got[0].index == got[1].index and sorted([got[0].created, got[1].created]) == [False, True], got
    store = open_store(files.db)
    try:
        assert store.index_of(merkle.leaf_hash(entry)) == got[0].index
        assert store.leaf(got[0].index).data == entry
    finally:
        store.close()


@pytest.mark.slow
def test_killing_the_lock_holder_loses_nothing(postgres, tmp_path, issuer_key) -> None:
    url = postgres.new_database()
    dbname = url.split("?", 1)[0].rsplit("/", 1)[1]
    files = init_log(tmp_path, store=url)
    fleet = Fleet(url, files.key_file)
    try:
        for h in range(HOSTS):
            fleet.start(f"host-{h}")
        LogClient(fleet.urls()[0], operator_token=files.token).register_issuer(registration(issuer_key))
        acked: list[tuple[bytes, int]] = []
        served: set[bytes] = set()
        state = threading.Condition()
        done = threading.Event()
        errors: list[BaseException] = []

        def client(c: int) -> None:
            try:
                for k in range(ENTRIES_PER_CLIENT):
                    if done.is_set():
                        return
                    entry = issuance(issuer_key, c * ENTRIES_PER_CLIENT + k)
                    index = _append_anywhere(fleet, c, entry)
                    with state:
                        acked.append((entry, index))
                        state.notify_all()
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)

        def watch() -> None:  # every distinct checkpoint any host serves
            while not done.is_set():
                for u in fleet.urls():
                    try:
                        served.add(LogClient(u, timeout=5).checkpoint_note())
                    except LogClientError:
                        pass
                done.wait(0.01)

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
        threads.append(threading.Thread(target=watch, daemon=True))
        for t in threads:
            t.start()
        sizes = []
        for cycle in range(KILLS):
            with state:
                target = len(acked) + ACKS_PER_CYCLE
                assert state.wait_for(lambda: len(acked) >= target or errors, timeout=WAIT_S), \
                    f"clients stalled in cycle {cycle} at {len(acked)} acks: " + " | ".join(
                        h.read_output()[-2000:] for h in fleet.hosts.values())
            assert not errors, errors[0]
            holder = None
            while holder is None:  # the lock is held during every commit: under load, nearly always
                holder = _lock_holder(postgres, dbname)
            fleet.kill(holder)
            fleet.start(holder)
            with state:
                snapshot = list(acked)
            sizes.append(_check(files, snapshot, set(served)))
            _duplicate_to_two_hosts(fleet, files, issuance(issuer_key, 10_000_000 + cycle))
        done.set()
        for t in threads:
            t.join(timeout=WAIT_S)
        assert not errors, errors[0]
        final = _check(files, acked, served)
        assert sizes == sorted(sizes) and final >= sizes[-1] > KILLS * ACKS_PER_CYCLE
        assert len(served) > KILLS  # the watcher saw the tree grow throughout
    finally:
        fleet.stop()
        postgres.drop_database(url)
