"""Gather the evidence behind a verdict for its forensic report (spec/report.md).

The verdict says what was proved; the report shows the values a reader needs to check it by hand:
the suspect's digests, the checkpoint note as served, the audit path of every issuance the verdict
lists (and of its issuer's registration), the per-bit and per-layer watermark statistics and every
fingerprint distance compared. Everything is recomputed from the same suspect and the same
verified log view the verdict came from; a proof the verifier did not already hold (an issuance
proved by the full replay) is fetched and checked here, against the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emshield.bundle import VerifiedBundle
from emshield.marking import ecc, soft
from emshield.marking import fingerprint as fpmod
from emshield.marking.params import MarkingParams
from emshield.tlog import merkle
from verifier.errors import Unreadable
from verifier.report.data import BitEvidence, Distance, InclusionRecord, ReportData
from verifier.verify.decide import Verdict
from verifier.verify.digest import suspect_digests
from verifier.verify.log_view import ProvedIssuer, StaticVerifiedLog, VerifiedLog

if TYPE_CHECKING:  # loading a suspect imports torch; `emshield-verify --help` does not
    from verifier.verify.suspect import Suspect

def bit_evidence(suspect: Suspect, issuer: str, params: MarkingParams) -> BitEvidence | None:
    """Per-bit statistics, the best candidate's signs, and the statistic of each layer alone."""
    try:
        z = np.asarray(suspect.extract(params).z, dtype=np.float64)
        layers = tuple((layer.name, tuple(float(x) for x in suspect.extract(
            dataclasses.replace(params, layers=(layer,))).z)) for layer in params.layers)
    except Unreadable:
        return None
    found = soft.candidates(z, params.rs_nsym)
    signs = tuple(2 * int(b) - 1 for b in ecc.encode(found[0].payload, params.rs_nsym)) if found else None
    return BitEvidence(issuer, params.tau, tuple(float(x) for x in z), signs, layers)


def _layer_distances(published: fpmod.Fingerprint, suspect: fpmod.Fingerprint) -> tuple[tuple[str, float], ...]:
    out = []
    for (name, a), (_, b) in zip(published.layers, suspect.layers):
        diff = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) / fpmod.QUANT
        out.append((name, float(math.sqrt(float(np.mean(diff * diff))))))
    return tuple(out)


def distances(verdict: Verdict, suspect: Suspect) -> tuple[Distance, ...]:
    fps: dict[bytes, fpmod.Fingerprint] = {}
    out = []
    for c in sorted(verdict.compared, key=lambda c: c.hit.index):
        if c.check.distance is None or c.hit.issuer.params is None:
            continue
        key = c.hit.issuer.key_id
        if key not in fps:
            fps[key] = suspect.fingerprint(c.hit.issuer.params)
        out.append(Distance(c.hit.index, c.hit.entry.device_uuid_text, c.hit.issuer.name, c.check.distance,
                            c.check.threshold, _layer_distances(c.published, fps[key])))
    return tuple(out)


def _listed(verdict: Verdict) -> list[tuple[str, int, str]]:
    """(what, leaf index, leaf hash) of every issuance the verdict names or lists."""
    if verdict.device is not None:
        m = verdict.device
        return [(f"issuance to device {m.device_uuid} (leaf {m.leaf_index})", m.leaf_index, m.leaf_hash)]
    if verdict.core is not None:
        return [(f"issuance to device {i.device_uuid} (leaf {i.leaf_index})", i.leaf_index, i.leaf_hash)
                for i in verdict.core.issuances]
    out = []
    for d in verdict.disclosed:
        out += [(f"attribution disclosing the key of leaf {d.issuance_index} (leaf {d.attribution_index})",
                 d.attribution_index, d.attribution_leaf_hash),
                (f"issuance to device {d.device_uuid} (leaf {d.issuance_index})", d.issuance_index, d.issuance_leaf_hash)]
    return out


def _issuer_of(verdict: Verdict, issuers: dict[bytes, ProvedIssuer]) -> ProvedIssuer | None:
    match = verdict.device or verdict.core or (verdict.disclosed[0] if verdict.disclosed else None)
    return None if match is None else issuers.get(bytes.fromhex(match.issuer_key_id))


def online_proofs(verdict: Verdict, log: VerifiedLog) -> tuple[InclusionRecord, ...]:
    """The issuer's registration and every listed issuance, each with its audit path."""
    cp = log.checkpoint
    wanted = _listed(verdict)
    issuer = _issuer_of(verdict, log.issuers())
    if issuer is not None:
        wanted.insert(0, (f"registration of issuer {issuer.name!r} (leaf {issuer.index})", issuer.index, ""))
    out = []
    for what, index, leaf_hash in wanted:
        how = ("inclusion proof from the log, verified against the checkpoint root" if index in log.inclusion else
               "proved by the full replay; this audit path was "
               + ("computed from the mirror's hash tiles" if isinstance(log, StaticVerifiedLog) else "fetched")
               + " for the report and verified against the checkpoint root")
        proof = log.audit_path(index, bytes.fromhex(leaf_hash) if leaf_hash else None)
        out.append(InclusionRecord(what, index, cp.size, proof.leaf_hash.hex(), tuple(h.hex() for h in proof.hashes),
                                   cp.root_hash.hex(), how))
    return tuple(out)


