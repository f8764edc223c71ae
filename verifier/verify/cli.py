"""`emshield-verify`: which issuance did a suspect model come from?

Exit codes (spec/verify.md §1): 0 a device is named by per-device evidence (the watermark) with
verified proofs; 1 nothing is named; 2 bad input (suspect, backbone, bundle, key or options); 3 the
log misbehaves (bad checkpoint signature, bad proof, an answer that contradicts its entries); 4 the
log is unreachable or failing; 5 internal error (a bug: reported, never shown as "no match"); 6 a
core lineage is identified by its fingerprint (its issuances listed), but no device is named; 7
--report-pdf without Chromium or playwright on this machine (checked before any work).
"""

from __future__ import annotations

import os

# One BLAS / OpenMP thread unless the caller says otherwise (must precede numpy's and torch's import).
# The verifier's products are thin (layers × a few hundred directions), and threaded BLAS made them
# several times slower on a loaded machine (spec/notes/verify-performance.md).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NoReturn  # noqa: E402

import click  # noqa: E402

from emshield import exit_codes  # noqa: E402
from emshield.bundle import (  # noqa: E402
    BundleError,
    LogKeyError,
    VerifiedBundle,
    parse_log_key,
    read_bundle_file,
    verify_bundle,
)
from emshield.logclient.http import LogClient  # noqa: E402
from emshield.logclient.url import log_url_problem  # noqa: E402
from emshield.marking import fingerprint as fpmod  # noqa: E402
from emshield.tlog.checkpoint import NoteError, NoteVerifier  # noqa: E402
from verifier.errors import BadSuspect, LogMisbehaving, LogUnavailable, NotALog  # noqa: E402
from verifier.verify.decide import (  # noqa: E402
    DEFAULT_MAX_P_VALUE,
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_LOG_MISBEHAVING,
    EXIT_LOG_UNAVAILABLE,
    Verdict,
    verify_suspect,
)
from verifier.verify.evidence import ReportRequest, gather_offline, gather_online, rerun_commands  # noqa: E402
from verifier.verify.log_view import WitnessPolicy, open_verified_log  # noqa: E402
from verifier.verify.offline import verify_offline  # noqa: E402
from verifier.witness_policy import WitnessPolicyError, parse_witness_keys  # noqa: E402



def _fail(code: int, detail: str, as_json: bool) -> NoReturn:
    """Every failure: a plain message on stderr (and a JSON object on stdout with --json), then the exit code."""
    if as_json:
        click.echo(json.dumps({"v": 1, "verdict": "error", "error": exit_codes.NAMES[code], "detail": detail, "exit_code": code},
                              indent=2, sort_keys=True))
    click.echo(f"emshield-verify: {exit_codes.NAMES[code].replace('_', ' ')}: {detail}", err=True)
    sys.exit(code)


