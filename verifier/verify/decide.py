"""Which issuance did a suspect model come from? The verifier's decision (spec/verify.md).

Verdicts say what their evidence proves (spec/verify.md §1, §3):
- **device**: per-device evidence names one issuance — the watermark, read with soft decisions
  (emshield.marking.soft) at a chance-match p-value, counted over every issuance the log could
  name, of at most the issuer's published threshold and the verifier's own ceiling, its payload's
  commitment found in the log's index, the entry signed by that issuer and proved;
- **core**: the fingerprint identifies a core *lineage*: the nearest published fingerprint is within
  the threshold and leads every other lineage by the margin; every issuance of that lineage is
  listed, and no device is named (a fingerprint is a property of the core, and one core goes to
  many devices: measured, the issuances of one core and the unmarked core itself lie within the
  distance that attacks move a fingerprint, spec/notes/attribution-bench.md);
- **disclosed**: no device is named by the public watermark, but an attribution entry in the log
  discloses one issuance's secret-tier detection key for this very suspect file, and everything it
  claims checks out here (emshield.verify.disclosed): the key opens the issuance's logged
  commitment and its mark is present in the suspect at p ≤ 10^-6. "Device named by disclosed key,
  attribution at leaf N";
- **none**: nothing else, including ties and ambiguity.

This module decides; `suspect` loads, `log_view` checks what the log says, `cli` prints. Exit codes
are defined here so that the CLI and the documentation share them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from emshield import exit_codes
from emshield.marking import fingerprint as fpmod
from emshield.marking import soft
from emshield.marking.params import watermark_commitment
from emshield.tlog.checkpoint import Checkpoint
from emshield.tlog.entry import Issuance
from verifier.errors import LogMisbehaving, Unreadable
from verifier.verify.disclosed import DisclosedMatch, RejectedDisclosure, check_disclosures
from verifier.verify.digest import suspect_sha256
from verifier.verify.log_view import ProvedIssuance, ProvedIssuer, VerifiedLog

if TYPE_CHECKING:  # loading a suspect imports torch; deciding does not
    from verifier.verify.suspect import Suspect

# Exit codes shared by every command (spec/cli.md); the verdict kinds map onto them (spec/verify.md §1).
EXIT_DEVICE = exit_codes.OK  # a device is named by per-device evidence, with verified proofs
EXIT_NONE = exit_codes.NEGATIVE  # nothing in the log matches (or the evidence is ambiguous): nobody is named
EXIT_BAD_INPUT = exit_codes.BAD_INPUT  # the suspect, backbone, key or options are unusable
EXIT_LOG_MISBEHAVING = exit_codes.LOG_MISBEHAVING  # the log's answers contradict its signed checkpoint or entries
EXIT_LOG_UNAVAILABLE = exit_codes.UNAVAILABLE  # the log could not be reached or failed (5xx): nothing concluded
EXIT_INTERNAL = exit_codes.INTERNAL  # a bug in the verifier: reported as such, never as "no match"
EXIT_CORE = exit_codes.CORE_ONLY  # a core lineage is identified (its issuances listed); no device is named

KIND_DEVICE, KIND_DISCLOSED, KIND_CORE, KIND_NONE = "device", "disclosed", "core", "none"

# The verifier's own ceiling on the watermark's chance-match p-value, on top of the issuer's
# published one (marking parameters allow up to 10^-1): at 10^-6 a false accusation needs a
# one-in-a-million chance even when an issuer publishes a lax threshold.
DEFAULT_MAX_P_VALUE = 1e-6

# Fingerprint lineage (spec/fingerprint.md, "Similarity"): issuances whose published fingerprints
# are within FP_LINK of the nearest one's belong to its lineage (the issuances of one core differ
# by their watermarks only), and the nearest lineage must lead every other issuance by FP_MARGIN.
FP_LINK = 0.35
FP_MARGIN = 0.05

VERDICT_VERSION = 3  # 3: the "disclosed" kind and the disclosed / disclosures_rejected lists


@dataclass(frozen=True)
class WatermarkReading:
    """The soft read-out under one issuer's parameters."""

    issuer: str
    issuer_key_id: str
    accepted: bool  # the best candidate is significant over the counted issuances and unambiguous
    decoded: bool  # ... and significant over all 2^48 payloads: the suspect carries a mark of this issuer
    reason: str
    bit_errors: int | None  # raw bit errors of the hard signs against the best candidate
    code_bits: int
    score: float | None  # the best candidate's correlation Σ c_i Z_i / ‖Z‖
    runner_up_score: float | None  # the best other significant candidate's
    candidates: int  # distinct payloads the soft search produced
    issuances_counted: int  # the p-value's union bound: every issuance the log could name
    p_value: float  # chance that a core not carrying the mark scores this high against ANY counted issuance
    log10_p_value: float
    log10_p_value_any: float  # the same over every possible payload
    p_value_threshold: float
    watermark_commitment: str | None  # hex, when accepted


