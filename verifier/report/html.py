"""Render the forensic report as one self-contained HTML file (spec/report.md).

Inline CSS and inline SVG only: no script, no font, no image, no link to anything outside the
file, so the report opens the same offline, years later, and makes no request that could tell
anyone it was read. Every value is HTML-escaped: names, notes and reasons come from the log and
the suspect, which an adversary controls.
"""

from __future__ import annotations

import base64
import binascii
from html import escape
from typing import Any

from emshield.tlog import merkle
from verifier.report import plots
from verifier.report.data import Distance, InclusionRecord, ReportData

KIND_TITLES = {"device": "Device named", "disclosed": "Device named by disclosed key",
               "core": "Core identified, no device named", "none": "Nothing named"}

CSS = """
body{font:14px/1.45 "DejaVu Sans",sans-serif;color:#1f2328;max-width:1000px;margin:24px auto;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
h3{font-size:14px;margin:16px 0 6px}
.verdict{padding:12px 14px;border-radius:6px;border:2px solid;font-size:15px}
.verdict.device,.verdict.disclosed{border-color:#1a7f37;background:#dafbe1} .verdict.core{border-color:#9a6700;background:#fff8c5}
.verdict.none{border-color:#57606a;background:#f6f8fa}
.kind{font-weight:bold;text-transform:uppercase;font-size:12px;letter-spacing:.05em}
table{border-collapse:collapse;margin:6px 0;width:100%} td,th{border:1px solid #d0d7de;padding:3px 6px;
text-align:left;vertical-align:top} th{background:#f6f8fa;width:28%}
code,pre,.hex{font-family:"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
pre{background:#f6f8fa;padding:8px;white-space:pre-wrap;border-radius:4px}
.ok{color:#1a7f37;font-weight:bold} .bad{color:#cf222e;font-weight:bold}
.plot svg{max-width:100%;height:auto} ul{margin:4px 0}
@media print{body{margin:0;max-width:none} h2{break-after:avoid} .plot,table{break-inside:avoid}}
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _table(rows: list[tuple[str, Any]], raw: bool = False) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v if raw else _e(v)}</td></tr>" for k, v in rows) + "</table>"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _hex(value: str) -> str:
    return f'<span class="hex">{_e(value)}</span>'


def verdict_sentence(v: dict[str, Any]) -> str:
    """The verdict in one sentence: exactly what its evidence proves (spec/verify.md §1)."""
    log = v["log"]
    where = f"the log {log.get('origin')} at tree size {log.get('tree_size')}"
    if v["verdict"] == "device":
        m = v["device"]
        w = m["watermark"]
        return (f"The suspect carries the watermark of the issuance at leaf {m['leaf_index']} of {where}, issued by "
                f"{m['issuer']} to device {m['device_uuid']} on {m['issued_at_utc']}: a model not carrying this mark "
                f"scores as high against any of the {w['issuances_counted']} issuances counted with probability at "
                f"most {w['p_value']:.1e}, and the issuance is signed by the issuer's registered key and proved "
                f"included in the checkpoint signed by the pinned log key.")
    if v["verdict"] == "disclosed":
        named = "; ".join(f"the secret mark of the issuance at leaf {d['issuance_index']} (device {d['device_uuid']}, "
                          f"issuer {d['issuer']}), disclosed by the attribution at leaf {d['attribution_index']}: "
                          f"presence score {d['score']:.2f} recomputed on this file, p ≤ {d['p_value']:.1e}"
                          for d in v["disclosed"])
        return (f"The suspect carries {named}, in {where}. The disclosed key opens the commitment the issuer logged "
                "when it issued that copy, so it was fixed before the leak; a model not carrying its mark scores "
                "this high with at most that probability.")
    if v["verdict"] == "core":
        c = v["core"]
        leaves = ", ".join(str(i["leaf_index"]) for i in c["issuances"])
        return (f"The suspect carries the core that {c['issuer']} issued at leaf{'s' if len(c['issuances']) > 1 else ''} "
                f"{leaves} of {where} (fingerprint distance {c['distance']:.3f}, threshold {c['threshold']:.3f}); "
                f"no device is named: a fingerprint identifies a core, not the device it was issued to.")
    return f"Nothing in {where} is shown to match the suspect: {v['reason']}."


def established(v: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What was and was not established, in plain words."""
    log = v["log"]
    yes = [f"The checkpoint of {log.get('origin')} (size {log.get('tree_size')}, root {log.get('root_hash')}) "
           "verifies with the pinned log key" + (f" and is cosigned by {', '.join(log['cosigned_by'])}"
                                                 if log.get("cosigned_by") else "") + "."]
    no = []
    if v["verdict"] == "device":
        m = v["device"]
        w = m["watermark"]
        yes += [f"The watermark read from the suspect is the one committed in the issuance at leaf {m['leaf_index']} "
                f"(score {w['score']:.2f}, {w['bit_errors']} of {w['code_bits']} raw bit errors, chance-match p-value "
                f"{w['p_value']:.1e} ≤ threshold {w['p_value_threshold']:.0e}).",
                f"That issuance, to device {m['device_uuid']}, is signed by {m['issuer']}'s registered key and is "
                "included in the verified checkpoint (proofs below)."]
        fp = m.get("fingerprint")
        if fp and fp.get("distance") is not None:
            yes.append(f"The fingerprint is at distance {fp['distance']:.3f} of the issuance's published one "
                       f"(threshold {fp['threshold']:.3f}: {'within' if fp['match'] else 'not within'}); "
                       "it is supporting evidence only.")
        no += ["Who leaked the model, or how it left the device: the report names the issuance whose mark the suspect "
               "carries, that is the device it was issued to.",
               "Anything about other copies of the same core: each issuance carries its own mark."]
        if m.get("issuer_revoked"):
            no.append("The issuer's key was since revoked by the log operator: weigh the issuance accordingly.")
    elif v["verdict"] == "disclosed":
        for d in v["disclosed"]:
            signer = "the issuance's own key" if d["signed_by_issuing_key"] else f"{d['signer']}'s key {d['signer_key_id']}"
            yes += [f"The attribution at leaf {d['attribution_index']} is signed by {signer} and included in the "
                    f"verified checkpoint; it names this file by its SHA-256 and the issuance at leaf "
                    f"{d['issuance_index']}, which is signed by {d['issuer']}'s registered key and included.",
                    f"Its disclosed key opens that issuance's logged secret-mark commitment, and the mark's presence "
                    f"score recomputed on this file from that key is {d['score']:.2f} over {d['terms']} terms "
                    f"(p ≤ {d['p_value']:.1e}, threshold {d['threshold_p']:.0e}; the issuer claimed "
                    f"{d['disclosed_score']:.2f})."]
        no += ["Who leaked the model, or how: the report names the issuances whose secret marks the file carries.",
               "That the public watermark names anyone: it was not read at the required significance (details below)."]
    elif v["verdict"] == "core":
        c = v["core"]
        yes += [f"The suspect's fingerprint is within the calibrated threshold of the published fingerprint of "
                f"{c['issuer']}'s core (distance {c['distance']:.3f} ≤ {c['threshold']:.3f}) and leads every other "
                f"lineage by at least {c['margin']:g}.",
                f"The {len(c['issuances'])} listed issuances of that core are signed by the issuer and included in the "
                "verified checkpoint."]
        no += ["Which device the suspect came from: no per-device watermark was read, and the same core went to "
               "every listed issuance" + (" (these copies are indistinguishable)" if c.get("indistinguishable") else "")
               + "."]
    else:
        yes.append("No watermark of an applicable issuer is read at the required significance, and no published "
                   "fingerprint is within threshold with the required margin (details below).")
        no += ["That the suspect was not derived from an issued core: heavy modification can weaken the evidence "
               "below what the verifier accepts, and the verifier names nobody on weak evidence.",
               "Anything about any device or core: nobody is named."]
    return yes, no