def _text(verdict: Verdict) -> str:
    m, c = verdict.device, verdict.core
    lines = []
    if m is not None:
        lines += [
            f"MATCH: device {m.device_uuid}",
            f"  issuer:        {m.issuer} (key id {m.issuer_key_id[:16]}…, registered at leaf {m.issuer_registration_index}"
            + ("; its key was since revoked by the log operator" if m.issuer_revoked else "") + ")",
            f"  issuance:      leaf {m.leaf_index}, issued {m.issued_at_utc}, policy {m.policy}",
            f"  named by:      {m.method}",
        ]
        fp = m.fingerprint
        if fp is not None:
            dist = "—" if fp.distance is None else f"{fp.distance:.4f}"
            lines.append(f"  fingerprint:   distance {dist} (threshold {fp.threshold:.3f}): "
                         f"{'match' if fp.match else 'no match'}; side record {fp.side_record}")
        proofs = m.proofs
    elif c is not None:
        lines += [
            f"CORE MATCH: no device named; {verdict.reason}",
            f"  issuer:        {c.issuer} (key id {c.issuer_key_id[:16]}…, registered at leaf {c.issuer_registration_index})",
            f"  fingerprint:   distance {c.distance:.4f} (threshold {c.threshold:.3f}); nearest other lineage "
            + ("—" if c.runner_up_distance is None else f"{c.runner_up_distance:.4f}") + f" (margin {c.margin:g})",
        ]
        lines += [f"  issuance:      leaf {i.leaf_index}, device {i.device_uuid}, policy {i.policy}, issued "
                  f"{i.issued_at_utc}, distance " + ("—" if i.distance is None else f"{i.distance:.4f}")
                  for i in c.issuances]
        proofs = c.proofs
    elif not verdict.disclosed:
        lines.append(f"NO MATCH: {verdict.reason}")
        proofs = {}
    else:
        proofs = {}
    for d in verdict.disclosed:
        lines += [
            f"{'ALSO ' if m is not None else ''}MATCH: device {d.device_uuid} named by disclosed key, "
            f"attribution at leaf {d.attribution_index}",
            f"  issuer:        {d.issuer} (key id {d.issuer_key_id[:16]}…); attribution signed by "
            + ("the same key" if d.signed_by_issuing_key else f"{d.signer} (key id {d.signer_key_id[:16]}…)"),
            f"  issuance:      leaf {d.issuance_index}; the disclosed key opens its secret-mark commitment",
            f"  secret tier:   presence score {d.score:.2f} over {d.terms} terms recomputed on this suspect "
            f"(issuer measured {d.disclosed_score:.2f}), p-value {d.p_value:.3g} (threshold {d.threshold_p:.0e})",
        ]
        lines += [f"    {k}: {v}" for k, v in d.proofs.items()]
    if proofs:
        lines.append("  proofs:")
        lines += [f"    {k}: {v}" for k, v in proofs.items()]
    for r in verdict.watermark_readings:
        detail = (f"best candidate {r.bit_errors} raw bit errors of {r.code_bits}, score {r.score:.2f}, "
                  f"chance-match p-value {r.p_value:.3g} over {r.issuances_counted} issuances (threshold "
                  f"{r.p_value_threshold:.0e})") if r.score is not None else ""
        if r.accepted:
            lines.append(f"  watermark ({r.issuer}): read, {detail}")
        else:
            lines.append(f"  watermark ({r.issuer}): not read: {r.reason}" + (f"; {detail}" if detail else ""))
    canon = verdict.suspect.get("canonicalisation")
    if canon:
        lines.append(f"  canonicalised: {canon}")
    lines += [f"  note: {n}" for n in verdict.notes]
    log = verdict.log
    where = {"offline": "offline, the bundle's checkpoint",
             "static tiles": f"static tile mirror at {log.get('url')}"}.get(log.get("mode"), log.get("url"))
    lines.append(f"  log: {log.get('origin')} at size {log.get('tree_size')} ({where})")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--log", "log_url", metavar="URL", envvar="EMSHIELD_LOG_URL",
              help="Base URL of the transparency log (or $EMSHIELD_LOG_URL).")
@click.option("--log-key", metavar="KEY|FILE", envvar="EMSHIELD_LOG_KEY",
              help="The log's verifier key (name+hex+base64, as `emshield-log init` prints), or a file holding it.")
@click.option("--backbone", type=click.Path(path_type=Path), help="Public backbone (folder or file); needed for merged models.")
@click.option("--bundle", "--offline", "bundle", type=click.Path(path_type=Path),
              help="Air-gapped: check the suspect against this one issuance bundle instead of asking the log.")
@click.option("--witness", "witness_keys", multiple=True, metavar="VKEY",
              help="A witness verifier key (repeatable): require its cosignature on the log's checkpoint.")
@click.option("--witness-quorum", type=click.IntRange(0), default=None,
              help="How many of the --witness keys must have cosigned (default: all of them).")