@dataclass(frozen=True)
class FingerprintCheck:
    distance: float | None  # RMS feature difference; None when no published fingerprint
    threshold: float
    match: bool
    side_record: str  # "verified against the entry's fingerprint_hash" / "not published" / "no fingerprint in entry"


@dataclass(frozen=True)
class DeviceMatch:
    """A named issuance and the per-device evidence for it."""

    method: str  # "watermark"
    issuer: str
    issuer_key_id: str
    issuer_registration_index: int
    issuer_revoked: bool | None  # None: unknown (offline)
    device_uuid: str
    leaf_index: int
    leaf_hash: str
    issued_at: int
    issued_at_utc: str
    policy: str
    watermark: WatermarkReading | None
    fingerprint: FingerprintCheck | None
    proofs: dict[str, str]


@dataclass(frozen=True)
class LineageIssuance:
    """One issuance of an identified core lineage (its inclusion proved)."""

    leaf_index: int
    leaf_hash: str
    device_uuid: str
    policy: str
    issued_at: int
    issued_at_utc: str
    distance: float | None  # the suspect's fingerprint distance to this issuance's published one
    proof: str


@dataclass(frozen=True)
class CoreMatch:
    """A core lineage: the suspect carries this core, which went to every listed issuance."""

    issuer: str
    issuer_key_id: str
    issuer_registration_index: int
    issuer_revoked: bool | None
    distance: float  # to the nearest published fingerprint
    threshold: float
    runner_up_distance: float | None  # nearest issuance outside the lineage
    margin: float
    indistinguishable: bool  # the listed copies carry no per-device mark (one core, several devices)
    issuances: list[LineageIssuance]
    proofs: dict[str, str]


@dataclass
class Verdict:
    """What `emshield-verify` reports (``--json`` prints ``to_json()``)."""

    device: DeviceMatch | None = None
    core: CoreMatch | None = None
    reason: str = ""
    suspect: dict[str, Any] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)
    watermark_readings: list[WatermarkReading] = field(default_factory=list)
    fingerprint: dict[str, Any] | None = None  # nearest distance, threshold, how many compared
    issuers_considered: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Attributions in the log for this suspect file that check out, and those that do not (with why).
    disclosed: list[DisclosedMatch] = field(default_factory=list)
    disclosures_rejected: list[RejectedDisclosure] = field(default_factory=list)
    # The fingerprint comparisons behind the verdict, for the forensic report (not in the JSON).
    compared: list[Compared] = field(default_factory=list, repr=False, compare=False)

    @property
    def kind(self) -> str:
        if self.device is not None:
            return KIND_DEVICE
        if self.disclosed:
            return KIND_DISCLOSED
        return KIND_CORE if self.core is not None else KIND_NONE

    @property
    def exit_code(self) -> int:
        return {KIND_DEVICE: EXIT_DEVICE, KIND_DISCLOSED: EXIT_DEVICE, KIND_CORE: EXIT_CORE, KIND_NONE: EXIT_NONE}[self.kind]

    def to_json(self) -> dict[str, Any]:
        out = asdict(replace(self, compared=[]))
        del out["compared"]
        return {"v": VERDICT_VERSION, "verdict": self.kind, "exit_code": self.exit_code, **out}


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def reading_of(suspect: Suspect, issuer: ProvedIssuer, count: int,
               max_p_value: float = DEFAULT_MAX_P_VALUE) -> WatermarkReading:
    """The soft watermark read-out under one issuer's parameters (emshield.marking.soft).

    ``count`` is the number of issuances the p-value's union bound counts (the checkpoint's tree
    size: whatever the search tries, a device can only be named through one of them). Accepted
    only at a p-value of at most the issuer's published 10^accept_log10_p AND ``max_p_value``: the
    verifier does not let an issuer's lax published threshold name devices on weak evidence.
    """
    params = issuer.params
    assert params is not None
    log10_threshold = min(float(params.accept_log10_p), math.log10(max_p_value))
    threshold = 10.0 ** log10_threshold
    try:
        z = suspect.extract(params).z
    except Unreadable as exc:
        return WatermarkReading(issuer.name, issuer.key_id.hex(), False, False, str(exc), None, params.code_bits,
                                None, None, 0, count, 1.0, 0.0, 0.0, threshold, None)
    r = soft.read(z, params.rs_nsym, count, log10_threshold)
    best = r.best
    commitment = watermark_commitment(r.payload, params).hex() if r.accepted and r.payload is not None else None
    return WatermarkReading(issuer.name, issuer.key_id.hex(), r.accepted, r.decoded, r.reason,
                            best.bit_errors if best else None, params.code_bits, best.score if best else None,
                            r.runner_up_score, r.candidates, count, r.p_value, r.log10_p, r.log10_p_any, threshold,
                            commitment)


