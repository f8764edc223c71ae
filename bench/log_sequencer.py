"""The log's commit path in-process: CPU per entry and per commit of `Sequencer.integrate`.

    python bench/log_sequencer.py                          # this tree against HEAD's sequencer/storage
    python bench/log_sequencer.py --baseline-rev da5f686   # against any commit
    python bench/log_sequencer.py --big 2000 --small 1,6,16 --commits 200
    python bench/log_sequencer.py --contend 1                # wall per commit while a thread wants the GIL

The sequencer is the serial part of every append: each worker process runs one writer thread and
the store's write lock lets one of them commit at a time, so its CPU per entry bounds the batch
path and its CPU per commit bounds small group commits (single-entry appends). Measured here
without HTTP, on a real SQLite file (WAL, synchronous=FULL: every COMMIT is fsync'ed), with real
signed issuance entries prepared outside the clock (as the request threads do). Two Sequencers,
each with its own store connection and writer lock, commit in alternation on the same file, as the
sequencers of two gunicorn workers do, so every commit first finds the other's leaves and brings
its compact range up to date (the rebuild path); --no-alternate uses one sequencer, as the
single sequencer process of `emshield-log serve` (log_server/runtime/sequencer_service.py) does.

Figures: CPU µs (thread_time of the committing thread: Python, SQLite and the fsync syscall) per
entry for groups of --big entries, and per commit for groups of --small entries, plus the CPU of
the store's background WAL checkpoint thread where the implementation has one (work taken off the
committing thread is counted beside it: "all CPU"), plus the mean
wall time per commit (which includes waiting for the fsync; with --contend N, also waiting for
the GIL that N busy Python threads keep taking, as a worker's request threads do: the commit path
gives the GIL up at every SQLite step and may wait up to 5 ms to get it back, all the while
holding the write lock). Implementations, each on its own
fresh store filled with the same --prefill entries and then given the same groups:
- baseline: log_server/sequencer.py and storage.py as of --baseline-rev (loaded from git into a
  temporary package; it creates its own store, so schema versions may differ);
- this tree: the working tree's log_server;
- floor: BEGIN IMMEDIATE, a bare executemany of the same leaf and issuance rows into this tree's
  schema and an fsync'ed COMMIT: what storing the rows alone costs (no idempotency look-up, no tree
  nodes, no signed checkpoint, no issuer checks; the WAL copied back inside its commits, SQLite's
  automatic checkpoint every 16 MiB of WAL).
Ratios are baseline / this tree (above 1: this tree is faster). The three take turns commit by
commit (each on its own store, with the same group), so a busy spell of the machine hits all of
them alike; means per commit are reported.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emshield.tlog import entry as E  # noqa: E402
from emshield.tlog import merkle  # noqa: E402
from emshield.tlog.checkpoint import NoteSigner  # noqa: E402

ORIGIN = "bench.emshield.example/sequencer"
ISSUER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"emshield-bench/sequencer-issuer").digest())
LOG_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"emshield-bench/sequencer-log").digest())


# -- entries (signed before any clock starts) ------------------------------------------------------


@dataclass(frozen=True)
class RawEntry:
    data: bytes
    device: str
    watermark: bytes


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign_issuances(count: int) -> list[RawEntry]:
    kid = E.issuer_key_id(_public(ISSUER))
    backbone = hashlib.sha256(b"bench-backbone").digest()
    out = []
    for n in range(count):
        wm = hashlib.sha256(b"seq-bench" + n.to_bytes(8, "big")).digest()
        device = uuid.UUID(bytes=wm[:16])
        entry = E.Issuance(device.bytes, backbone, wm, None, "watermark", 1_700_000_000 + n, kid)
        out.append(RawEntry(E.sign_entry(entry, ISSUER).encode(), str(device), wm))
    return out


def registration() -> bytes:
    return E.sign_entry(E.IssuerRegistration(_public(ISSUER), "sequencer bench", bytes.fromhex("a1617601"),
                                             1_700_000_000), ISSUER).encode()


# -- implementations ---------------------------------------------------------------------------------


@dataclass
class Impl:
    """One version of log_server's sequencer + storage modules."""

    name: str
    seq: ModuleType
    storage: ModuleType

    def prepared(self, raw: list[RawEntry]) -> list:
        """What the request threads hand the sequencer (built outside the clock)."""
        kid = E.issuer_key_id(_public(ISSUER))
        fields = getattr(self.seq.IssuanceFields, "of", self.seq.IssuanceFields)  # trees before the keys moved
        return [self.seq.PreparedEntry(r.data, merkle.leaf_hash(r.data), "issuance",
                                       issuance=fields(kid, r.device, r.watermark, None))
                for r in raw]

    def new_log(self, db: Path, prefill: list[RawEntry]) -> tuple[list, list]:
        """A fresh store with the issuer registered and ``prefill`` appended; two sequencers on it."""
        store = self.storage.SqliteStore.create(db, {"origin": ORIGIN.encode()})
        signer = NoteSigner.from_private_key(ORIGIN, LOG_KEY)
        first = self.seq.Sequencer(store, signer, ORIGIN)
        first.sign_current()
        reg = registration()
        body = E.decode_entry(reg).entry
        fields = self.seq.RegistrationFields(body.key_id, body.issuer_public_key, body.name, body.registered_at)
        _check(first.integrate([[self.seq.PreparedEntry(reg, merkle.leaf_hash(reg), "issuer_registration",
                                                        registration=fields)]]))
        for i in range(0, len(prefill), 5000):
            _check(first.integrate([self.prepared(prefill[i:i + 5000])]))
        store.close()
        stores = [self.storage.SqliteStore(db) for _ in range(2)]
        return stores, [self.seq.Sequencer(s, signer, ORIGIN) for s in stores]


