"""The auditor: keeps a log honest over time (spec/audit.md).

Per log (keyed by origin) a state file pins the log's verifier key and holds the last checkpoint
this auditor verified. Each run fetches the latest checkpoint, checks its signature with the
pinned key and a consistency proof from the saved one, and saves it only if every check passed.
``replay`` also reads every entry through the C2SP tlog-tiles API and recomputes the tree: every
entry must decode strictly, carry a valid signature of an issuer registered earlier in the log,
hash to the leaf hash in the level-0 tile, and all tiles and the checkpoint root must follow.

Misbehaviour is reported as `Finding`s carrying the evidence (signed notes, proofs, entries) a
third party needs to check the claim; operational trouble (unreachable log, malformed answers)
is an `AuditError` instead, because it proves nothing about the log.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from emshield.atomic_file import write_atomically
from emshield.logclient.http import LogClient, LogClientError
from emshield.logclient.tiles import TileClient, TileFetchError, tile_node_reader
from emshield import exit_codes
from emshield.tlog import merkle
from emshield.tlog.checkpoint import Checkpoint, CheckpointError, NoteError, NoteVerifier, verify_checkpoint
from emshield.marking import secret
from emshield.tlog.entry import (
    Attribution,
    EntryError,
    Issuance,
    IssuerRegistration,
    SignedEntry,
    decode_entry,
    issuer_key_id,
    verify_entry_signature,
)
from emshield.tlog.tiles import TILE_WIDTH, Tile, bundles_for, tile_root, tiles_at_level
from verifier.witness_policy import WitnessPolicyError, parse_witness_keys, verify_witnessed

from .cache import ReplayCache, ReplayedPrefix

STATE_VERSION = 1
MAX_FINDINGS_PER_KIND = 50  # evidence stays bounded even for a log that is wrong everywhere
CHUNK_BUNDLES = 8  # bundles per worker task in a replay


class AuditError(Exception):
    """The audit could not be completed; ``exit_code`` (spec/cli.md) says why."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- state file ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogState:
    """What the auditor knows about one log: its pinned key and last verified checkpoint."""

    origin: str
    verifier_key: str
    url: str
    size: int
    root_hash: bytes
    checkpoint: str  # the signed note, verbatim (evidence if the log later contradicts it)
    verified_at: float
    replayed_size: int = 0  # the largest tree whose every entry this auditor replayed

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"root_hash": _b64(self.root_hash)}

    @classmethod
    def from_json(cls, obj: Any) -> LogState:
        if not isinstance(obj, dict) or set(obj) != {f for f in cls.__dataclass_fields__}:
            raise ValueError("a log state must have exactly the fields " + ", ".join(cls.__dataclass_fields__))
        root = base64.b64decode(obj["root_hash"], validate=True)
        st = cls(**(obj | {"root_hash": root}))
        for name in ("origin", "verifier_key", "url", "checkpoint"):
            if not isinstance(getattr(st, name), str):
                raise ValueError(f"{name} must be a string")
        for name in ("size", "replayed_size"):
            v = getattr(st, name)
            if type(v) is not int or v < 0:
                raise ValueError(f"{name} must be a non-negative integer")
        if len(root) != merkle.HASH_SIZE or not isinstance(st.verified_at, (int, float)):
            raise ValueError("bad root_hash or verified_at")
        # The saved note must still verify with the pinned key and match the saved size and root.
        cp = verify_checkpoint(st.checkpoint.encode(), NoteVerifier.from_verifier_key(st.verifier_key), st.origin)
        if (cp.size, cp.root_hash) != (st.size, st.root_hash):
            raise ValueError("saved checkpoint note does not match the saved size and root")
        return st