def bundle_proofs(vb: VerifiedBundle) -> tuple[InclusionRecord, ...]:
    b = vb.bundle
    reg_leaf = merkle.leaf_hash(b.registration_entry)
    how = "bundle tlog-proof, verified against its checkpoint"
    return (
        InclusionRecord(f"registration of issuer {vb.registration.name!r} (leaf {vb.registration_index})",
                        vb.registration_index, vb.registration_checkpoint.size, reg_leaf.hex(),
                        tuple(h.hex() for h in b.registration_proof.hashes),
                        vb.registration_checkpoint.root_hash.hex(), how),
        InclusionRecord(f"issuance to device {vb.device_uuid} (leaf {vb.issuance_index})", vb.issuance_index,
                        vb.checkpoint.size, vb.issuance_leaf_hash.hex(), tuple(h.hex() for h in b.issuance_proof.hashes),
                        vb.checkpoint.root_hash.hex(), how),
    )


def gather(verdict: Verdict, suspect: Suspect, params_by_issuer: dict[str, MarkingParams], *,
           note: bytes, pinned_key: str, proofs: tuple[InclusionRecord, ...], commands: tuple[str, ...],
           notes: list[str]) -> ReportData:
    """The report's data. ``params_by_issuer``: each read issuer's parameters, by key id (hex)."""
    files, digest = suspect_digests(suspect.path)
    bits = []
    for r in verdict.watermark_readings:
        params = params_by_issuer.get(r.issuer_key_id)
        ev = bit_evidence(suspect, r.issuer, params) if params is not None else None
        if ev is None:
            notes.append(f"watermark under issuer {r.issuer!r}: no statistics to show ({r.reason})")
        else:
            bits.append(ev)
    return ReportData(verdict.to_json(), files, digest, note.decode("utf-8", "replace"), pinned_key, proofs,
                      tuple(bits), distances(verdict, suspect), commands, tuple(notes))


def gather_online(verdict: Verdict, suspect: Suspect, log: VerifiedLog, *, pinned_key: str,
                  commands: tuple[str, ...]) -> ReportData:
    params = {i.key_id.hex(): i.params for i in log.issuers().values() if i.params is not None}
    return gather(verdict, suspect, params, note=log.note, pinned_key=pinned_key, proofs=online_proofs(verdict, log),
                  commands=commands, notes=[])


def gather_offline(verdict: Verdict, suspect: Suspect, vb: VerifiedBundle, *, pinned_key: str,
                   commands: tuple[str, ...]) -> ReportData:
    from verifier.verify.offline import bundle_issuance

    issuer = bundle_issuance(vb).issuer
    params = {issuer.key_id.hex(): issuer.params} if issuer.params is not None else {}
    return gather(verdict, suspect, params, note=vb.bundle.issuance_proof.checkpoint, pinned_key=pinned_key,
                  proofs=bundle_proofs(vb), commands=commands, notes=[])


def rerun_commands(params: dict[str, Any]) -> tuple[str, ...]:
    """The commands that re-run this verification, from the CLI's own parameters."""
    model = str(params["model"])
    args = ["emshield-verify", model]
    if params.get("bundle") is not None:
        args += ["--bundle", str(params["bundle"])]
    if params.get("log_url"):
        args += ["--log", params["log_url"]]
    args += ["--log-key", params.get("log_key") or "KEY"]
    if params.get("backbone") is not None:
        args += ["--backbone", str(params["backbone"])]
    for key in params.get("witness_keys") or ():
        args += ["--witness", key]
    if params.get("witness_quorum") is not None:
        args += ["--witness-quorum", str(params["witness_quorum"])]
    args += ["--max-p-value", f"{params['max_p_value']:g}"]
    if params.get("no_scan"):
        args.append("--no-scan")
    digest = (f"sha256sum {shlex.quote(model)}" if Path(model).is_file() else
              f"(cd {shlex.quote(model)} && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum)")
    return (digest, shlex.join(args + ["--json"]))


@dataclass
class ReportRequest:
    """Where the report goes; ``data`` is filled in by the verification, ``write`` renders it."""

    html: Path | None
    pdf: Path | None
    commands: tuple[str, ...]
    data: ReportData | None = None
    written: list[Path] = field(default_factory=list)

    def write(self) -> None:
        from verifier.report.html import render

        assert self.data is not None
        text = render(self.data)
        if self.html is not None:
            self.html.write_text(text, encoding="utf-8")
            self.written.append(self.html)
        if self.pdf is not None:
            from verifier.report.pdf import write_pdf

            write_pdf(text, self.pdf)
            self.written.append(self.pdf)
