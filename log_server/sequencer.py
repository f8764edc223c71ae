"""The sequencer: the one writer that makes appends durable and integrates them into the tree.

Request threads hand verified entries to `Sequencer.submit`, which blocks. A single writer
thread per process takes the write lock, then drains everything queued by then (group commit:
what arrived while it waited for another process's commit joins this one) and, in ONE database
transaction, assigns the next leaf indices, writes the leaves and their indexes, extends the
Merkle tree (the perfect nodes the compact range completes) and signs one checkpoint for the
batch. Only after COMMIT returned (fsync'ed) are the waiting requests answered, so an
acknowledged entry is both durable and already covered by a signed checkpoint: integration
latency after the acknowledgement is zero by construction.

Why this is crash safe: leaves, nodes and the checkpoint commit together or not at all, and a
restarted (or another) process rebuilds its compact range from the stored nodes (O(log n) reads)
whenever the stored tree size differs from what it holds in memory. Several processes may run
sequencers against one store: the database write lock (BEGIN IMMEDIATE) makes whichever holds
it the only sequencer for that transaction, and the size check above keeps each one's range
current. The tree never changes a past leaf: leaves are only INSERTed at the next index.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from emshield.tlog.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from emshield.tlog.merkle import CompactRange

from .storage import IssuanceIndex, IssuerRecord, LeafRecord, LogStore, StoredCheckpoint

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 20_000
SUBMIT_TIMEOUT_S = 60.0


class AppendRejected(Exception):
    """An entry the log refuses at commit time (its issuer is unknown, revoked, or taken)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class IssuanceFields:
    issuer_key_id: bytes
    device_uuid: str
    watermark_commitment: bytes | None
    fingerprint_hash: bytes | None


@dataclass(frozen=True)
class RegistrationFields:
    key_id: bytes
    public_key: bytes
    name: str
    registered_at: int


@dataclass(frozen=True)
class PreparedEntry:
    """An entry whose encoding and signature the request thread has already checked."""

    data: bytes
    leaf_hash: bytes
    kind: str
    issuance: IssuanceFields | None = None
    registration: RegistrationFields | None = None


@dataclass(frozen=True)
class Appended:
    index: int
    leaf_hash: bytes
    created: bool


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class _Unit:
    """One request's entries and its answer. ``done`` is released by the writer once ``outcome`` is
    set: a bare lock, because the writer thread is the serial part of every append and a
    concurrent.futures.Future costs it ~50 us per answer (Condition, notify_all) against ~1 us."""

    entries: Sequence[PreparedEntry]
    outcome: list[Appended] | BaseException | None = None
    done: threading.Lock = field(default_factory=_held_lock)

    def answer(self, outcome: list[Appended] | BaseException) -> None:
        self.outcome = outcome
        self.done.release()


_STOP = object()


