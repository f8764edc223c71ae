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
restarted (or another) process re-reads its compact range whenever the stored tree size differs
from what it holds in memory: from the checkpoint row of that size, which carries the range's
border (one row, checked against the signed root), or else from the stored nodes (O(log n)).
Several processes may run sequencers against one store: the database write lock (BEGIN
IMMEDIATE) makes whichever holds it the only sequencer for that transaction, and the size check
above keeps each one's range current. The tree never changes a past leaf: leaves are only
INSERTed at the next index.

Issuer checks are repeated inside the transaction, so an issuer revoked after the request thread
checked it is refused at commit; issuer records are reused across commits only while the store's
issuer epoch (read with the tree size, changed by every revocation) is unchanged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from emshield.tlog.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from emshield.tlog.merkle import HASH_SIZE, CompactRange, root_node_ids

from .errors import Refusal
from .process_thread import ProcessThread
from .storage import (
    AttributionRow,
    DuplicateLeaf,
    IssuanceRow,
    IssuerRecord,
    LeafRow,
    LogStore,
    StoredCheckpoint,
    TreeHead,
    WriteTxn,
    blob_key,
    device_key,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 20_000
MAX_KNOWN_ISSUERS = 10_000
SUBMIT_TIMEOUT_S = 60.0


# The records below are NamedTuples rather than dataclasses: one of each is built per entry on the
# serial path (the sequencer process decodes every unit it is sent) and by request threads, and a
# NamedTuple is built in about a third of the time of a frozen dataclass with the same fields
# (same constructor; `._replace` instead of `dataclasses.replace`).


class IssuanceFields(NamedTuple):
    """An issuance's look-up fields and their index keys (``of`` computes them). The keys travel with
    the fields so the request threads of every worker compute them, not the one writer thread."""

    issuer_key_id: bytes
    device_uuid: str
    watermark_commitment: bytes | None
    fingerprint_hash: bytes | None
    watermark_key: int | None
    fingerprint_key: int | None
    device_key: int

    @classmethod
    def of(cls, issuer_key_id: bytes, device_uuid: str, watermark_commitment: bytes | None,
           fingerprint_hash: bytes | None) -> IssuanceFields:
        return cls(issuer_key_id, device_uuid, watermark_commitment, fingerprint_hash,
                   blob_key(watermark_commitment), blob_key(fingerprint_hash), device_key(device_uuid))


class RegistrationFields(NamedTuple):
    key_id: bytes
    public_key: bytes
    name: str
    registered_at: int


class AttributionFields(NamedTuple):
    """An attribution's signer and look-up fields (the `attributions` columns after the leaf index)."""

    issuer_key_id: bytes
    issuance_index: int
    suspect_sha256: bytes


class PreparedEntry(NamedTuple):
    """An entry whose encoding and signature the request thread has already checked (for an
    attribution also the issuance it opens); exactly one of the field records is set."""

    data: bytes
    leaf_hash: bytes
    kind: str
    issuance: IssuanceFields | None = None
    registration: RegistrationFields | None = None
    attribution: AttributionFields | None = None


class Appended(NamedTuple):
    """Where an entry is: its leaf index, leaf hash, and whether this request added it (False: it
    was already logged). A NamedTuple: the writer thread makes one per entry while holding the GIL."""

    index: int
    leaf_hash: bytes
    created: bool


class SequencerLike(Protocol):
    """What a request handler appends through: this process's `Sequencer`, or the sequencer
    process's client (`runtime.sequencer_service.RemoteSequencer`)."""

    def submit(self, entries: Sequence[PreparedEntry]) -> list[Appended]:
        """Make ``entries`` durable (all or none); raises `Refusal` for a refused request."""
        ...


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class _Unit:
    """One request's entries and its answer. ``done`` is released by the writer once ``outcome`` is
    set: a bare lock, because the writer thread is the serial part of every append and a
    concurrent.futures.Future (a Condition, notify_all) costs it tens of times more per answer."""

    entries: Sequence[PreparedEntry]
    outcome: list[Appended] | BaseException | None = None
    done: threading.Lock = field(default_factory=_held_lock)

    def answer(self, outcome: list[Appended] | BaseException) -> None:
        self.outcome = outcome
        self.done.release()


_STOP = object()


class Sequencer:
    """Group-committing writer; `submit` is thread safe and returns once the entries are durable."""

    def __init__(self, store: LogStore, signer: NoteSigner, origin: str, *, max_batch: int = DEFAULT_MAX_BATCH,
                 on_commit: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.signer = signer
        self.origin = origin
        self.max_batch = max_batch
        self.on_commit = on_commit  # called after every committed transaction (must not block)
        self._range: CompactRange | None = None
        # Issuer records read from the store, kept while the store's issuer epoch stays the same
        # (it changes with every revocation); unknown issuers are never kept, as another process
        # may register them at any time.
        self._issuers: dict[bytes, IssuerRecord] = {}
        self._issuer_epoch: bytes | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # C-implemented: cheap put/get
        self._writer = ProcessThread(self._run, "emshield-sequencer", before_start=self._fresh_queue)

    # -- request side -------------------------------------------------------------------------

    def submit(self, entries: Sequence[PreparedEntry], timeout: float = SUBMIT_TIMEOUT_S) -> list[Appended]:
        """Make `entries` durable (all or none); raises `Refusal` for a refused request."""
        self._writer.ensure_started()
        unit = _Unit(entries)
        self._queue.put(unit)
        if not unit.done.acquire(timeout=timeout):
            # Not answered in time: the entries may still be committed later (a retry is safe:
            # appends are idempotent), but this request gives up waiting.
            raise TimeoutError(f"the sequencer did not answer within {timeout} s")
        if isinstance(unit.outcome, BaseException):
            raise unit.outcome
        return unit.outcome

    def _fresh_queue(self) -> None:
        # A new writer thread (in a forked worker, or after one ended) starts from an empty queue
        # and re-reads its compact range from the store.
        self._queue = queue.SimpleQueue()
        self._range = None

    def stop(self) -> None:
        if self._writer.running_here():
            self._queue.put(_STOP)
            self._writer.join(timeout=30)

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

    def integrate(self, units: Sequence[Sequence[PreparedEntry]]) -> list[list[Appended] | Refusal]:
        """One transaction: sequence every acceptable unit, extend the tree, sign one checkpoint.

        Each unit (one request) is accepted or rejected as a whole. Also used directly (without
        the writer thread) to bulk-fill a store for benchmarks.
        """
        return self._integrate(lambda: units)

    def _integrate(self, collect) -> list[list[Appended] | Refusal]:
        """`integrate` for the units ``collect()`` returns, called inside the write transaction.

        Re-submissions are rare, so the units are first sequenced expecting none (only repeats
        within this commit are known) and the leaves inserted: the UNIQUE index on leaf hashes
        checks them all in the same B-tree descent that inserts them. If it finds a stored one
        (`DuplicateLeaf`: nothing was inserted), or a unit was refused (a refusal may be an entry
        already logged: an identical registration, an issuer revoked since), the commit is
        sequenced again knowing the stored index of every one of its leaf hashes.
        """
        try:
            with self.store.write() as tx:
                units = collect()
                head = tx.tree_head()
                rng = self._range_at(tx, head)
                if head.issuer_epoch != self._issuer_epoch:  # an issuer was revoked since they were read
                    self._issuers, self._issuer_epoch = {}, head.issuer_epoch
                size = rng.size
                group = _Group(tx, size, {}, self._issuers)
                outcomes = group.sequence(units)
                if group.refused or not _added(tx, group.leaves):
                    group = _Group(tx, size, tx.indices_of([e.leaf_hash for unit in units for e in unit]),
                                   self._issuers)
                    outcomes = group.sequence(units)
                    tx.add_leaves(group.leaves)
                if group.leaves:
                    # Parents before children (foreign keys): leaves, issuers, issuance indexes.
                    for issuer in group.new_issuers.values():
                        tx.add_issuer(issuer)
                    tx.add_issuances(group.issuances)
                    if group.attributions:
                        tx.add_attributions(group.attributions)
                    tx.add_nodes(rng.extend([row[1] for row in group.leaves]))
                    self._add_checkpoint(tx)
        except BaseException:
            self._range = None  # rebuilt from the store on the next batch
            self._issuers = {}
            raise
        if group.leaves:
            self.on_commit()
        return outcomes

    def _range_at(self, tx: WriteTxn, head: TreeHead) -> CompactRange:
        """The compact range of the stored tree, read when the size held here is not the stored one.

        That is the case after a restart, and at nearly every commit while sequencers of several
        processes take turns on one store. The border comes from the checkpoint row of the stored
        size (one row, read with the size), checked against that checkpoint's root; a row without
        one (written before borders were kept, or leaves added without a checkpoint) makes it
        rebuilt from the stored nodes.
        """
        rng = self._range
        if rng is None or rng.size != head.size:
            rng = _range_from_border(head) or CompactRange.from_nodes(head.size, tx.get_nodes)
            self._range = rng
        return rng

    def _add_checkpoint(self, tx: WriteTxn) -> None:
        rng = self._range
        cp = Checkpoint(self.origin, rng.size, rng.root())
        tx.add_checkpoint(StoredCheckpoint(cp.size, cp.root_hash, sign_checkpoint(cp, self.signer), time.time()),
                          border=b"".join(h for _, h in rng.border_nodes()))

    def sign_current(self) -> None:
        """Sign a checkpoint of the stored tree if its size has none yet (the empty tree at init)."""
        with self.store.write() as tx:
            self._range = CompactRange.from_nodes(tx.tree_size(), tx.get_nodes)
            latest = tx.latest_checkpoint()
            if latest is None or latest.size != self._range.size:
                self._add_checkpoint(tx)
        self.on_commit()


def _range_from_border(head: TreeHead) -> CompactRange | None:
    """The compact range a checkpoint row's border describes, if it has one that folds to its root."""
    if head.border is None:
        return None
    ids = root_node_ids(head.size)
    if len(head.border) != HASH_SIZE * len(ids):
        return None
    nodes = {node: head.border[HASH_SIZE * i:HASH_SIZE * (i + 1)] for i, node in enumerate(ids)}
    rng = CompactRange.from_nodes(head.size, lambda wanted: nodes)
    return rng if rng.root() == head.root else None


def _added(tx: WriteTxn, leaves: list[LeafRow]) -> bool:
    """Insert ``leaves``; False (and nothing inserted) if one of their hashes is stored already."""
    try:
        tx.add_leaves(leaves)
    except DuplicateLeaf:
        return False
    return True


class _Group:
    """One commit's state while its units are sequenced: the next index, every leaf hash already
    stored or given an index in this commit, the issuers read so far, and the new rows."""

    __slots__ = ("tx", "size", "existing", "known", "issuers", "new_issuers", "leaves", "issuances", "attributions",
                 "refused")

    def __init__(self, tx: WriteTxn, size: int, existing: dict[bytes, int], known: dict[bytes, IssuerRecord]) -> None:
        self.tx = tx
        self.size = size
        self.existing = existing
        self.known = known  # the sequencer's current issuer records from the store
        self.refused = 0
        self.issuers: dict[bytes, IssuerRecord | None] = {}  # looked up in this transaction, or registered by it
        self.new_issuers: dict[bytes, IssuerRecord] = {}
        self.leaves: list[LeafRow] = []
        self.issuances: list[IssuanceRow] = []
        self.attributions: list[AttributionRow] = []

    def sequence(self, units: Sequence[Sequence[PreparedEntry]]) -> list[list[Appended] | Refusal]:
        """Each unit's indices, or its refusal (a refused unit leaves no trace in the group)."""
        outcomes: list[list[Appended] | Refusal] = []
        for unit in units:
            try:
                outcomes.append(_sequence_unit(unit, self))
            except Refusal as rej:
                self.refused += 1
                outcomes.append(rej)
        return outcomes

    def issuer(self, key_id: bytes) -> IssuerRecord | None:
        if key_id in self.issuers:
            return self.issuers[key_id]
        record = self.known.get(key_id)
        if record is None:
            record = self.tx.issuer(key_id)  # inside the transaction: revocation is current
            if record is not None:
                if len(self.known) >= MAX_KNOWN_ISSUERS:
                    self.known.clear()
                self.known[key_id] = record
        self.issuers[key_id] = record
        return record


def _sequence_unit(unit: Sequence[PreparedEntry], group: _Group) -> list[Appended]:
    """Check one request's entries against the store; only then give its new ones indices.

    The writer runs this for every entry on the serial path, so rows are plain tuples (an
    issuance row is its index and its IssuanceFields, in order) and the common case, an issuance
    of an issuer already looked up, costs a few dict look-ups. An attribution's signer is checked
    as an issuance's issuer is (the issuance it opens was read from the store, whose leaves never
    change, by the request thread).
    """
    existing, issuers, issuer = group.existing, group.issuers, group.issuer
    registering: dict[bytes, bytes] = {}
    for _, h, _, f, r, a in unit:
        if h in existing:
            continue
        if f is not None:
            kid = f.issuer_key_id
        elif a is not None:
            kid = a.issuer_key_id
        else:
            if r is not None and (issuer(r.key_id) is not None or registering.setdefault(r.key_id, h) != h):
                raise Refusal(409, "issuer_exists",
                                     f"issuer {r.key_id.hex()} is already registered with a different registration entry")
            continue
        iss = issuers[kid] if kid in issuers else issuer(kid)
        if iss is None:
            raise Refusal(403, "unknown_issuer", f"issuer {kid.hex()} is not registered")
        if iss.revoked_at is not None:
            raise Refusal(403, "revoked_issuer", f"issuer {kid.hex()} was revoked")
    out: list[Appended] = []
    leaves, issuances = group.leaves, group.issuances
    index = group.size + len(leaves)
    for data, h, kind, f, r, a in unit:
        known = existing.get(h)
        if known is not None:
            out.append(Appended(known, h, False))
            continue
        existing[h] = index
        leaves.append((index, h, data, kind))
        if f is not None:
            issuances.append((index, *f))
        elif r is not None:
            group.new_issuers[r.key_id] = issuers[r.key_id] = IssuerRecord(r.key_id, r.public_key, r.name, index,
                                                                          r.registered_at)
        elif a is not None:
            group.attributions.append((index, *a))
        out.append(Appended(index, h, True))
        index += 1
    return out
