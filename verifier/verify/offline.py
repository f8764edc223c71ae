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
    Compared,
    Verdict,
    core_lineage,
    fingerprint_check,
    make_device,
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

    The device is named only by the watermark, read to the bundle's own commitment. A watermark
    read to another payload says the suspect is another issuance: nobody is named, whatever the
    fingerprint says. Otherwise a fingerprint within threshold of the bundle's published one (its
    side record, already checked against the entry's ``fingerprint_hash``) identifies the core
    only: offline nothing shows which other issuances carry the same core.
    """
    hit = bundle_issuance(vb)
    issuer, entry, cp = hit.issuer, hit.entry, vb.checkpoint
    verdict = Verdict(
        suspect=suspect.describe(),
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
    reading = reading_of(suspect, issuer, cp.size, max_p_value)
    verdict.watermark_readings.append(reading)
    fp = suspect_fingerprint(suspect, issuer, {})
    if published is None and fp is not None and entry.fingerprint_hash is not None and fp.hash() == entry.fingerprint_hash:
        published = fp  # an unmodified adapter: its fingerprint is the logged one, byte for byte
    check = fingerprint_check(published, hit, fp) if fp is not None else None
    if check is not None:
        verdict.fingerprint = {"distance": check.distance, "threshold": check.threshold, "compared": 1}
        if published is not None:
            verdict.compared = [Compared(hit, published, check)]
    if reading.accepted and entry.watermark_commitment is not None \
            and bytes.fromhex(reading.watermark_commitment or "") == entry.watermark_commitment:
        verdict.device = make_device(cp, hit, reading, check, registration)
        return verdict
    if reading.decoded:
        verdict.reason = ("the suspect carries this issuer's watermark for another issuance than the bundle's "
                          "(verify online to find which); the fingerprint does not name the bundle's core")
        return verdict
    if check is None or published is None:
        verdict.reason = ("no watermark is read; the fingerprint differs from the logged one and the bundle carries "
                          "no published fingerprint")
        return verdict
    core, fp_why = core_lineage([Compared(hit, published, check)], cp, lambda _: registration)
    if core is None:
        verdict.reason = f"no watermark is read; fingerprint {fp_why}"
        return verdict
    verdict.core = core
    verdict.reason = ("the suspect carries the bundle's core; no per-device evidence names its device, and offline "
                      "nothing shows which other issuances carry the same core (verify online)")
    return verdict