def _check(outcomes: list) -> None:
    for o in outcomes:
        if isinstance(o, BaseException):
            raise o


def load_revision(rev: str, workdir: Path) -> Impl:
    """log_server/sequencer.py and storage.py of ``rev`` (and the modules of theirs they import, where
    that revision has them) as a package of their own."""
    name = "seqbench_baseline"
    pkg = workdir / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for mod in ("sequencer", "storage", "process_thread", "errors"):
        got = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:log_server/{mod}.py"], capture_output=True)
        if got.returncode != 0 and mod in ("sequencer", "storage"):  # the others were added later
            raise SystemExit(f"{rev}: no log_server/{mod}.py ({got.stderr.decode().strip()})")
        if got.returncode == 0:
            (pkg / f"{mod}.py").write_bytes(got.stdout)
    sys.path.insert(0, str(workdir))
    return Impl(f"baseline {rev}", importlib.import_module(f"{name}.sequencer"),
                importlib.import_module(f"{name}.storage"))


def this_tree() -> Impl:
    return Impl("this tree", importlib.import_module("log_server.sequencer"),
                importlib.import_module("log_server.storage"))


# -- measurements ------------------------------------------------------------------------------------


class Timer:
    """CPU (thread_time of the committing thread: Python, SQLite and the fsync syscall) and wall
    time of each commit of one implementation."""

    def __init__(self) -> None:
        self.cpu_us: dict[str, list[float]] = {}
        self.wall_ms: dict[str, list[float]] = {}
        self.background_us: dict[str, float] = {}  # per commit, from checkpoint_cpu_s

    def time(self, key: str, fn) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        outcomes = fn()
        c1, t1 = time.thread_time(), time.perf_counter()
        _check(outcomes)
        self.cpu_us.setdefault(key, []).append(1e6 * (c1 - c0))
        self.wall_ms.setdefault(key, []).append(1e3 * (t1 - t0))

    def cpu(self, key: str) -> float:
        """Mean CPU µs per commit (what throughput depends on: it includes the commits that also
        checkpoint the WAL); CPU time is not inflated by other processes taking the cores."""
        return statistics.mean(self.cpu_us[key])

    def wall(self, key: str) -> float:
        return statistics.mean(self.wall_ms[key])

    def background(self, key: str) -> float:
        return self.background_us.get(key, 0.0)

    def total(self, key: str) -> float:
        return self.cpu(key) + self.background(key)


