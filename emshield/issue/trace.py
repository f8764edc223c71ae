"""Issuer-side tracing with the secret tier, and public proof by disclosure (spec/watermark.md,
"Tracing" and "Disclosure"; spec/issue.md §7).

`emshield trace SUSPECT` scores the suspect against every issuance this issuer logged with a
secret tier. Only the marking secret S is needed: the issuer's registrations are found in the log
by their verification key (derived from S, so a rotated signing key is found too), every detection
key is re-derived from S and the logged salt, and a key that does not open its issuance's logged
commitment is not ours and is left out. One batched product per layer scores all keys at once.

Every batched score within REREAD_BAND of the naming line, or above it, is re-read with the
single-key read-out (the statistic a public verifier recomputes), which decides: the batched
products agree with it to within batched.SCORE_ERROR, a thousandth of the band.

Naming: p ≤ 10^-6 per issuance (the per-innocent bound of the presence score, which holds for any
suspect whose weights do not depend on that issuance's key: an unmarked core, another device's
core, any mix of other devices' cores). Over N issuances at most N·10^-6 innocents are named in
expectation; the result says so.

`--disclose` appends, for each named issuance, an attribution entry disclosing that issuance's key
and nonce alone (spec/entry.md, "Attribution"), and then checks it exactly as a public verifier
would (verifier.verify.disclosed) before reporting it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from emshield.logclient.http import LogClient
from emshield.marking import batched, secret
from emshield.marking.params import MarkingParams, verification_key
from emshield.tlog.checkpoint import NoteVerifier
from emshield.tlog.entry import Attribution, decode_entry, sign_entry

from .errors import IssueError
from .keys import IssuerKeys

if TYPE_CHECKING:
    from verifier.verify.log_view import ProvedIssuance, ProvedIssuer, VerifiedLog
    from verifier.verify.suspect import Suspect


REREAD_BAND = 1.0  # batched scores this far below the naming line and above are re-read singly


@dataclass(frozen=True)
class Traced:
    """One of this issuer's issuances with a secret tier, its detection key re-derived from S."""

    issuance: ProvedIssuance
    params: MarkingParams
    detection: secret.DetectionKey


@dataclass(frozen=True)
class TraceRow:
    rank: int
    leaf_index: int
    device_uuid: str
    issuer_key_id: str
    issued_at: int
    score: float  # presence score T of this issuance's detection key on the suspect
    p_value: float  # exp(−T²/2): bounds the chance of T this high for a suspect not marked with this key
    named: bool  # p_value ≤ secret.NAME_ALPHA

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Disclosure:
    leaf_index: int  # the attribution entry's leaf
    issuance_index: int
    device_uuid: str
    created: bool  # False: the log already held this attribution (nothing appended)
    verified: bool  # checked as a public verifier checks it, against a fresh checkpoint

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class TraceResult:
    suspect_sha256: str
    tree_size: int
    issuances_scored: int
    threshold_p: float
    rows: list[TraceRow]  # ranked by score, highest first
    notes: list[str] = field(default_factory=list)
    disclosures: list[Disclosure] = field(default_factory=list)

    @property
    def named(self) -> list[TraceRow]:
        return [r for r in self.rows if r.named]

    def to_json(self, top: int | None = None) -> dict:
        shown = self.rows if top is None else self.rows[:top] + [r for r in self.rows[top:] if r.named]
        return {"suspect_sha256": self.suspect_sha256, "tree_size": self.tree_size,
                "issuances_scored": self.issuances_scored, "threshold_p": self.threshold_p,
                "named": [r.to_json() for r in self.named], "ranked": [r.to_json() for r in shown],
                "notes": self.notes, "disclosures": [d.to_json() for d in self.disclosures]}


def own_issuers(log: VerifiedLog, marking_secret: bytes) -> list[ProvedIssuer]:
    """Registered issuers whose published verification key is S's for their backbone: every signing
    key this issuer has registered (before and after a rotation). A copy of our public parameters
    under someone else's key is found too, but none of its issuances opens a commitment with our keys."""
    return [i for i in log.issuers().values()
            if i.params is not None and verification_key(marking_secret, i.params.backbone_id) == i.params.verification_key]


def traced_issuances(log: VerifiedLog, marking_secret: bytes, notes: list[str]) -> list[Traced]:
    """Every issuance of ours with a secret tier, found by a full replay (so none is left out)."""
    ours = {i.key_id: i for i in own_issuers(log, marking_secret)}
    if not ours:
        raise IssueError("not-registered", "no registered issuer in the log publishes this marking secret's "
                         "parameters (run `emshield issuer register`)")
    scan = log.scan(lambda e: e.issuer_key_id in ours and e.secret_mark_commitment is not None)
    out, foreign = [], 0
    for hit in scan.issuances:
        params = ours[hit.entry.issuer_key_id].params
        assert params is not None and hit.entry.secret_mark_salt is not None
        dk = secret.detection_key(marking_secret, params.backbone_id, hit.entry.device_uuid, hit.entry.secret_mark_salt)
        if dk.commitment != hit.entry.secret_mark_commitment:
            foreign += 1
            continue
        out.append(Traced(hit, params, dk))
    notes.append(f"replayed all {scan.leaves} leaves (root matches the checkpoint); {len(out)} issuances with a "
                 f"secret tier under {len(ours)} registered key(s) of this marking secret")
    if foreign:
        notes.append(f"{foreign} issuances under those keys carry a commitment our secret does not open "
                     "(not issued with this marking secret): left out")
    return out