def load_state(path: Path) -> dict[str, LogState]:
    """The per-origin states in ``path`` (none if it does not exist); a corrupt file is an error."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise AuditError(exit_codes.LOCAL_STATE, f"cannot read state file {path}: {exc}") from exc
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION or set(doc) != {"version", "logs"}:
            raise ValueError(f"not an emshield-audit state file of version {STATE_VERSION}")
        logs = {origin: LogState.from_json(v) for origin, v in doc["logs"].items()}
        if any(origin != st.origin for origin, st in logs.items()):
            raise ValueError("a log state is filed under another origin")
        return logs
    except (ValueError, TypeError, KeyError, AttributeError, CheckpointError, NoteError) as exc:
        raise AuditError(exit_codes.LOCAL_STATE, f"state file {path} is corrupt: {exc}") from exc


def save_state(path: Path, logs: dict[str, LogState]) -> None:
    """Atomic replace (write, fsync, rename, fsync the directory): a crash leaves old or new."""
    doc = {"version": STATE_VERSION, "logs": {o: st.to_json() for o, st in sorted(logs.items())}}
    write_atomically(path, json.dumps(doc, indent=2).encode() + b"\n")


class StateLock:
    """An exclusive flock beside the state file, so two audit runs never interleave their updates."""

    def __init__(self, path: Path) -> None:
        self._path = path.with_name(path.name + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._fd)
            raise AuditError(exit_codes.LOCAL_STATE, f"another audit holds {self._path}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


# --- findings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One piece of misbehaviour: a kind (spec/audit.md), a sentence, and checkable evidence."""

    kind: str
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditReport:
    origin: str
    url: str
    previous: LogState | None
    checkpoint: Checkpoint | None = None
    note: bytes = b""
    findings: list[Finding] = field(default_factory=list)
    replayed: int = 0
    replayed_from: int = 0
    elapsed_s: float = 0.0
    evidence_file: Path | None = None
    _counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, finding: Finding) -> None:
        n = self._counts.get(finding.kind, 0)
        self._counts[finding.kind] = n + 1
        if n < MAX_FINDINGS_PER_KIND:
            self.findings.append(finding)

    def to_json(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "ok": self.ok, "origin": self.origin, "url": self.url,
            "previous": None if self.previous is None else {"size": self.previous.size,
                                                            "root_hash": _b64(self.previous.root_hash)},
            "checkpoint": None if cp is None else {"size": cp.size, "root_hash": _b64(cp.root_hash),
                                                   "note": self.note.decode("utf-8", "replace")},
            "replayed": self.replayed, "replayed_from": self.replayed_from,
            "findings": [asdict(f) for f in self.findings],
            "finding_counts": dict(self._counts),
            "evidence_file": None if self.evidence_file is None else str(self.evidence_file),
            "elapsed_s": round(self.elapsed_s, 3),
        }


# --- checkpoint history --------------------------------------------------------------------------


def check_history(prev: LogState, cp: Checkpoint, note: bytes, url: str, prove: Callable[[int, int], list[bytes]],
                  report: AuditReport) -> None:
    """Rollback / fork checks of a verified checkpoint against the saved one; ``prove(m, n)`` fetches
    the consistency proof (from the /v1 API or computed from the tiles)."""
    both = {"saved_checkpoint": prev.checkpoint, "saved_from": prev.url,
            "new_checkpoint": note.decode("utf-8"), "new_from": url}
    if cp.size < prev.size:
        report.add(Finding("rollback", f"the log's checkpoint has {cp.size} entries, but it signed a checkpoint"
                                       f" with {prev.size} before", both))
        return
    if cp.size == prev.size:
        if cp.root_hash != prev.root_hash:
            report.add(Finding("fork", f"two signed checkpoints of size {cp.size} with different roots", both))
        return
    if prev.size == 0:
        return  # every tree extends the empty tree (its root was checked when it was saved)
    try:
        proof = prove(prev.size, cp.size)
    except (LogClientError, TileFetchError, merkle.MissingNodeError) as exc:
        raise AuditError(exit_codes.UNAVAILABLE, f"no consistency proof {prev.size} -> {cp.size}: {exc}") from exc
    try:
        merkle.verify_consistency(prev.size, cp.size, proof, prev.root_hash, cp.root_hash)
    except merkle.ProofError as exc:
        report.add(Finding("fork", f"no consistency between the signed checkpoints of size {prev.size} and"
                                   f" {cp.size}: {exc}", both | {"consistency_proof": [_b64(h) for h in proof]}))