def suspect_fingerprint(suspect: Suspect, issuer: ProvedIssuer,
                         cache: dict[bytes, fpmod.Fingerprint | None]) -> fpmod.Fingerprint | None:
    """The suspect's fingerprint under one issuer's parameters (None: nothing to fingerprint)."""
    if issuer.key_id not in cache:
        assert issuer.params is not None
        try:
            cache[issuer.key_id] = suspect.fingerprint(issuer.params)
        except Unreadable:
            cache[issuer.key_id] = None
    return cache[issuer.key_id]


def fingerprint_check(published: fpmod.Fingerprint | None, hit: ProvedIssuance,
                      suspect_fp: fpmod.Fingerprint) -> FingerprintCheck:
    """Compare with the published fingerprint, which the caller checked against the entry's hash."""
    params = hit.issuer.params
    assert params is not None
    threshold = params.fp_threshold_milli / 1000.0
    if hit.entry.fingerprint_hash is None:
        return FingerprintCheck(None, threshold, False, "no fingerprint in entry")
    if published is None:
        return FingerprintCheck(None, threshold, False, "not published")
    cmp = fpmod.compare(published, suspect_fp, params)
    return FingerprintCheck(cmp.distance, cmp.threshold, cmp.match, "verified against the entry's fingerprint_hash")


def checkpoint_proofs(cp: Checkpoint, registration_proof: str) -> dict[str, str]:
    return {
        "checkpoint": f"signature verified with the pinned key ({cp.origin}, size {cp.size})",
        "checkpoint_root": cp.root_hash.hex(),
        "issuer_registration": registration_proof,
    }


def make_device(cp: Checkpoint, hit: ProvedIssuance, reading: WatermarkReading, fp: FingerprintCheck | None,
                registration_proof: str) -> DeviceMatch:
    """The named issuance with the evidence: ``hit`` must already be signature-checked and proved."""
    e: Issuance = hit.entry
    proofs = {**checkpoint_proofs(cp, registration_proof), "entry_signature": "verified with the registered issuer key",
              "inclusion": hit.proof}
    return DeviceMatch("watermark", hit.issuer.name, hit.issuer.key_id.hex(), hit.issuer.index, hit.issuer.revoked,
                       e.device_uuid_text, hit.index, hit.leaf_hash.hex(), e.issued_at, _iso(e.issued_at), e.policy,
                       reading, fp, proofs)


def lineage_issuance(hit: ProvedIssuance, distance: float | None) -> LineageIssuance:
    e = hit.entry
    return LineageIssuance(hit.index, hit.leaf_hash.hex(), e.device_uuid_text, e.policy, e.issued_at,
                           _iso(e.issued_at), distance, hit.proof)


