"""Which issuance did a suspect model come from? The verifier's decision (spec/verify.md).

A device is named only when
- its watermark decodes within the error-correction bound AND the chance-match p-value is at most
  the issuer's published threshold (10^accept_log10_p) and the verifier's own ceiling
  (DEFAULT_MAX_P_VALUE unless set) AND the log proves the issuance entry found
  through the watermark commitment index, signed by that same issuer; or
- the suspect's fingerprint is within the issuer's calibrated threshold of the published (and
  hash-checked) fingerprint of exactly one proved issuance.
Anything else is "no match" with the reason; a tie between several issuances names nobody.

This module decides; `suspect` loads, `log_view` checks what the log says, `cli`
prints. Exit codes are defined here so that the CLI and the documentation share them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from emshield.marking import fingerprint as fpmod
from emshield.marking.params import watermark_commitment
from emshield.tlog.checkpoint import Checkpoint
from emshield.tlog.entry import Issuance
from verifier.errors import LogMisbehaving, Unreadable
from verifier.verify.log_view import ProvedIssuance, ProvedIssuer, VerifiedLog

if TYPE_CHECKING:  # loading a suspect imports torch; deciding does not
    from verifier.verify.suspect import Suspect

EXIT_MATCH = 0  # a device is named, with verified proofs
EXIT_NO_MATCH = 1  # nothing in the log matches (or several match equally): nobody is named
EXIT_BAD_INPUT = 2  # the suspect, backbone, key or options are unusable
EXIT_LOG_MISBEHAVING = 3  # the log's answers contradict its signed checkpoint, its entries or each other
EXIT_LOG_UNAVAILABLE = 4  # the log could not be reached or failed (5xx): nothing concluded
EXIT_INTERNAL = 5  # a bug in the verifier: reported as such, never as "no match"

# The verifier's own ceiling on the watermark's chance-match p-value, on top of the issuer's
# published one (marking parameters allow up to 10^-1): at 10^-6 a false accusation needs a
# one-in-a-million chance even when an issuer publishes a lax threshold.
DEFAULT_MAX_P_VALUE = 1e-6

VERDICT_VERSION = 1


@dataclass(frozen=True)
class WatermarkReading:
    """The blind read-out under one issuer's parameters."""

    issuer: str
    issuer_key_id: str
    accepted: bool
    reason: str
    bit_errors: int | None
    code_bits: int
    p_value: float  # chance an unmarked model decodes to ANY payload this close (union bound)
    p_value_threshold: float
    watermark_commitment: str | None  # hex, when accepted


@dataclass(frozen=True)
class FingerprintCheck:
    distance: float | None  # RMS feature difference; None when no published fingerprint
    threshold: float
    match: bool
    side_record: str  # "verified against the entry's fingerprint_hash" / "not published" / "no fingerprint in entry"


@dataclass(frozen=True)
class Match:
    """A named issuance and the evidence for it."""

    method: str  # "watermark" or "fingerprint"
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


@dataclass
class Verdict:
    """What `emshield-verify` reports (``--json`` prints ``to_json()``)."""

    match: Match | None = None
    reason: str = ""
    suspect: dict[str, Any] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)
    watermark_readings: list[WatermarkReading] = field(default_factory=list)
    issuers_considered: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_MATCH if self.match is not None else EXIT_NO_MATCH

    def to_json(self) -> dict[str, Any]:
        return {"v": VERDICT_VERSION, "verdict": "match" if self.match else "no_match",
                "exit_code": self.exit_code, **asdict(self)}


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def reading_of(suspect: Suspect, issuer: ProvedIssuer, max_p_value: float = DEFAULT_MAX_P_VALUE) -> WatermarkReading:
    """The blind watermark read-out under one issuer's parameters.

    Accepted only when the issuer's own rule accepts it (decodes within the ECC bound, p-value at
    most 10^accept_log10_p) AND the p-value is at most ``max_p_value``: the verifier does not let
    an issuer's lax published threshold name devices on weak evidence.
    """
    params = issuer.params
    assert params is not None
    threshold = min(10.0 ** params.accept_log10_p, max_p_value)
    try:
        ex = suspect.extract(params)
    except Unreadable as exc:
        return WatermarkReading(issuer.name, issuer.key_id.hex(), False, str(exc), None, params.code_bits, 1.0,
                                threshold, None)
    accepted, reason = ex.accepted, ex.reason
    if accepted and ex.p_value > max_p_value:
        accepted, reason = False, f"chance-match p-value {ex.p_value:.3g} above the verifier's limit {max_p_value:.0e}"
    commitment = watermark_commitment(ex.payload, params).hex() if accepted else None
    return WatermarkReading(issuer.name, issuer.key_id.hex(), accepted, reason, ex.bit_errors, params.code_bits,
                            ex.p_value, threshold, commitment)


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


def _fingerprint_check(log: VerifiedLog, hit: ProvedIssuance, suspect_fp: fpmod.Fingerprint) -> FingerprintCheck:
    return fingerprint_check(log.side_fingerprint(hit), hit, suspect_fp)


def make_match(cp: Checkpoint, hit: ProvedIssuance, method: str, reading: WatermarkReading | None,
               fp: FingerprintCheck | None, registration_proof: str) -> Match:
    """The named issuance with the evidence: ``hit`` must already be signature-checked and proved."""
    e: Issuance = hit.entry
    proofs = {
        "checkpoint": f"signature verified with the pinned key ({cp.origin}, size {cp.size})",
        "checkpoint_root": cp.root_hash.hex(),
        "issuer_registration": registration_proof,
        "entry_signature": "verified with the registered issuer key",
        "inclusion": hit.proof,
    }
    return Match(method, hit.issuer.name, hit.issuer.key_id.hex(), hit.issuer.index, hit.issuer.revoked,
                 e.device_uuid_text, hit.index, hit.leaf_hash.hex(), e.issued_at, _iso(e.issued_at), e.policy,
                 reading, fp, proofs)