# --- replay -------------------------------------------------------------------------------------

# Per entry, a worker returns (error, kind, key_id, public_key, verified, link):
#   error: why the entry is invalid (strict decoding, bad self-signature) or None;
#   key_id: the registered key id (registration) or the signer's key id (issuance);
#   public_key: the registered key (registration only);
#   verified: True if the signature was checked with a known key, False if the caller must still
#   check it (an issuance whose issuer the worker had no key for);
#   link: an issuance's secret-mark commitment (or None); for an attribution, (issuance index,
#   issuance leaf hash, the commitment its disclosed key and nonce open), checked while folding.
EntryCheck = tuple[str | None, str | None, bytes | None, bytes | None, bool, Any]

_HINT_KEYS: dict[bytes, Ed25519PublicKey] = {}


def _init_worker(hints: dict[bytes, bytes]) -> None:
    _HINT_KEYS.clear()
    _HINT_KEYS.update({kid: Ed25519PublicKey.from_public_bytes(pub) for kid, pub in hints.items()
                       if issuer_key_id(pub) == kid})


def _signed_by(signed: SignedEntry, pub: Ed25519PublicKey, verified: set | None = None) -> bool:
    try:
        verify_entry_signature(signed, pub, verified)
    except EntryError:
        return False
    return True


def check_entry(data: bytes, verified: set | None = None) -> EntryCheck:
    """Strict decoding and, where a key is known, the signature of one leaf (pure but for the hint
    keys). ``verified``: batch signatures already verified (see `verify_entry_signature`)."""
    try:
        signed = decode_entry(data)
    except EntryError as exc:
        return f"malformed entry: {exc}", None, None, None, False, None
    entry = signed.entry
    if isinstance(entry, IssuerRegistration):
        pub = Ed25519PublicKey.from_public_bytes(entry.issuer_public_key)
        if not _signed_by(signed, pub):
            return "registration self-signature does not verify", entry.TYPE, entry.key_id, None, True, None
        return None, entry.TYPE, entry.key_id, entry.issuer_public_key, True, None
    if isinstance(entry, Attribution):
        link = (entry.issuance_index, entry.issuance_leaf_hash, secret.commitment(entry.detection_nonce,
                                                                                 entry.detection_key))
    else:
        assert isinstance(entry, Issuance)
        link = entry.secret_mark_commitment
    hint = _HINT_KEYS.get(entry.issuer_key_id)
    if hint is None:
        return None, entry.TYPE, entry.issuer_key_id, None, False, link
    if not _signed_by(signed, hint, verified):
        return f"{entry.TYPE} signature does not verify", entry.TYPE, entry.issuer_key_id, None, True, link
    return None, entry.TYPE, entry.issuer_key_id, None, True, link


def _check_chunk(entries: list[bytes]) -> list[EntryCheck]:
    verified: set = set()  # the entries of one signing batch cost one Ed25519 verification
    return [check_entry(e, verified) for e in entries]