@dataclass(frozen=True)
class Compared:
    """One issuance whose published (hash-checked) fingerprint was compared with the suspect's."""

    hit: ProvedIssuance
    published: fpmod.Fingerprint
    check: FingerprintCheck


def core_lineage(compared: list[Compared], cp: Checkpoint, registration_proof: Callable[[ProvedIssuance], str],
                 ) -> tuple[CoreMatch | None, str]:
    """Nearest neighbour with a margin (spec/verify.md §3 step 5): the core lineage the suspect's
    fingerprint identifies, or None and why not."""
    scored = [c for c in compared if c.check.distance is not None]
    if not scored:
        return None, "no published fingerprint of an applicable issuer to compare with"
    scored.sort(key=lambda c: (c.check.distance, c.hit.index))
    near = scored[0]
    d1, threshold = near.check.distance, near.check.threshold
    assert d1 is not None
    if d1 > threshold:
        return None, (f"closest published fingerprint at distance {d1:.3f} (threshold {threshold:.3f}) among "
                      f"{len(scored)} compared")
    params = near.hit.issuer.params
    assert params is not None

    def linked(c: Compared) -> bool:
        if c.hit.issuer.key_id != near.hit.issuer.key_id:
            return False
        return c is near or fpmod.compare(near.published, c.published, params).distance <= FP_LINK

    members = [c for c in scored if linked(c) or (c.check.distance or 0.0) <= threshold]
    outside = [c for c in scored if c not in members]
    if len({c.hit.issuer.key_id for c in members}) > 1:
        return None, ("the fingerprint is within threshold of issuances of more than one issuer (leaves "
                      f"{', '.join(str(c.hit.index) for c in members)}); the verifier names no core when the "
                      "evidence is ambiguous")
    d2 = outside[0].check.distance if outside else None
    if d2 is not None and d2 - d1 < FP_MARGIN:
        return None, (f"the nearest published fingerprint (distance {d1:.3f}, leaf {near.hit.index}) does not lead "
                      f"the nearest of another lineage (distance {d2:.3f}, leaf {outside[0].hit.index}) by "
                      f"{FP_MARGIN}; the verifier names no core when the evidence is ambiguous")
    members.sort(key=lambda c: c.hit.index)
    unmarked = all(c.hit.entry.watermark_commitment is None for c in members)
    same = len({c.hit.entry.fingerprint_hash for c in members}) == 1
    issuer = near.hit.issuer
    core = CoreMatch(issuer.name, issuer.key_id.hex(), issuer.index, issuer.revoked, d1, threshold, d2, FP_MARGIN,
                     len(members) > 1 and unmarked and same,
                     [lineage_issuance(c.hit, c.check.distance) for c in members],
                     checkpoint_proofs(cp, registration_proof(near.hit)))
    return core, ""


def _registration_proof(hit: ProvedIssuance) -> str:
    return f"self-signature verified, included at leaf {hit.issuer.index}"


def _with_witnesses(log: VerifiedLog, proofs: dict[str, str]) -> None:
    if log.cosigned_by:
        proofs["witnesses"] = f"cosigned by {len(log.cosigned_by)}: {', '.join(log.cosigned_by)}"


def _fits(hit: ProvedIssuance, issuer: ProvedIssuer) -> bool:
    """An issuance belongs to the parameters we read with: same issuer, same backbone."""
    params = issuer.params
    return (hit.issuer.key_id == issuer.key_id and params is not None
            and hit.entry.backbone_id.hex() == params.backbone_id)


def verify_suspect(suspect: Suspect, log: VerifiedLog, *, scan: bool = True, progress: bool = False,
                   max_p_value: float = DEFAULT_MAX_P_VALUE) -> Verdict:
    """Decide which proved issuance or core lineage, if any, the suspect comes from (raises
    LogMisbehaving / LogUnavailable from the log view, BadSuspect from the suspect)."""
    verdict = _verify_public(suspect, log, scan=scan, progress=progress, max_p_value=max_p_value)
    if verdict.kind == KIND_DISCLOSED:
        named = ", ".join(f"{m.device_uuid} (attribution at leaf {m.attribution_index})" for m in verdict.disclosed)
        verdict.reason = f"device named by disclosed key: {named}; public evidence: {verdict.reason}"
    return verdict