def _signatures(note: str, pinned_key: str, cosigned_by: list[str]) -> str:
    """The note's signature lines, each with whether this verification checked it."""
    pinned = pinned_key.split("+")
    rows = []
    body, _, sigs = note.partition("\n\n")
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            continue
        name, _, b64 = line[2:].partition(" ")
        try:
            key_hash = base64.b64decode(b64, validate=True)[:4].hex()
        except (binascii.Error, ValueError):
            key_hash = "?"
        if len(pinned) >= 2 and name == pinned[0] and key_hash == pinned[1]:
            status = '<span class="ok">verified with the pinned log key</span>'
        elif name in cosigned_by:
            status = '<span class="ok">witness cosignature verified (witness policy)</span>'
        else:
            status = "not checked by this verification"
        rows.append(f"<tr><td>{_e(name)}</td><td>{_hex(key_hash)}</td><td>{status}</td></tr>")
    return ("<table><tr><th>signer</th><th>key hash</th><th>status</th></tr>" + "".join(rows) + "</table>")


def inclusion_steps(p: InclusionRecord) -> tuple[list[tuple[str, str, str]], str]:
    """RFC 9162 §2.1.3.2 step by step: (sibling, side, node) per path hash, and the root reached."""
    index, size = p.index, p.tree_size
    inner = (index ^ (size - 1)).bit_length()
    acc = bytes.fromhex(p.leaf_hash)
    steps = []
    for i, h in enumerate(p.path):
        sib = bytes.fromhex(h)
        left = i >= inner or (index >> i) & 1
        acc = merkle.node_hash(sib, acc) if left else merkle.node_hash(acc, sib)
        steps.append((h, "left" if left else "right", acc.hex()))
    root = merkle.root_from_inclusion_proof(bytes.fromhex(p.leaf_hash), index, size,
                                            [bytes.fromhex(h) for h in p.path]).hex()
    assert root == acc.hex()
    return steps, root