class _Replayer:
    """Folds entry checks, in log order, into findings: ordering of registrations, duplicates."""

    def __init__(self, report: AuditReport) -> None:
        self.report = report
        self.registered: dict[bytes, tuple[int, bytes]] = {}  # key id -> (index, public key)
        self.seen: dict[bytes, int] = {}  # leaf hash -> first index
        self.leaf_hashes: list[bytes] = []
        self.secret_commitments: dict[int, bytes] = {}  # issuance index -> its secret-mark commitment (this replay)
        self.start = 0

    def resume(self, prefix: ReplayedPrefix) -> None:
        """Continue after a prefix an earlier replay checked (its entries are not checked again)."""
        self.start = prefix.size
        self.leaf_hashes = list(prefix.leaf_hashes)
        self.seen = {h: i for i, h in enumerate(self.leaf_hashes)}
        self.registered = dict(prefix.registered)

    def entry(self, index: int, data: bytes, check: EntryCheck, tile_hash: bytes | None) -> None:
        lh = merkle.leaf_hash(data)
        if index < self.start:  # in the first bundle, before where this replay resumes
            if lh != self.leaf_hashes[index]:
                self.report.add(Finding("rewritten_entries", f"entry {index} differs from the one an earlier replay"
                                                             " checked", {"index": index, "entry": _b64(data),
                                                                          "replayed_leaf_hash": _b64(self.leaf_hashes[index])}))
            return
        self.leaf_hashes.append(lh)

        def found(kind: str, detail: str, **extra: str) -> None:  # evidence is built only when needed
            self.report.add(Finding(kind, detail, {"index": index, "entry": _b64(data), "leaf_hash": _b64(lh),
                                                   **extra}))

        if tile_hash is not None and tile_hash != lh:
            found("entry_hash_mismatch", f"entry {index} does not hash to its leaf hash in the level-0 tile",
                  tile_leaf_hash=_b64(tile_hash))
        first = self.seen.setdefault(lh, index)
        if first != index:
            found("duplicate_entry", f"entry {index} repeats entry {first}")
        error, kind, key_id, pub, verified, link = check
        if error is not None:
            found("bad_entry", f"entry {index}: {error}")
            return
        assert key_id is not None
        if kind == IssuerRegistration.TYPE:
            if key_id in self.registered:
                found("bad_entry", f"entry {index} registers issuer {key_id.hex()} again"
                                   f" (first at {self.registered[key_id][0]})")
            else:
                assert pub is not None
                self.registered[key_id] = (index, pub)
            return
        reg = self.registered.get(key_id)
        if reg is None:
            found("bad_entry", f"entry {index}: issuer {key_id.hex()} is not registered earlier in the log")
        elif not verified and not _signed_by(decode_entry(data), Ed25519PublicKey.from_public_bytes(reg[1])):
            found("bad_entry", f"entry {index}: {kind} signature does not verify")
        if kind == Issuance.TYPE and link is not None:
            self.secret_commitments[index] = link
        elif kind == Attribution.TYPE:
            self._attribution(index, link, found)

    def _attribution(self, index: int, link: tuple[int, bytes, bytes], found: Callable[..., None]) -> None:
        """The log admits an attribution only for an earlier issuance whose commitment its key opens
        (spec/api.md); for an issuance in a prefix an earlier replay checked, the leaf hash alone."""
        target, target_hash, opened = link
        if target >= index or self.leaf_hashes[target] != target_hash:
            found("bad_entry", f"entry {index}: attribution names leaf {target}, which is not an earlier entry "
                               "with the leaf hash it gives")
        elif target >= self.start and self.secret_commitments.get(target) != opened:
            found("bad_entry", f"entry {index}: attribution's disclosed key does not open the secret-mark commitment "
                               f"of the issuance at leaf {target}")


def _check_upper_tiles(tiles: TileClient, leaf_hashes: Sequence[bytes], size: int, report: AuditReport) -> None:
    """Every hash tile above level 0 against the tile roots recomputed from the entries (level 0
    is compared entry by entry while folding)."""
    level_hashes = list(leaf_hashes)
    level = 1
    while wanted := tiles_at_level(level, size):
        level_hashes = [tile_root(level_hashes[j:j + TILE_WIDTH])
                        for j in range(0, len(level_hashes) - TILE_WIDTH + 1, TILE_WIDTH)]
        for t, served in tiles.fetch_many(wanted):
            base = t.index * TILE_WIDTH
            for i, h in enumerate(served):
                if h != level_hashes[base + i]:
                    report.add(Finding("tile_mismatch", f"{t.path()} hash {i} is not the hash of the tile below",
                                       {"tile": t.path(), "position": i, "served": _b64(h),
                                        "recomputed": _b64(level_hashes[base + i])}))
        level += 1