def _verify_public(suspect: Suspect, log: VerifiedLog, *, scan: bool, progress: bool, max_p_value: float) -> Verdict:
    """The disclosed attributions, then the public tier and the fingerprint."""
    cp = log.checkpoint
    verdict = Verdict(
        suspect=suspect.describe(),
        log={"url": log.client.url, "mode": log.mode, "origin": cp.origin, "tree_size": cp.size,
             "root_hash": cp.root_hash.hex(), "cosigned_by": list(log.cosigned_by)},
    )
    _disclosures(suspect, log, verdict, max_p_value)
    candidates: list[ProvedIssuer] = []
    for issuer in log.issuers().values():
        why = issuer.params_error or (suspect.unfit_reason(issuer.params) if issuer.params else None)
        verdict.issuers_considered.append({"issuer": issuer.name, "key_id": issuer.key_id.hex(),
                                           "applies": why is None, "reason": why or "parameters fit the suspect"})
        if why is None:
            candidates.append(issuer)
    if not candidates:
        verdict.reason = ("no registered issuer publishes marking parameters that fit this suspect"
                          + (f" (backbone {suspect.backbone_id})" if suspect.backbone_id else ""))
        if scan:  # a log could hide the issuer: the replay shows every registration in the tree
            result = log.scan(lambda e: False)
            verdict.notes.append(f"replayed all {result.leaves} leaves; the root matches the checkpoint and "
                                 "the issuer list holds every registration")
        return verdict

    # 1. Watermark: soft reading with each issuer's parameters, the best payload's commitment
    #    looked up, the entry proved. Every leaf of the tree counts as an issuance in the p-value.
    named: list[DeviceMatch] = []
    missing_commitments: set[bytes] = set()
    suspect_fps: dict[bytes, fpmod.Fingerprint | None] = {}
    for issuer in tqdm(candidates, desc="reading watermark", unit="issuer", disable=not progress, leave=False):
        reading = reading_of(suspect, issuer, cp.size, max_p_value)
        verdict.watermark_readings.append(reading)
        if not reading.accepted:
            continue
        commitment = bytes.fromhex(reading.watermark_commitment or "")
        proved, truncated = log.issuances(watermark_commitment=commitment)
        hits = [h for h in proved if _fits(h, issuer)]
        if truncated and hits:
            verdict.reason = (f"the log holds more than {len(proved)} issuances with this watermark's commitment; "
                              "the verifier names no device when the evidence is ambiguous")
            return verdict
        if not hits:
            missing_commitments.add(commitment)
            if reading.decoded:
                verdict.notes.append(f"a watermark of issuer {issuer.name!r} is read (p={reading.p_value:.3g}, "
                                     f"10^{reading.log10_p_value_any:.0f} over every payload), but the log's "
                                     "commitment index has no proved issuance for it")
            continue
        fp = suspect_fingerprint(suspect, issuer, suspect_fps)
        for h in hits:
            published = log.side_fingerprint(h) if fp is not None else None
            check = fingerprint_check(published, h, fp) if fp is not None else None
            if published is not None and check is not None:
                verdict.compared.append(Compared(h, published, check))
            match = make_device(cp, h, reading, check, _registration_proof(h))
            _with_witnesses(log, match.proofs)
            named.append(match)
    if len(named) == 1:
        verdict.device = named[0]
        others = sorted({d.device_uuid for d in verdict.disclosed} - {named[0].device_uuid})
        if others:
            verdict.notes.append("disclosed keys also name " + ", ".join(others) + ": the suspect carries the marks "
                                 "of more than one issuance (a copy mixed from several devices' cores)")
        return verdict
    if len(named) > 1:
        verdict.reason = (f"the watermark leads to {len(named)} proved issuances at once; "
                          "the verifier names no device when the evidence is ambiguous")
        return verdict

    # 2. Fingerprint: compare with every published fingerprint of the applicable issuers, found by
    #    replaying the whole log (so the nearest is known to be the nearest); with --no-scan only
    #    issuances whose fingerprint hash equals the suspect's are compared. It names a core
    #    lineage, never a device.
    if scan:
        compared = _scan(log, suspect, candidates, suspect_fps, missing_commitments, verdict)
    else:
        compared = []
        for issuer in candidates:
            fp = suspect_fingerprint(suspect, issuer, suspect_fps)
            if fp is None:
                continue
            proved, truncated = log.issuances(fingerprint_hash=fp.hash())
            if truncated:
                verdict.notes.append("the log holds more issuances with this exact fingerprint than it returns")
            for hit in proved:
                if _fits(hit, issuer):
                    published = log.side_fingerprint(hit) or fp
                    compared.append(Compared(hit, published, fingerprint_check(published, hit, fp)))
        verdict.notes.append("full replay disabled: the fingerprint was compared only with issuances "
                             "whose logged fingerprint hash equals the suspect's; lineage and margin unchecked")
    verdict.compared = compared
    distances = [c.check.distance for c in compared if c.check.distance is not None]
    if compared:
        verdict.fingerprint = {"distance": min(distances) if distances else None,
                               "threshold": compared[0].check.threshold, "compared": len(distances)}
    core, why = core_lineage(compared, cp, _registration_proof)
    if core is not None:
        _with_witnesses(log, core.proofs)
        verdict.core = core
        leaves = ", ".join(str(i.leaf_index) for i in core.issuances)
        verdict.reason = (f"the suspect carries the core of issuer {core.issuer!r} issued at leaves {leaves}"
                          + ("; these copies are indistinguishable: one core issued to several devices without "
                             "a per-device watermark" if core.indistinguishable else "")
                          + "; no per-device evidence names one device")
        return verdict
    verdict.reason = _no_match_reason(verdict, why)
    return verdict