def _proof(p: InclusionRecord) -> str:
    try:
        steps, root = inclusion_steps(p)
    except merkle.ProofError as exc:
        steps, root = [], f"(does not recompute: {exc})"
    ok = root == p.root
    rows = "".join(f"<tr><td>{i}</td><td>{_hex(h)}</td><td>{side}</td><td>{_hex(n)}</td></tr>"
                   for i, (h, side, n) in enumerate(steps))
    return (f"<h3>{_e(p.what)}</h3>"
            + _table([("leaf index", p.index), ("tree size", p.tree_size), ("leaf hash", _hex(p.leaf_hash)),
                      ("checkpoint root", _hex(p.root)), ("proved", _e(p.how)),
                      ("root recomputed by this report", _hex(root) + (' <span class="ok">= checkpoint root</span>' if ok
                                                                      else ' <span class="bad">≠ checkpoint root</span>'))],
                     raw=True)
            + "<table><tr><th>step</th><th>audit path hash (sibling)</th><th>sibling on the</th>"
              "<th>node = SHA-256(0x01 ‖ left ‖ right)</th></tr>" + rows + "</table>")


def _reading(r: dict[str, Any]) -> str:
    rows = [("issuer", f"{r['issuer']} (key id {r['issuer_key_id']})"),
            ("significant over the issuances counted", "yes (its commitment was looked up in the log)"
             if r["accepted"] else f"no: {r['reason']}"),
            ("significant over every 2^48 payload", "yes: the suspect carries a mark of this issuer" if r["decoded"]
             else "no: this alone does not show the suspect carries a mark of this issuer"),
            ("best candidate score S", "—" if r["score"] is None else f"{r['score']:.3f}"),
            ("raw bit errors", "—" if r["bit_errors"] is None else f"{r['bit_errors']} of {r['code_bits']}"),
            ("runner-up mark's score", "—" if not r["runner_up_score"] else f"{r['runner_up_score']:.3f}"),
            ("issuances counted (union bound)", r["issuances_counted"]),
            ("chance-match p-value", f"{r['p_value']:.3e} (log10 {r['log10_p_value']:.2f})"),
            ("… over every 2^48 payload", f"log10 {r['log10_p_value_any']:.2f}"),
            ("threshold", f"{r['p_value_threshold']:.0e}"),
            ("watermark commitment", r["watermark_commitment"] or "—")]
    return _table(rows)


def _distances_table(ds: tuple[Distance, ...], lineage: set[int]) -> str:
    rows = "".join(f"<tr><td>{d.leaf_index}</td><td>{_e(d.device_uuid)}</td><td>{_e(d.issuer)}</td>"
                   f"<td>{d.distance:.4f}</td><td>{d.threshold:.3f}</td><td>{'yes' if d.leaf_index in lineage else ''}</td></tr>"
                   for d in sorted(ds, key=lambda d: (d.distance, d.leaf_index)))
    return ("<table><tr><th>leaf</th><th>device</th><th>issuer</th><th>distance</th><th>threshold</th>"
            "<th>named or in the lineage</th></tr>" + rows + "</table>")


