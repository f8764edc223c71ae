"""The log's side of C2SP tlog-witness: submit new checkpoints to the configured witnesses and
store the cosignatures they return (spec/witness.md, "Log side").

One background thread per server process polls the store for a newer checkpoint (the
sequencer, which commits checkpoints, needs no hook), but only the process holding the store's
"cosigner" role lock (`LogStore.role_lock`: an flock beside a SQLite file, an advisory lock on
PostgreSQL, across all hosts) talks to witnesses, so N workers do not race each other into 409s. For each witness it remembers the size the witness last cosigned (learned from a 409
``text/x.tlog.size`` answer after a restart), sends ``old <size>``, the consistency proof from the
stored nodes and the log-signed note, checks every returned cosignature with the witness's key,
and stores the valid ones beside the checkpoint. `GET /checkpoint` then serves the note with them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import requests

from emshield.tlog import merkle
from emshield.tlog.addcheckpoint import SIZE_CONTENT_TYPE, encode_add_checkpoint
from emshield.tlog.checkpoint import CosignatureVerifier, NoteError, NoteSignature, open_note, split_note

from .process_thread import ProcessThread
from .storage import LogStore, StoredCheckpoint

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024
MAX_BACKOFF_S = 30.0


@dataclass
class WitnessEndpoint:
    """A witness the log submits to: its add-checkpoint URL prefix and its cosignature key."""

    url: str
    verifier: CosignatureVerifier
    cosigned_size: int | None = None  # what the witness holds for us, once known
    failures: int = field(default=0, compare=False)
    next_try: float = field(default=0.0, compare=False)  # monotonic time; backs off while it fails

    @classmethod
    def parse(cls, spec: str) -> WitnessEndpoint:
        """``URL=VERIFIER_KEY`` (the URL must not contain '=')."""
        url, sep, vkey = spec.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise ValueError(f"a witness is URL=VERIFIER_KEY with an http(s) URL, got {spec[:80]!r}")
        try:
            return cls(url.rstrip("/"), CosignatureVerifier.from_verifier_key(vkey))
        except NoteError as exc:
            raise ValueError(f"witness key for {url}: {exc}") from exc

    @property
    def ident(self) -> tuple[str, bytes]:
        return self.verifier.name, self.verifier.key_id


class Cosigner:
    """Background submitter; `ensure_started` is cheap and safe to call on every request."""

    def __init__(self, store: LogStore, witnesses: list[WitnessEndpoint], *,
                 poll_s: float = 0.2, timeout_s: float = 10.0) -> None:
        self.store = store
        self.witnesses = witnesses
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self._thread = ProcessThread(self._run, "emshield-cosigner")

    def ensure_started(self) -> None:
        if self.witnesses:
            self._thread.ensure_started()

    def _run(self) -> None:
        role = self.store.role_lock("cosigner")  # kept while this process lives
        session = requests.Session()
        while True:  # a daemon thread: it ends with its process
            if not role.try_acquire():
                time.sleep(1.0)
                continue
            cp = self.store.latest_checkpoint()
            for w in self.witnesses:
                if cp is None or w.cosigned_size == cp.size or time.monotonic() < w.next_try:
                    continue
                try:
                    self.submit(session, w, cp)
                    w.failures = 0
                except Exception:  # a witness being down must not delay the others
                    w.failures += 1
                    w.next_try = time.monotonic() + min(self.poll_s * 2 ** w.failures, MAX_BACKOFF_S)
                    log.warning("witness %s: submission of size %d failed", w.url, cp.size,
                                exc_info=w.failures == 1)
            time.sleep(self.poll_s)

    def submit(self, session: requests.Session, w: WitnessEndpoint, cp: StoredCheckpoint) -> None:
        """add-checkpoint for ``cp``; learn the witness's size from a 409 and retry once."""
        old = w.cosigned_size or 0
        for _ in range(2):
            if old > cp.size:
                w.cosigned_size = old
                raise RuntimeError(f"witness {w.url} has cosigned size {old}, larger than our latest checkpoint"
                                   f" {cp.size}: it saw another history of this log (fork?) or the store was rolled back")
            proof = [] if old in (0, cp.size) else merkle.consistency_proof(old, cp.size, self.store.get_nodes)
            body = encode_add_checkpoint(old, proof, cp.note)
            resp = session.post(f"{w.url}/add-checkpoint", data=body, timeout=self.timeout_s,
                                headers={"Content-Type": "text/plain; charset=utf-8"})
            content = resp.content[:MAX_ANSWER_BYTES]
            if resp.status_code == 409 and resp.headers.get("Content-Type", "").startswith(SIZE_CONTENT_TYPE):
                text = content.decode("ascii", "replace")
                if not text.endswith("\n") or not text[:-1].isdigit():
                    raise ValueError(f"witness {w.url}: malformed 409 size answer {text[:40]!r}")
                old = int(text[:-1])
                continue
            if resp.status_code != 200:
                raise RuntimeError(f"witness {w.url}: HTTP {resp.status_code}: {content[:200]!r}")
            self._store(w, cp, content)
            return
        raise RuntimeError(f"witness {w.url}: size conflict did not resolve")

    def _store(self, w: WitnessEndpoint, cp: StoredCheckpoint, lines: bytes) -> None:
        """Keep the witness's valid cosignatures of ``cp`` (other lines are ignored)."""
        text, _ = split_note(cp.note)
        try:
            open_note(text + b"\n" + lines, [w.verifier])  # raises unless the witness's signature verifies
        except NoteError as exc:
            raise RuntimeError(f"witness {w.url}: answer has no valid cosignature: {exc}") from exc
        _, sigs = split_note(text + b"\n" + lines)
        mine = [(s.name, s.key_id, s.signature) for s in sigs if (s.name, s.key_id) == w.ident]
        with self.store.write() as tx:
            tx.add_cosignatures(cp.size, mine)
        w.cosigned_size = cp.size


def cosigned_note(store: LogStore, witnesses: list[WitnessEndpoint], quorum: int) -> bytes | None:
    """The note `GET /checkpoint` serves: the latest checkpoint with at least ``quorum`` of the
    configured witnesses' cosignatures, with those cosignature lines appended (None: none yet)."""
    idents = [w.ident for w in witnesses]
    cp = store.latest_cosigned(idents, quorum) if witnesses else store.latest_checkpoint()
    if cp is None:
        return None
    if not witnesses:
        return cp.note
    known = set(idents)
    extra = [s for s in store.cosignatures(cp.size) if (s[0], s[1]) in known]
    lines = "".join(NoteSignature(n, k, sig).line() for n, k, sig in extra).encode()
    return cp.note + lines