def replay(log: LogClient, tiles: TileClient, cp: Checkpoint, report: AuditReport, *, jobs: int = 1,
           progress: Callable[[int], None] | None = None, prefix: ReplayedPrefix | None = None) -> ReplayedPrefix:
    """Read the ``cp.size`` entries through the tiles (after ``prefix`` if given, whose entries an
    earlier replay checked) and check them, every upper tile and the root."""
    hints: dict[bytes, bytes] = {}
    try:  # a hint only spreads signature checks over processes; every key is bound by its key id
        hints = {i.key_id: i.public_key for i in log.issuers()}
    except LogClientError:
        pass
    rep = _Replayer(report)
    if prefix is not None:
        rep.resume(prefix)
    bundles = bundles_for(rep.start, cp.size)
    level0 = [Tile(0, b.index, b.width) for b in bundles]
    try:
        pool = ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(hints,)) if jobs > 1 else None
        if pool is None:
            _init_worker(hints)
        else:  # fork every worker now, before the fetch threads exist (no lock is copied held)
            pool.submit(len, ()).result()
        fetched = zip(tiles.fetch_many(bundles), tiles.fetch_many(level0), strict=True)
        try:
            pending: deque = deque()  # (chunk, checks or their future), in log order
            for chunk in _chunked(fetched, CHUNK_BUNDLES):
                entries = [e for (_, es), _ in chunk for e in es]
                pending.append((chunk, pool.submit(_check_chunk, entries) if pool else _check_chunk(entries)))
                if pool is None or len(pending) > 2 * jobs:
                    _fold(rep, *pending.popleft(), progress)
            while pending:
                _fold(rep, *pending.popleft(), progress)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        _check_upper_tiles(tiles, rep.leaf_hashes, cp.size, report)
    except TileFetchError as exc:
        raise AuditError(exit_codes.UNAVAILABLE, f"replay: {exc}") from exc
    report.replayed, report.replayed_from = len(rep.leaf_hashes) - rep.start, rep.start
    root = merkle.root_from_leaf_hashes(rep.leaf_hashes)
    if root != cp.root_hash:
        report.add(Finding("rewritten_entries", f"the {cp.size} entries the log serves do not hash to the root of its"
                                                " signed checkpoint: entries were rewritten, added or removed",
                           {"checkpoint": report.note.decode("utf-8"), "recomputed_root": _b64(root)}))
    return ReplayedPrefix(cp.size, root, rep.leaf_hashes, rep.registered)


def _chunked(items, n):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _fold(rep: _Replayer, chunk, result, progress) -> None:
    checks = result.result() if isinstance(result, Future) else result
    k = 0
    for (bundle, entries), (_, hashes) in chunk:
        for i, data in enumerate(entries):
            rep.entry(bundle.index * TILE_WIDTH + i, data, checks[k], hashes[i])
            k += 1
        if progress is not None:
            progress(len(entries))


# --- one audit run ------------------------------------------------------------------------------


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def write_evidence(directory: Path, report: AuditReport) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = directory / f"{_SAFE.sub('_', report.origin)}-{stamp}-{os.getpid()}.json"
    write_atomically(path, json.dumps(report.to_json(), indent=2).encode() + b"\n")
    return path


