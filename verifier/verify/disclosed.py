"""Disclosed attributions: check, with no secret, an issuer's public claim that a suspect carries
one issuance's secret-tier mark (spec/watermark.md, "Disclosure"; spec/verify.md §3).

An attribution entry discloses one issuance's detection key K_j and commitment nonce. It is
evidence only after everything it claims is re-done here: the entry is signed by a proved
registered issuer and included in the checkpoint; the issuance it names is at that leaf, hashes to
the named leaf hash, is signed by its issuer and included; (nonce, K_j) opens the issuance's
logged secret-mark commitment (so K_j is the key the issuer committed to *before* the leak, not
one chosen afterwards to fit the suspect); and the presence score recomputed on this suspect with
directions re-derived from K_j passes the naming threshold. The issuer's own figures in the entry
are reported beside the recomputed ones, never used to decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from emshield.marking import secret
from verifier.errors import Unreadable
from verifier.verify.log_view import ProvedAttribution, VerifiedLog

if TYPE_CHECKING:  # loading a suspect imports torch; deciding does not
    from verifier.verify.suspect import Suspect


@dataclass(frozen=True)
class DisclosedMatch:
    """A device named by a disclosed key: the attribution at ``attribution_index`` checks out."""

    attribution_index: int
    attribution_leaf_hash: str
    issuance_index: int
    issuance_leaf_hash: str
    device_uuid: str
    issuer: str  # the issuance's issuer (name)
    issuer_key_id: str
    signer: str  # who signed the attribution (name)
    signer_key_id: str
    signed_by_issuing_key: bool  # signed by the very key that signed the issuance
    score: float  # presence score T recomputed on this suspect
    p_value: float  # exp(−T²/2): bounds the chance that a suspect not marked with K_j scores this high
    threshold_p: float  # named at p ≤ this
    terms: int
    disclosed_score: float  # what the issuer measured (score_e6 / 10^6), for comparison only
    attributed_at: int  # POSIX seconds, as the issuer claims
    proofs: dict[str, str]


@dataclass(frozen=True)
class RejectedDisclosure:
    """An attribution for this suspect's digest that does not prove what it claims, and why."""

    attribution_index: int
    reason: str


def check_attribution(suspect: Suspect, log: VerifiedLog, att: ProvedAttribution,
                      max_p_value: float) -> DisclosedMatch | RejectedDisclosure:
    """Re-do one attribution (raises LogMisbehaving when the log contradicts itself)."""
    e = att.entry
    issuance = log.issuance_at(e.issuance_index, e.issuance_leaf_hash, f"issuance at leaf {e.issuance_index} "
                               f"(named by the attribution at leaf {att.index})")
    entry = issuance.entry

    def reject(why: str) -> RejectedDisclosure:
        return RejectedDisclosure(att.index, why)

    if entry.secret_mark_commitment is None:
        return reject(f"the issuance at leaf {issuance.index} carries no secret-tier commitment")
    if secret.commitment(e.detection_nonce, e.detection_key) != entry.secret_mark_commitment:
        return reject(f"the disclosed key and nonce do not open the commitment of the issuance at leaf {issuance.index}")
    params = issuance.issuer.params
    if params is None or entry.backbone_id.hex() != params.backbone_id:
        return reject(f"the issuer of leaf {issuance.index} publishes no usable marking parameters for its backbone")
    unfit = suspect.unfit_reason(params)
    if unfit is not None:
        return reject(f"the issuer's marking parameters do not fit this suspect: {unfit}")
    try:
        presence = suspect.secret_presence(params, e.detection_key)
    except Unreadable as exc:
        return reject(str(exc))
    threshold = min(secret.NAME_ALPHA, max_p_value)
    if presence.p_value > threshold:
        return reject(f"the disclosed key's mark is not present in this suspect: recomputed score {presence.score:.2f} "
                      f"(p = {presence.p_value:.3g} > {threshold:g}); the issuer claimed {e.score_e6 / 1e6:.2f}")
    proofs = {f"attribution leaf {att.index}": att.proof, f"issuance leaf {issuance.index}": issuance.proof,
              f"registration leaf {issuance.issuer.index}": "inclusion proof verified against the checkpoint"}
    return DisclosedMatch(
        att.index, att.leaf_hash.hex(), issuance.index, issuance.leaf_hash.hex(), entry.device_uuid_text,
        issuance.issuer.name, issuance.issuer.key_id.hex(), att.signer.name, att.signer.key_id.hex(),
        att.signer.key_id == issuance.issuer.key_id, presence.score, presence.p_value, threshold,
        int(presence.terms.size), e.score_e6 / 1e6, e.attributed_at, proofs)


def check_disclosures(suspect: Suspect, log: VerifiedLog, digest: bytes,
                      max_p_value: float) -> tuple[list[DisclosedMatch], list[RejectedDisclosure], bool]:
    """Every attribution the log holds for this suspect digest, re-done: (matches, rejected, truncated)."""
    found, truncated = log.attributions(digest)
    matches: list[DisclosedMatch] = []
    rejected: list[RejectedDisclosure] = []
    for att in found:
        result = check_attribution(suspect, log, att, max_p_value)
        (matches if isinstance(result, DisclosedMatch) else rejected).append(result)
    return matches, rejected, truncated