def _match(log: VerifiedLog, hit: ProvedIssuance, method: str, reading: WatermarkReading | None,
           fp: FingerprintCheck | None) -> Match:
    match = make_match(log.checkpoint, hit, method, reading, fp,
                       f"self-signature verified, included at leaf {hit.issuer.index}")
    if log.cosigned_by:
        match.proofs["witnesses"] = f"cosigned by {len(log.cosigned_by)}: {', '.join(log.cosigned_by)}"
    return match


def _fits(hit: ProvedIssuance, issuer: ProvedIssuer) -> bool:
    """An issuance belongs to the parameters we read with: same issuer, same backbone."""
    params = issuer.params
    return (hit.issuer.key_id == issuer.key_id and params is not None
            and hit.entry.backbone_id.hex() == params.backbone_id)


def verify_suspect(suspect: Suspect, log: VerifiedLog, *, scan: bool = True, progress: bool = False,
                   max_p_value: float = DEFAULT_MAX_P_VALUE) -> Verdict:
    """Decide which proved issuance, if any, the suspect comes from (raises LogMisbehaving /
    LogUnavailable from the log view, BadSuspect from the suspect)."""
    cp = log.checkpoint
    verdict = Verdict(
        suspect={"path": str(suspect.path), "kind": suspect.kind, "backbone_id": suspect.backbone_id},
        log={"url": log.client.url, "mode": log.mode, "origin": cp.origin, "tree_size": cp.size,
             "root_hash": cp.root_hash.hex(), "cosigned_by": list(log.cosigned_by)},
    )
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

    # 1. Watermark: read with each issuer's parameters, look the commitment up, prove the entry.
    named: list[Match] = []
    missing_commitments: set[bytes] = set()
    suspect_fps: dict[bytes, fpmod.Fingerprint | None] = {}
    for issuer in tqdm(candidates, desc="reading watermark", unit="issuer", disable=not progress, leave=False):
        reading = reading_of(suspect, issuer, max_p_value)
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
            verdict.notes.append(f"watermark of issuer {issuer.name!r} decoded (p={reading.p_value:.3g}), but the "
                                 "log's commitment index has no proved issuance for it")
            continue
        fp = suspect_fingerprint(suspect, issuer, suspect_fps)
        named += [_match(log, h, "watermark", reading, fp and _fingerprint_check(log, h, fp)) for h in hits]
    if len(named) == 1:
        verdict.match = named[0]
        return verdict
    if len(named) > 1:
        verdict.reason = (f"the watermark leads to {len(named)} proved issuances at once; "
                          "the verifier names no device when the evidence is ambiguous")
        return verdict

    # 2. Fingerprint: compare with every published fingerprint of the applicable issuers, found by
    #    replaying the whole log (so that a unique match within threshold is known to be unique);
    #    with --no-scan only issuances whose fingerprint hash equals the suspect's are compared.
    if scan:
        found = _scan(log, suspect, candidates, suspect_fps, missing_commitments, verdict)
    else:
        found = []
        for issuer in candidates:
            fp = suspect_fingerprint(suspect, issuer, suspect_fps)
            if fp is None:
                continue
            proved, truncated = log.issuances(fingerprint_hash=fp.hash())
            if truncated:
                verdict.reason = ("the log holds more issuances with this exact fingerprint than it returns; "
                                  "the verifier names no device when the evidence is ambiguous")
                return verdict
            found += [(hit, _fingerprint_check(log, hit, fp)) for hit in proved if _fits(hit, issuer)]
        verdict.notes.append("full replay disabled: the fingerprint was compared only with issuances "
                             "whose logged fingerprint hash equals the suspect's")
    matches = [(hit, chk) for hit, chk in found if chk.match]
    readings = {r.issuer_key_id: r for r in verdict.watermark_readings}
    if len(matches) == 1:
        hit, chk = matches[0]
        verdict.match = _match(log, hit, "fingerprint", readings.get(hit.issuer.key_id.hex()), chk)
    elif matches:
        verdict.reason = (f"the fingerprint is within threshold of {len(matches)} proved issuances (leaves "
                          f"{', '.join(str(h.index) for h, _ in matches)}), e.g. one core issued to several "
                          "devices without a watermark; the verifier names no device when the evidence is ambiguous")
    else:
        verdict.reason = _no_match_reason(verdict, found, scan)
    return verdict


def _scan(log: VerifiedLog, suspect: Suspect, candidates: list[ProvedIssuer], suspect_fps: dict[bytes, fpmod.Fingerprint | None],
          missing_commitments: set[bytes], verdict: Verdict) -> list[tuple[ProvedIssuance, FingerprintCheck]]:
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
            found.append((hit, _fingerprint_check(log, hit, fp)))
    return found


def _no_match_reason(verdict: Verdict, found: list[tuple[ProvedIssuance, FingerprintCheck]], scanned: bool) -> str:
    parts = []
    if any(r.accepted for r in verdict.watermark_readings):
        parts.append("a watermark decoded but no proved issuance carries its commitment")
    else:
        parts.append("no watermark decodes under any applicable issuer's parameters")
    distances = [chk.distance for _, chk in found if chk.distance is not None]
    if distances:
        parts.append(f"closest published fingerprint at distance {min(distances):.3f} "
                     f"(threshold {found[0][1].threshold:.3f}) among {len(distances)} compared")
    elif scanned:
        parts.append("no published fingerprint of an applicable issuer to compare with")
    else:
        parts.append("fingerprint look-up by exact hash found nothing (full replay disabled)")
    return "; ".join(parts)