def audit(url: str, verifier_key: str, state_path: Path, *, do_replay: bool = False, jobs: int = 1,
          evidence_dir: Path | None = None, progress: Callable[[int], None] | None = None,
          timeout: float = 30.0, witness_keys: Sequence[str] = (), quorum: int = 0,
          incremental: bool = False, proofs: str = "tiles") -> AuditReport:
    """One audit run against the log at ``url`` (spec/audit.md, "Procedure"). With ``witness_keys``
    the checkpoint must also carry ``quorum`` of their cosignatures (spec/witness.md); with
    ``incremental`` a replay checks only entries after the tree the last replay checked; ``proofs``
    says where consistency proofs come from: "tiles" (computed from the tiles, so a plain tile
    mirror can be audited) or "api" (GET /v1/proof/consistency)."""
    if proofs not in ("tiles", "api"):
        raise ValueError(f"proofs must be 'tiles' or 'api', got {proofs!r}")
    started = time.monotonic()
    try:
        verifier = NoteVerifier.from_verifier_key(verifier_key)
        witnesses = parse_witness_keys(witness_keys)
    except (NoteError, WitnessPolicyError) as exc:
        raise AuditError(exit_codes.BAD_INPUT, f"bad --key or --witness: {exc}") from exc
    if not 0 <= quorum <= len(witnesses):
        raise AuditError(exit_codes.BAD_INPUT, f"--quorum {quorum} is not within 0..{len(witnesses)} (the --witness keys)")
    origin = verifier.name
    with StateLock(state_path):
        logs = load_state(state_path)
        prev = logs.get(origin)
        if prev is not None and prev.verifier_key != verifier_key:
            raise AuditError(exit_codes.LOCAL_STATE, f"the key for {origin!r} differs from the key pinned in {state_path}"
                                         f" ({prev.verifier_key}); a log does not change keys silently")
        log = LogClient(url, timeout=timeout)
        report = AuditReport(origin, log.url, prev)
        try:
            report.note = log.checkpoint_note()
        except LogClientError as exc:
            if exc.status == 404:  # nothing at <url>/checkpoint: a wrong URL, not a failing log
                raise AuditError(exit_codes.BAD_INPUT, f"no EMShield log answers at {log.url} (GET /checkpoint: 404);"
                                                       " check --log") from exc
            raise AuditError(exit_codes.UNAVAILABLE, f"cannot fetch the checkpoint: {exc}") from exc
        try:
            cp = verify_checkpoint(report.note, verifier)
        except (CheckpointError, NoteError) as exc:
            raise AuditError(exit_codes.LOG_MISBEHAVING,
                             f"the checkpoint does not verify with the pinned key (or --key is not this log's): {exc}") from exc
        if quorum:
            try:
                verify_witnessed(report.note, verifier, witnesses, quorum)
            except WitnessPolicyError as exc:
                raise AuditError(exit_codes.UNAVAILABLE, f"witness policy not met: {exc}") from exc
        if cp.size == 0 and cp.root_hash != merkle.EMPTY_ROOT:
            report.add(Finding("bad_checkpoint", "a signed checkpoint of size 0 with a non-empty root",
                               {"checkpoint": report.note.decode()}))
        report.checkpoint = cp
        tiles = TileClient(url, timeout=timeout)
        if prev is not None:
            def prove(m: int, n: int) -> list[bytes]:
                if proofs == "api":
                    return list(log.consistency_proof(m, n).hashes)
                return merkle.consistency_proof(m, n, tile_node_reader(tiles, n))

            check_history(prev, cp, report.note, log.url, prove, report)
        cache = ReplayCache(state_path.with_name(state_path.name + ".replay.db"))
        prefix = None
        if do_replay and incremental and prev is not None and prev.replayed_size == prev.size:
            prefix = cache.load(origin)
            if prefix is not None and (prefix.size, prefix.root) != (prev.size, prev.root_hash):
                prefix = None  # not the tree the state says was replayed: start over
        replayed_prefix = None
        if do_replay and report.ok:
            replayed_prefix = replay(log, tiles, cp, report, jobs=jobs, progress=progress, prefix=prefix)
        report.elapsed_s = time.monotonic() - started
        if not report.ok:
            report.evidence_file = write_evidence(evidence_dir or state_path.with_name(state_path.name + ".evidence"),
                                                  report)
            return report
        replayed = cp.size if do_replay else (prev.replayed_size if prev else 0)
        logs[origin] = LogState(origin, verifier_key, log.url, cp.size, cp.root_hash, report.note.decode("utf-8"),
                                time.time(), replayed)
        save_state(state_path, logs)
        if replayed_prefix is not None:
            cache.save(origin, replayed_prefix, 0 if prefix is None else prefix.size)
        return report