def _match(v: dict[str, Any]) -> str:
    if v["verdict"] == "device":
        m = v["device"]
        return _table([("device", m["device_uuid"]), ("issuer", f"{m['issuer']} (key id {m['issuer_key_id']}, "
                                                                 f"registered at leaf {m['issuer_registration_index']})"),
                       ("issuance", f"leaf {m['leaf_index']}, issued {m['issued_at_utc']}, policy {m['policy']}"),
                       ("leaf hash", m["leaf_hash"]), ("named by", m["method"])]
                      + [(f"proof: {k}", val) for k, val in m["proofs"].items()])
    if v["verdict"] == "core":
        c = v["core"]
        rows = "".join(f"<tr><td>{i['leaf_index']}</td><td>{_e(i['device_uuid'])}</td><td>{_e(i['policy'])}</td>"
                       f"<td>{_e(i['issued_at_utc'])}</td><td>{_num(i['distance'])}</td></tr>"
                       for i in c["issuances"])
        return (_table([("issuer", f"{c['issuer']} (key id {c['issuer_key_id']}, registered at leaf "
                                   f"{c['issuer_registration_index']})"),
                        ("nearest distance", f"{c['distance']:.4f} (threshold {c['threshold']:.3f})"),
                        ("nearest other lineage", _num(c["runner_up_distance"])),
                        ("required margin", c["margin"])] + [(f"proof: {k}", val) for k, val in c["proofs"].items()])
                + "<table><tr><th>leaf</th><th>device</th><th>policy</th><th>issued</th><th>distance</th></tr>"
                + rows + "</table>")
    if v["verdict"] == "disclosed":
        return "".join(_table([("device", d["device_uuid"]), ("issuer", f"{d['issuer']} (key id {d['issuer_key_id']})"),
                               ("issuance", f"leaf {d['issuance_index']}, leaf hash {d['issuance_leaf_hash']}"),
                               ("named by", f"disclosed key, attribution at leaf {d['attribution_index']}"),
                               ("attribution signed by", f"{d['signer']} (key id {d['signer_key_id']})")]
                              + [(f"proof: {k}", val) for k, val in d["proofs"].items()]) for d in v["disclosed"])
    return "<p>No issuance and no core is named.</p>"