class Sequencer:
    """Group-committing writer; `submit` is thread safe and returns once the entries are durable."""

    def __init__(self, store: LogStore, signer: NoteSigner, origin: str, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.store = store
        self.signer = signer
        self.origin = origin
        self.max_batch = max_batch
        self._range: CompactRange | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # C-implemented: cheap put/get
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._start_lock = threading.Lock()

    # -- request side -------------------------------------------------------------------------

    def submit(self, entries: Sequence[PreparedEntry], timeout: float = SUBMIT_TIMEOUT_S) -> list[Appended]:
        """Make `entries` durable (all or none); raises AppendRejected for a refused request."""
        self._ensure_started()
        unit = _Unit(entries)
        self._queue.put(unit)
        if not unit.done.acquire(timeout=timeout):
            # Not answered in time: the entries may still be committed later (a retry is safe:
            # appends are idempotent), but this request gives up waiting.
            raise TimeoutError(f"the sequencer did not answer within {timeout} s")
        if isinstance(unit.outcome, BaseException):
            raise unit.outcome
        return unit.outcome

    def _ensure_started(self) -> None:
        # Started lazily and per process: a thread does not survive gunicorn's fork.
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._queue = queue.SimpleQueue()
                self._range = None
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="emshield-sequencer", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
        self._thread = None

    # -- writer side --------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            group = [first]

            def collect() -> list[Sequence[PreparedEntry]]:
                # Called once the write lock is held: everything that arrived while this writer
                # waited for the lock (another worker's commit and fsync) joins this commit.
                nonlocal stopping
                count = len(first.entries)
                while count < self.max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stopping = True
                        break
                    group.append(nxt)
                    count += len(nxt.entries)
                return [u.entries for u in group]

            try:
                outcomes = self._integrate(collect)
            except Exception as exc:  # storage failure: nobody is acknowledged
                log.exception("sequencer batch failed")
                for u in group:
                    u.answer(exc)
                continue
            for u, outcome in zip(group, outcomes):
                u.answer(outcome)

    def integrate(self, units: Sequence[Sequence[PreparedEntry]]) -> list[list[Appended] | AppendRejected]:
        """One transaction: sequence every acceptable unit, extend the tree, sign one checkpoint.

        Each unit (one request) is accepted or rejected as a whole. Also used directly (without
        the writer thread) to bulk-fill a store for benchmarks.
        """
        return self._integrate(lambda: units)

    def _integrate(self, collect) -> list[list[Appended] | AppendRejected]:
        """`integrate` for the units ``collect()`` returns, called inside the write transaction."""
        try:
            with self.store.write() as tx:
                units = collect()
                size = tx.tree_size()
                if self._range is None or self._range.size != size:
                    self._range = CompactRange.from_nodes(size, tx.get_nodes)
                existing = tx.indices_of([e.leaf_hash for unit in units for e in unit])
                new_leaves: list[LeafRecord] = []
                new_issuances: list[IssuanceIndex] = []
                new_issuers: dict[bytes, IssuerRecord] = {}
                issuers: dict[bytes, IssuerRecord | None] = {}
                outcomes: list[list[Appended] | AppendRejected] = []
                for unit in units:
                    try:
                        outcomes.append(self._sequence_unit(unit, tx, size, existing, new_leaves, new_issuances,
                                                            new_issuers, issuers))
                    except AppendRejected as rej:
                        outcomes.append(rej)
                if new_leaves:
                    tx.add_leaves(new_leaves)
                    for issuer in new_issuers.values():
                        tx.add_issuer(issuer)
                    tx.add_issuances(new_issuances)
                    nodes = []
                    for leaf in new_leaves:
                        nodes.extend(self._range.append(leaf.leaf_hash))
                    tx.add_nodes(nodes)
                    self._add_checkpoint(tx)
            return outcomes
        except BaseException:
            self._range = None  # rebuilt from the store on the next batch
            raise

    def _add_checkpoint(self, tx) -> None:
        cp = Checkpoint(self.origin, self._range.size, self._range.root())
        tx.add_checkpoint(StoredCheckpoint(cp.size, cp.root_hash, sign_checkpoint(cp, self.signer), time.time()))

    def sign_current(self) -> None:
        """Sign a checkpoint of the stored tree if its size has none yet (the empty tree at init)."""
        with self.store.write() as tx:
            self._range = CompactRange.from_nodes(tx.tree_size(), tx.get_nodes)
            latest = tx.latest_checkpoint()
            if latest is None or latest.size != self._range.size:
                self._add_checkpoint(tx)

    @staticmethod
    def _sequence_unit(unit, tx, size, existing, new_leaves, new_issuances, new_issuers, issuers) -> list[Appended]:
        """Check one request's entries against the store; only then give its new ones indices."""

        def issuer_of(key_id: bytes) -> IssuerRecord | None:
            if key_id in new_issuers:
                return new_issuers[key_id]
            if key_id not in issuers:
                issuers[key_id] = tx.issuer(key_id)
            return issuers[key_id]

        for e in unit:
            if e.leaf_hash in existing:
                continue
            if e.issuance is not None:
                iss = issuer_of(e.issuance.issuer_key_id)
                if iss is None:
                    raise AppendRejected(403, "unknown_issuer",
                                         f"issuer {e.issuance.issuer_key_id.hex()} is not registered")
                if iss.revoked_at is not None:
                    raise AppendRejected(403, "revoked_issuer", f"issuer {iss.key_id.hex()} was revoked")
            elif e.registration is not None:
                if issuer_of(e.registration.key_id) is not None:
                    raise AppendRejected(409, "issuer_exists",
                                         f"issuer {e.registration.key_id.hex()} is already registered"
                                         " with a different registration entry")
        out: list[Appended] = []
        for e in unit:
            if e.leaf_hash in existing:
                out.append(Appended(existing[e.leaf_hash], e.leaf_hash, False))
                continue
            index = size + len(new_leaves)
            existing[e.leaf_hash] = index
            new_leaves.append(LeafRecord(index, e.leaf_hash, e.data, e.kind))
            if e.issuance is not None:
                f = e.issuance
                new_issuances.append(IssuanceIndex(index, f.issuer_key_id, f.device_uuid, f.watermark_commitment,
                                                   f.fingerprint_hash))
            elif e.registration is not None:
                r = e.registration
                new_issuers[r.key_id] = IssuerRecord(r.key_id, r.public_key, r.name, index, r.registered_at)
            out.append(Appended(index, e.leaf_hash, True))
        return out