@click.option("--max-p-value", type=click.FloatRange(1e-300, 1e-3), default=DEFAULT_MAX_P_VALUE, show_default=True,
              help="Largest chance-match p-value that lets a watermark name a device (the issuer's published "
                   "threshold applies too).")
@click.option("--no-scan", is_flag=True, help="Never replay the whole log to search published fingerprints.")
@click.option("--timeout", type=click.FloatRange(0.1, 600.0), default=30.0, show_default=True, help="Seconds per log request.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable verdict on stdout.")
@click.option("--report", "report_html", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the forensic report (one self-contained HTML file, spec/report.md) here.")
@click.option("--report-pdf", type=click.Path(path_type=Path, dir_okay=False),
              help="Also print the forensic report to this PDF (needs Chromium and playwright).")
def main(model: Path, log_url: str | None, log_key: str | None, backbone: Path | None, bundle: Path | None,
         witness_keys: tuple[str, ...], witness_quorum: int | None, max_p_value: float,
         no_scan: bool, timeout: float, as_json: bool, report_html: Path | None, report_pdf: Path | None) -> None:
    """Extract the watermark and fingerprint from MODEL (a merged model: .pt state dict, safetensors
    or a Hugging Face folder, with --backbone; or a peft adapter folder), find the matching issuance
    in the public log, verify the issuer's signature, the inclusion proof and the log's checkpoint
    against the pinned key, and print a verdict.

    A device is named only by per-device evidence (the watermark); a fingerprint identifies a core
    lineage and lists every issuance that carries it.

    \b
    Exit codes (the same for every EMShield command, spec/cli.md): 0 device named (match verified),
    1 nothing named, 2 bad input (also: no log at --log), 3 log misbehaving, 4 log unavailable,
    5 internal error, 6 core identified (its issuances listed; no device named), 7 --report-pdf
    without Chromium or playwright.
    """
    report = None
    try:
        witnesses = _witness_policy(witness_keys, witness_quorum, bundle is not None)
        if report_html is not None or report_pdf is not None:
            report = _report_request(report_html, report_pdf, click.get_current_context().params)
        verdict = _verify(model, log_url, log_key, backbone, bundle, witnesses, no_scan, timeout,
                          max_p_value=max_p_value, progress=not as_json and sys.stderr.isatty(), report=report)
        if report is not None:
            try:
                report.write()
            except OSError as exc:
                raise _Failure(EXIT_BAD_INPUT, f"cannot write the report: {exc}") from exc
    except _Failure as exc:
        _fail(exc.code, exc.detail, as_json)
    except Exception as exc:  # a bug must not read as "no match" (Python's own exit status is 1)
        _fail(EXIT_INTERNAL, f"{type(exc).__name__}: {exc}", as_json)
    click.echo(json.dumps(verdict.to_json(), indent=2, sort_keys=True) if as_json else _text(verdict))
    if report is not None:
        for path in report.written:
            click.echo(f"emshield-verify: report written to {path}", err=True)
    sys.exit(verdict.exit_code)


class _Failure(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


def _witness_policy(keys: tuple[str, ...], quorum: int | None, offline: bool) -> WitnessPolicy | None:
    if not keys:
        if quorum:
            raise _Failure(EXIT_BAD_INPUT, "--witness-quorum needs --witness keys")
        return None
    if offline:
        raise _Failure(EXIT_BAD_INPUT, "--witness applies to the online log (a bundle's checkpoint is checked as issued)")
    try:
        witnesses = tuple(parse_witness_keys(keys))
    except (NoteError, WitnessPolicyError) as exc:
        raise _Failure(EXIT_BAD_INPUT, f"--witness: {exc}") from exc
    quorum = len(witnesses) if quorum is None else quorum
    if quorum > len(witnesses):
        raise _Failure(EXIT_BAD_INPUT, f"--witness-quorum {quorum} is more than the {len(witnesses)} witnesses given")
    return WitnessPolicy(witnesses, quorum)


def _report_request(html: Path | None, pdf: Path | None, params: dict) -> ReportRequest:
    """Check the report's destinations (and Chromium, for a PDF) before any work is done."""
    for path, flag in ((html, "--report"), (pdf, "--report-pdf")):
        if path is not None and not path.parent.is_dir():
            raise _Failure(EXIT_BAD_INPUT, f"{flag}: the folder {path.parent} does not exist")
    if pdf is not None:
        from verifier.report.pdf import PdfUnavailable, check_available

        try:
            check_available()
        except PdfUnavailable as exc:
            raise _Failure(exit_codes.LOCAL_STATE, str(exc)) from exc
    return ReportRequest(html, pdf, rerun_commands(params))


def _verify(model: Path, log_url: str | None, log_key: str | None, backbone: Path | None, bundle: Path | None,
            witnesses: WitnessPolicy | None, no_scan: bool, timeout: float, *,
            max_p_value: float, progress: bool, report: ReportRequest | None = None) -> Verdict:
    if log_key is None:
        raise _Failure(EXIT_BAD_INPUT, "give the log's verifier key with --log-key (the key pins which log to trust)")
    try:
        verifier = parse_log_key(log_key)
    except LogKeyError as exc:
        raise _Failure(EXIT_BAD_INPUT, str(exc)) from exc
    if (bundle is None) == (not log_url):
        raise _Failure(EXIT_BAD_INPUT, "give either --log URL (online) or --bundle FILE (offline)")
    if log_url and (problem := log_url_problem(log_url)) is not None:
        raise _Failure(EXIT_BAD_INPUT, f"--log {problem}")
    from verifier.verify.suspect import load_suspect  # torch: not needed for --help

    try:
        if bundle is not None:
            vb, published = _read_bundle(bundle, verifier)
            with load_suspect(model, backbone) as suspect:
                verdict = verify_offline(suspect, vb, published, max_p_value=max_p_value)
                if report is not None:
                    report.data = gather_offline(verdict, suspect, vb, pinned_key=verifier.verifier_key(),
                                                 commands=report.commands)
                return verdict
        assert log_url is not None
        with load_suspect(model, backbone) as suspect:
            log = open_verified_log(LogClient(log_url, timeout=timeout), verifier, witnesses=witnesses,
                                    progress=progress)
            verdict = verify_suspect(suspect, log, scan=not no_scan, progress=progress, max_p_value=max_p_value)
            if report is not None:
                report.data = gather_online(verdict, suspect, log, pinned_key=verifier.verifier_key(),
                                            commands=report.commands)
            return verdict
    except (BadSuspect, NotALog) as exc:
        raise _Failure(EXIT_BAD_INPUT, str(exc)) from exc
    except LogMisbehaving as exc:
        raise _Failure(EXIT_LOG_MISBEHAVING, str(exc)) from exc
    except LogUnavailable as exc:
        raise _Failure(EXIT_LOG_UNAVAILABLE, str(exc)) from exc


def _read_bundle(path: Path, verifier: NoteVerifier) -> tuple[VerifiedBundle, fpmod.Fingerprint | None]:
    """The verified bundle, and its issuance's published fingerprint (the bundled side record,
    which verify_bundle checked against the issuance's fingerprint_hash)."""
    try:
        vb = verify_bundle(read_bundle_file(path), verifier)
    except BundleError as exc:
        raise _Failure(EXIT_BAD_INPUT, f"bundle {path} does not verify: {exc}") from exc
    if vb.fingerprint_record is None:
        return vb, None
    try:
        return vb, fpmod.Fingerprint.from_cbor(vb.fingerprint_record, vb.issuance.fingerprint_hash)
    except fpmod.FingerprintError as exc:
        raise _Failure(EXIT_BAD_INPUT, f"bundle {path}: its fingerprint record is not a valid fingerprint: {exc}") from exc