def checkpoint_cpu_s(db: Path) -> float:
    """CPU seconds so far of the background WAL checkpoint thread(s) of the stores open on ``db``
    in this process (log_server/storage.py names them emshield-checkpoint-<path>; 0 where the
    implementation has none): that work left the committing thread, so it is counted beside it."""
    total = 0
    for t in threading.enumerate():
        if t.name == f"emshield-checkpoint-{db}" and t.native_id is not None:
            try:
                total += int(Path(f"/proc/self/task/{t.native_id}/schedstat").read_text().split()[0])
            except FileNotFoundError:  # ended meanwhile
                pass
    return total / 1e9


class Contention:
    """``threads`` pure-Python busy loops, standing in for a worker's request threads (decoding,
    routing) that want the GIL while the sequencer commits. Every time the committing thread
    gives the GIL up (each SQLite step) it may wait up to the switch interval (5 ms) to get it
    back, all the while holding the store's write lock, so wall time per commit under contention
    shows how often the commit path lets go of the GIL."""

    def __init__(self, threads: int) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._spin, daemon=True) for _ in range(threads)]

    def _spin(self) -> None:
        while not self._stop.is_set():
            sum(range(200))

    def __enter__(self) -> Contention:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


class Floor:
    """The same rows, stored by a bare executemany per table in one fsync'ed transaction per group
    (the issuance rows with the index keys of this tree's schema)."""

    def __init__(self, store, storage: ModuleType) -> None:
        self.conn = store._conn()
        self.size = store.tree_size()
        # Trees before IssuanceFields carried the keys computed them in storage.keyed_issuance.
        self.keyed = getattr(storage, "keyed_issuance", tuple)

    def commit(self, group: list) -> list:
        conn, size, keyed = self.conn, self.size, self.keyed
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO leaves(idx, leaf_hash, data, kind) VALUES (?,?,?,?)",
                         [(size + i, e.leaf_hash, e.data, e.kind) for i, e in enumerate(group)])
        conn.executemany("INSERT INTO issuances(leaf_idx, issuer_key_id, device_uuid, watermark_commitment,"
                         " fingerprint_hash, watermark_key, fingerprint_key, device_key) VALUES (?,?,?,?,?,?,?,?)",
                         [keyed((size + i, *e.issuance)) for i, e in enumerate(group)])
        conn.execute("COMMIT")
        self.size += len(group)
        return []