def trace(suspect: Suspect, log: VerifiedLog, marking_secret: bytes, digest: bytes) -> TraceResult:
    """Score the suspect against every traced issuance; rank; name at p ≤ NAME_ALPHA."""
    notes: list[str] = []
    traced = traced_issuances(log, marking_secret, notes)
    by_params: dict[bytes, list[Traced]] = {}
    for t in traced:
        by_params.setdefault(t.params.digest(), []).append(t)
    scored: list[tuple[float, Traced]] = []
    for group in by_params.values():
        params = group[0].params
        unfit = suspect.unfit_reason(params)
        if unfit is not None:
            notes.append(f"{len(group)} issuances for backbone {params.backbone_id[:16]}… not scored: {unfit}")
            continue
        scores = suspect.secret_scores(params, [t.detection.key for t in group])
        scored += [(float(s), t) for s, t in zip(scores, group)]
    # Near the line (and above it) the single-key read decides: the batched score is within
    # batched.SCORE_ERROR of it, and the band re-read is REREAD_BAND wide, a thousand times that.
    reread = [(s, t) for s, t in scored if s >= secret.NAME_THRESHOLD - REREAD_BAND]
    scored = [(suspect.secret_presence(t.params, t.detection.key).score, t) for _, t in reread] + \
        [(s, t) for s, t in scored if s < secret.NAME_THRESHOLD - REREAD_BAND]
    scored.sort(key=lambda st: (-st[0], st[1].issuance.index))
    rows = []
    for rank, (score, t) in enumerate(scored, start=1):
        p, e = secret.p_value(score), t.issuance.entry
        rows.append(TraceRow(rank, t.issuance.index, e.device_uuid_text, e.issuer_key_id.hex(), e.issued_at,
                             score, p, p <= secret.NAME_ALPHA))
    if rows:
        notes.append(f"each issuance is named at p ≤ {secret.NAME_ALPHA:g}; over {len(rows)} issuances at most "
                     f"{len(rows) * secret.NAME_ALPHA:.2g} innocent namings are expected")
        notes.append(f"{len(reread)} scores at T ≥ {secret.NAME_THRESHOLD - REREAD_BAND:.2f} re-read with the single-key "
                     f"read-out, which decides; the others are the batched read (within {batched.SCORE_ERROR:g} of it)")
    return TraceResult(digest.hex(), log.checkpoint.size, len(rows), secret.NAME_ALPHA, rows, notes)


def disclose(client: LogClient, log_verifier: NoteVerifier, keys: IssuerKeys, log: VerifiedLog, suspect: Suspect,
             result: TraceResult, digest: bytes, *, now: int | None = None) -> list[Disclosure]:
    """Append one attribution per named issuance (none twice), then check each as a verifier would."""
    from verifier.verify.disclosed import check_disclosures
    from verifier.verify.log_view import open_verified_log

    traced = {t.issuance.index: t for t in traced_issuances(log, keys.marking_secret, [])}
    existing = {}
    for hit in client.attributions(suspect_sha256=digest):
        entry = decode_entry(hit.leaf).entry
        if isinstance(entry, Attribution):
            existing.setdefault(entry.issuance_index, hit.index)
    out = []
    for row in result.named:
        t = traced[row.leaf_index]
        if row.leaf_index in existing:
            out.append(Disclosure(existing[row.leaf_index], row.leaf_index, row.device_uuid, False, False))
            continue
        presence = suspect.secret_presence(t.params, t.detection.key)
        att = Attribution(keys.key_id, t.issuance.index, t.issuance.leaf_hash, t.detection.key, t.detection.nonce,
                          digest, max(0, math.floor(presence.score * 1e6)), int(presence.terms.size),
                          int(time.time()) if now is None else now)
        appended = client.append(sign_entry(att, keys.signing_key).encode())
        out.append(Disclosure(appended.index, row.leaf_index, row.device_uuid, True, False))
    if out:  # the public check, on a fresh checkpoint that includes the new entries
        fresh = open_verified_log(client, log_verifier)
        matches, _, _ = check_disclosures(suspect, fresh, digest, secret.NAME_ALPHA)
        proved = {m.attribution_index for m in matches}
        for d in out:
            d.verified = d.leaf_index in proved
    return out