def render(data: ReportData) -> str:
    """The whole report, as HTML text."""
    v = data.verdict
    kind = v["verdict"]
    log = v["log"]
    yes, no = established(v)
    lineage = {i["leaf_index"] for i in v["core"]["issuances"]} if v.get("core") else set()
    if v.get("device"):
        lineage = {v["device"]["leaf_index"]}
    parts = [f"<h1>EMShield forensic report</h1><p>Verdict format v{_e(v['v'])}, exit code {_e(v['exit_code'])}.</p>",
             f'<div class="verdict {_e(kind)}" id="verdict"><div class="kind">{_e(KIND_TITLES.get(kind, kind))}</div>'
             f"{_e(verdict_sentence(v))}</div>",
             "<h2>What this establishes</h2><ul>" + "".join(f"<li>{_e(s)}</li>" for s in yes) + "</ul>",
             "<h2>What this does not establish</h2><ul>" + "".join(f"<li>{_e(s)}</li>" for s in no) + "</ul>"]
    suspect = v["suspect"]
    parts.append("<h2>Suspect</h2>" + _table([
        ("path", _e(suspect.get("path"))), ("kind", _e(suspect.get("kind"))), ("SHA-256", _hex(data.suspect_sha256)),
        ("backbone id", _e(suspect.get("backbone_id") or "—")),
        ("canonicalisation", _e(suspect.get("canonicalisation") or "—"))], raw=True))
    if len(data.suspect_files) > 1 or data.suspect_files and data.suspect_files[0].path != ".":
        parts.append("<table><tr><th>file</th><th>SHA-256</th><th>bytes</th></tr>" + "".join(
            f"<tr><td>{_e(f.path)}</td><td>{_hex(f.sha256)}</td><td>{f.size}</td></tr>" for f in data.suspect_files)
            + "</table><p>The suspect's SHA-256 is that of this listing in <code>sha256sum</code> format.</p>")
    parts.append("<h2>Log and checkpoint</h2>" + _table([
        ("origin", log.get("origin")), ("URL", log.get("url") or "— (offline: the bundle's checkpoint)"),
        ("read through", log.get("mode")), ("tree size", log.get("tree_size")), ("root hash", log.get("root_hash")),
        ("pinned log key", data.pinned_key),
        ("witness cosignatures verified", ", ".join(log.get("cosigned_by") or []) or "none required")])
        + f"<h3>Signed checkpoint note, verbatim</h3><pre id=\"checkpoint\">{_e(data.checkpoint_note)}</pre>"
        + "<h3>Signatures</h3>" + _signatures(data.checkpoint_note, data.pinned_key, log.get("cosigned_by") or []))
    parts.append("<h2>Named issuance or lineage</h2>" + _match(v))
    parts.append("<h2>Proofs</h2><p>Each path recomputes the root as RFC 9162 §2.1.3.2 says: start from the leaf "
                 "hash SHA-256(0x00 ‖ entry); for each audit path hash, hash it with the running node, the sibling "
                 "on the side given; the last node must be the checkpoint's root.</p>"
                 + ("".join(_proof(p) for p in data.proofs) or "<p>No issuance is named: no inclusion proof to show.</p>"))
    parts.append("<h2>Watermark</h2>")
    by_issuer = {b.issuer: b for b in data.bits}
    for r in v["watermark_readings"]:
        parts.append(f"<h3>Under {_e(r['issuer'])}'s parameters</h3>" + _reading(r))
        ev = by_issuer.get(r["issuer"])
        if ev is not None:
            parts.append(f'<div class="plot" data-plot="bits">{plots.bits_plot(ev)}</div>')
        parts.append(f'<div class="plot" data-plot="p-value">{plots.pvalue_plot(r)}</div>')
    if not v["watermark_readings"]:
        parts.append("<p>No applicable issuer: no watermark was read.</p>")
    parts.append("<h2>Fingerprint</h2>")
    if data.distances:
        if kind == "device":
            parts.append("<p>The watermark named the issuance, so its published fingerprint is the one compared "
                         "(supporting evidence; no replay of the log was needed).</p>")
        parts.append(f'<div class="plot" data-plot="distances">{plots.distance_plot(data.distances, lineage, "the named issuance" if kind == "device" else "the identified lineage")}</div>'
                     + _distances_table(data.distances, lineage))
    else:
        parts.append("<p>No published fingerprint was compared.</p>")
    nearest = min(data.distances, key=lambda d: (d.distance, d.leaf_index)) if data.distances else None
    ev0 = data.bits[0] if data.bits else None
    parts.append("<h2>Per-layer evidence</h2>")
    if ev0 is not None or nearest is not None:
        parts.append(f'<div class="plot" data-plot="layers">{plots.layers_plot(ev0, nearest)}</div>')
    else:
        parts.append("<p>No per-layer evidence: nothing was read.</p>")
    parts.append("<h2>Issuers considered</h2><table><tr><th>issuer</th><th>applies</th><th>reason</th></tr>" + "".join(
        f"<tr><td>{_e(i['issuer'])}</td><td>{'yes' if i['applies'] else 'no'}</td><td>{_e(i['reason'])}</td></tr>"
        for i in v["issuers_considered"]) + "</table>")
    notes = list(v.get("notes") or []) + list(data.notes)
    if v.get("reason"):
        notes.insert(0, f"reason: {v['reason']}")
    if v.get("disclosures_rejected"):
        parts.append("<h2>Attributions that do not hold for this file</h2><ul>" + "".join(
            f"<li>attribution at leaf {_e(r['attribution_index'])}: {_e(r['reason'])}</li>"
            for r in v["disclosures_rejected"]) + "</ul>")
    parts.append("<h2>Notes</h2><ul>" + ("".join(f"<li>{_e(n)}</li>" for n in notes) or "<li>none</li>") + "</ul>")
    parts.append("<h2>Re-run the verification</h2>" + "".join(f"<pre>{_e(c)}</pre>" for c in data.commands))
    title = f"EMShield report: {KIND_TITLES.get(kind, kind)}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