def _scan(log: VerifiedLog, suspect: Suspect, candidates: list[ProvedIssuer], suspect_fps: dict[bytes, fpmod.Fingerprint | None],
          missing_commitments: set[bytes], verdict: Verdict) -> list[Compared]:
    """Replay the whole log; compare with every published fingerprint of the candidate issuers.

    Also catches a log whose commitment index hid an issuance the watermark points to.
    """
    by_key = {i.key_id: i for i in candidates}

    def keep(e: Issuance) -> bool:
        return e.issuer_key_id in by_key and (e.fingerprint_hash is not None or e.watermark_commitment in missing_commitments)

    result = log.scan(keep)
    verdict.notes.append(f"replayed all {result.leaves} leaves; the root matches the checkpoint")
    found = []
    for hit in result.issuances:
        issuer = by_key[hit.entry.issuer_key_id]
        if hit.entry.watermark_commitment in missing_commitments and _fits(hit, issuer):
            raise LogMisbehaving(f"the commitment index omitted the issuance at leaf {hit.index}, "
                                 "which the full replay shows")
        fp = suspect_fingerprint(suspect, issuer, suspect_fps)
        if fp is not None and _fits(hit, issuer) and hit.entry.fingerprint_hash is not None:
            published = log.side_fingerprint(hit)
            if published is not None:
                found.append(Compared(hit, published, fingerprint_check(published, hit, fp)))
    return found


def _disclosures(suspect: Suspect, log: VerifiedLog, verdict: Verdict, max_p_value: float) -> None:
    """Attributions the log holds for this exact suspect file, each re-done (spec/verify.md §3)."""
    matches, rejected, truncated = check_disclosures(suspect, log, suspect_sha256(suspect.path), max_p_value)
    verdict.disclosed, verdict.disclosures_rejected = matches, rejected
    if truncated:
        verdict.notes.append("the log holds more attributions for this suspect than it returns; the ones returned "
                             "were checked")
    for r in rejected:
        verdict.notes.append(f"the attribution at leaf {r.attribution_index} does not hold for this suspect: {r.reason}")


def _no_match_reason(verdict: Verdict, fingerprint_why: str) -> str:
    parts = []
    if any(r.decoded for r in verdict.watermark_readings):
        parts.append("a watermark was read but no proved issuance carries its commitment")
    else:
        parts.append("no watermark is read under any applicable issuer's parameters")
    parts.append(fingerprint_why)
    return "; ".join(parts)
