"""Air-gapped verification: does a suspect carry the issuance of ONE bundle? (spec/verify.md §6)

The bundle (spec/bundle.md) brings the issuer's registration entry (with the public marking
parameters), the issuance entry, and for both a C2SP tlog-proof with the log's signed checkpoint;
`emshield.bundle.verify_bundle` checks all of it against the pinned log key. No network is used.
The question is narrower than online: not "which device?" but "this device, or not?".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emshield.bundle import VerifiedBundle
from emshield.marking import fingerprint as fpmod
from emshield.marking.params import MarkingParams, ParamsError
from verifier.verify.decide import (
    DEFAULT_MAX_P_VALUE,
    Verdict,
    fingerprint_check,
    make_match,
    reading_of,
    suspect_fingerprint,
)
from verifier.verify.log_view import ProvedIssuance, ProvedIssuer

if TYPE_CHECKING:
    from verifier.verify.suspect import Suspect


def bundle_issuance(vb: VerifiedBundle) -> ProvedIssuance:
    """The bundle's issuance as a proved issuance (its signature and proofs were verified)."""
    reg = vb.registration
    try:
        params, error = MarkingParams.from_cbor(reg.marking_params), None
    except ParamsError as exc:
        params, error = None, f"marking parameters unusable: {exc}"
    issuer = ProvedIssuer(reg.key_id, reg.issuer_public_key, reg.name, vb.registration_index, reg.registered_at, None,
                    params, error)
    return ProvedIssuance(vb.issuance_index, vb.issuance_leaf_hash, vb.issuance, issuer,
                          f"bundle tlog-proof at leaf {vb.issuance_index} verified against the log's checkpoint "
                          f"(size {vb.checkpoint.size})")


def verify_offline(suspect: Suspect, vb: VerifiedBundle, published: fpmod.Fingerprint | None = None, *,
                   max_p_value: float = DEFAULT_MAX_P_VALUE) -> Verdict:
    """Match the suspect against the bundle's issuance only.

    ``published`` is the issuance's full fingerprint (the bundle's side record), already checked
    against the entry's ``fingerprint_hash``; without it the fingerprint can only match exactly.
    """
    hit = bundle_issuance(vb)
    issuer, entry, cp = hit.issuer, hit.entry, vb.checkpoint
    verdict = Verdict(
        suspect={"path": str(suspect.path), "kind": suspect.kind, "backbone_id": suspect.backbone_id},
        log={"mode": "offline", "origin": cp.origin, "tree_size": cp.size, "root_hash": cp.root_hash.hex()},
    )
    params = issuer.params
    why = issuer.params_error or (suspect.unfit_reason(params) if params else None)
    if params is not None and why is None and entry.backbone_id.hex() != params.backbone_id:
        why = "the issuance is for another backbone than the issuer's marking parameters"
    verdict.issuers_considered.append({"issuer": issuer.name, "key_id": issuer.key_id.hex(), "applies": why is None,
                                       "reason": why or "parameters fit the suspect"})
    if why is not None or params is None:
        verdict.reason = f"the bundle's issuer parameters do not apply to this suspect: {why}"
        return verdict
    registration = (f"self-signature verified; bundle tlog-proof at leaf {issuer.index} verified "
                    f"(checkpoint size {vb.registration_checkpoint.size})")
    reading = reading_of(suspect, issuer, max_p_value)
    verdict.watermark_readings.append(reading)
    fp = suspect_fingerprint(suspect, issuer, {})
    if published is None and fp is not None and entry.fingerprint_hash is not None and fp.hash() == entry.fingerprint_hash:
        published = fp  # an unmodified adapter: its fingerprint is the logged one, byte for byte
    check = fingerprint_check(published, hit, fp) if fp is not None else None
    if reading.accepted and entry.watermark_commitment is not None \
            and bytes.fromhex(reading.watermark_commitment or "") == entry.watermark_commitment:
        verdict.match = make_match(cp, hit, "watermark", reading, check, registration)
    elif check is not None and check.match:
        verdict.match = make_match(cp, hit, "fingerprint", reading, check, registration)
    elif reading.accepted:
        verdict.reason = ("the suspect carries a watermark of this issuer, but for another issuance than the "
                          "bundle's (verify online to find which)")
    else:
        verdict.reason = "no watermark decodes" + (
            f"; fingerprint distance {check.distance:.3f} (threshold {check.threshold:.3f})"
            if check is not None and check.distance is not None else
            "; the fingerprint differs from the logged one and the bundle carries no published fingerprint")
    return verdict