def split(items: list, size: int, count: int) -> list[list]:
    return [items[i * size:(i + 1) * size] for i in range(count)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-rev", default="HEAD", help="git revision whose sequencer/storage is the baseline")
    ap.add_argument("--prefill", type=int, default=20_000, help="entries in each store before measuring")
    ap.add_argument("--big", type=int, default=2_000, help="entries per group in the per-entry figure")
    ap.add_argument("--big-commits", type=int, default=20, help="commits of --big entries")
    ap.add_argument("--small", default="1,6,16", help="comma-separated group sizes for the per-commit figures")
    ap.add_argument("--commits", type=int, default=200, help="commits per small group size")
    ap.add_argument("--contend", type=int, default=0,
                    help="busy pure-Python threads competing for the GIL while commits are timed (default 0)")
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="sys.setswitchinterval seconds while timing (default: Python's 0.005)")
    ap.add_argument("--no-alternate", action="store_true", help="one sequencer instead of two in alternation")
    ap.add_argument("--workdir", type=Path, default=None, help="where the stores go (default: a temp dir)")
    args = ap.parse_args()
    smalls = [int(x) for x in args.small.split(",") if x]
    if args.contend < 0 or args.big < 1 or args.prefill < 0 or args.commits < 1 or args.big_commits < 1 or any(s < 1 for s in smalls):
        ap.error("sizes must be positive")

    total = args.prefill + args.big * args.big_commits + sum(s * args.commits for s in smalls)
    t0 = time.perf_counter()
    raw = sign_issuances(total)
    print(f"signed {total} issuance entries in {time.perf_counter() - t0:.1f} s (outside the clock)", flush=True)

    with tempfile.TemporaryDirectory(prefix="seqbench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        impls = [load_revision(args.baseline_rev, work), this_tree()]
        prepared = {im.name: im.prepared(raw) for im in impls}
        # The inputs live through the whole run: out of the collector (as serve.py freezes what it
        # loads), else the full collections the commits' garbage triggers walk all of them, which
        # the sequencer process never does (measured: ~9 µs more CPU per entry at 20,000 prefill).
        gc.collect()
        gc.freeze()
        logs, dbs = {}, {}
        for im in impls:
            dbs[im.name] = work / f"{len(logs)}.db"
            stores, seqs = im.new_log(dbs[im.name], raw[:args.prefill])
            logs[im.name] = (stores, seqs[:1] if args.no_alternate else seqs)
        floor_stores, _ = impls[1].new_log(work / "floor.db", raw[:args.prefill])
        floor_store = floor_stores[1]
        floor_stores[0].close()
        floor = Floor(floor_store, impls[1].storage)

        workloads = [("big", args.big, args.big_commits)] + [(f"small{s}", s, args.commits) for s in smalls]
        timer = Timer()
        offset = args.prefill
        # Commit by commit, every implementation in turn: a busy spell of the machine hits all alike.
        if args.switch_interval is not None:
            sys.setswitchinterval(args.switch_interval)
        with Contention(args.contend):
            for key, size, count in workloads:
                bg0 = {n: checkpoint_cpu_s(db) for n, db in dbs.items()}
                for c in range(count):
                    for im in impls:
                        group = prepared[im.name][offset:offset + size]
                        seqs = logs[im.name][1]
                        timer.time(f"{im.name}/{key}", lambda: seqs[c % len(seqs)].integrate([group]))
                    group = prepared["this tree"][offset:offset + size]
                    timer.time(f"floor/{key}", lambda: floor.commit(group))
                    offset += size
                time.sleep(1.0)  # checkpoints the last commits asked for
                for n, db in dbs.items():
                    timer.background_us[f"{n}/{key}"] = 1e6 * (checkpoint_cpu_s(db) - bg0[n]) / count
        for stores, _ in logs.values():
            for s in stores:
                s.close()
        floor_store.close()

    mode = "one sequencer" if args.no_alternate else "two sequencers committing in alternation"
    if args.contend:
        mode += f", {args.contend} busy Python thread(s) competing for the GIL"
    mode += f", GIL switch interval {sys.getswitchinterval() * 1e3:g} ms"
    print(f"\nSequencer.integrate on SQLite (WAL, synchronous=FULL), {mode}; prefill {args.prefill} entries;"
          " mean of every commit")
    names = [im.name for im in impls] + ["floor"]
    base, mine = impls[0].name, impls[1].name
    print("CPU: the committing thread's, + that of the store's background checkpoint thread where it has one")
    for key, size, _ in workloads:
        per = size if key == "big" else 1
        unit = "entry" if key == "big" else "commit"
        cells = "  ".join(f"{n}: {timer.cpu(f'{n}/{key}') / per:6.1f} + {timer.background(f'{n}/{key}') / per:4.1f}"
                          f" (wall {timer.wall(f'{n}/{key}'):6.2f} ms)" for n in names)
        ratio = timer.cpu(f"{base}/{key}") / timer.cpu(f"{mine}/{key}")
        total = timer.total(f"{base}/{key}") / timer.total(f"{mine}/{key}")
        wall_ratio = timer.wall(f"{base}/{key}") / timer.wall(f"{mine}/{key}")
        print(f"groups of {size:5d}: CPU µs per {unit:6s}  {cells}  baseline/this tree = {ratio:.2f}x committing CPU,"
              f" {total:.2f}x all CPU, {wall_ratio:.2f}x wall")
    ceiling = {n: 1e6 * args.big / timer.cpu(f"{n}/big") for n in names}
    print(f"\nserial ceiling of the batch path (1 / CPU per entry): baseline {ceiling[base]:,.0f} entries/s,"
          f" this tree {ceiling[mine]:,.0f} entries/s, floor {ceiling['floor']:,.0f} entries/s"
          " [target of the whole path: >= 20,000 entries/s]")


if __name__ == "__main__":
    main()
