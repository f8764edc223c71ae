"""`emshield-verify`: which issuance did a suspect model come from?

Exit codes (spec/verify.md): 0 a device is named with verified proofs; 1 no match (nobody named);
2 bad input (suspect, backbone, key or options); 3 the log misbehaves (bad checkpoint signature,
bad proof, an answer that contradicts its entries); 4 the log is unreachable or failing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import click

from emshield.tlog.checkpoint import NoteError, NoteVerifier
from emshield.tlog.client import LogClient
from verifier.verify import (
    EXIT_BAD_INPUT,
    EXIT_LOG_MISBEHAVING,
    EXIT_LOG_UNAVAILABLE,
    Verdict,
    verify_suspect,
)
from verifier.verify_log import LogMisbehaving, LogUnavailable, VerifiedLog

MAX_KEY_FILE_BYTES = 4096
_KINDS = {EXIT_BAD_INPUT: "bad_input", EXIT_LOG_MISBEHAVING: "log_misbehaving", EXIT_LOG_UNAVAILABLE: "log_unavailable"}


def _fail(code: int, detail: str, as_json: bool) -> NoReturn:
    """Every failure: a plain message on stderr (and a JSON object on stdout with --json), then the exit code."""
    if as_json:
        click.echo(json.dumps({"v": 1, "verdict": "error", "error": _KINDS[code], "detail": detail, "exit_code": code},
                              indent=2, sort_keys=True))
    click.echo(f"emshield-verify: {_KINDS[code].replace('_', ' ')}: {detail}", err=True)
    sys.exit(code)


def read_log_key(value: str) -> NoteVerifier:
    """The pinned log verifier key: the key string itself (``name+hex8+base64``) or a file holding it."""
    try:
        return NoteVerifier.from_verifier_key(value.strip())
    except NoteError as first:
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"--log-key is neither a verifier key nor a file: {first}") from first
        if path.stat().st_size > MAX_KEY_FILE_BYTES:
            raise ValueError(f"{path}: too large for a verifier key file") from first
        try:
            return NoteVerifier.from_verifier_key(path.read_text("utf-8").strip())
        except (NoteError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a log verifier key: {exc}") from exc


def _text(verdict: Verdict) -> str:
    m = verdict.match
    lines = []
    if m is None:
        lines.append(f"NO MATCH: {verdict.reason}")
    else:
        lines += [
            f"MATCH: device {m.device_uuid}",
            f"  issuer:        {m.issuer} (key id {m.issuer_key_id[:16]}…, registered at leaf {m.issuer_registration_index}"
            + (", REVOKED since" if m.issuer_revoked else "") + ")",
            f"  issuance:      leaf {m.leaf_index}, issued {m.issued_at_utc}, policy {m.policy}",
            f"  named by:      {m.method}",
        ]
        fp = m.fingerprint
        if fp is not None:
            dist = "—" if fp.distance is None else f"{fp.distance:.4f}"
            lines.append(f"  fingerprint:   distance {dist} (threshold {fp.threshold:.3f}): "
                         f"{'match' if fp.match else 'no match'}; side record {fp.side_record}")
        lines.append("  proofs:")
        lines += [f"    {k}: {v}" for k, v in m.proofs.items()]
    for r in verdict.watermark_readings:
        if r.accepted:
            lines.append(f"  watermark ({r.issuer}): decoded, {r.bit_errors} bit errors of {r.code_bits}, "
                         f"chance-match p-value {r.p_value:.3g} (threshold {r.p_value_threshold:.0e})")
        else:
            lines.append(f"  watermark ({r.issuer}): not accepted: {r.reason}")
    lines += [f"  note: {n}" for n in verdict.notes]
    log = verdict.log
    lines.append(f"  log: {log.get('origin')} at size {log.get('tree_size')} ({log.get('url')})")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--log", "log_url", metavar="URL", envvar="EMSHIELD_LOG_URL",
              help="Base URL of the transparency log (or $EMSHIELD_LOG_URL).")
@click.option("--log-key", metavar="KEY|FILE", envvar="EMSHIELD_LOG_KEY",
              help="The log's verifier key (name+hex+base64, as `emshield-log init` prints), or a file holding it.")
@click.option("--backbone", type=click.Path(path_type=Path), help="Public backbone (folder or file); needed for merged models.")
@click.option("--bundle", "--offline", "bundle", type=click.Path(path_type=Path),
              help="Verify offline against one issuance bundle instead of the log.")
@click.option("--no-scan", is_flag=True, help="Never replay the whole log to search published fingerprints.")
@click.option("--timeout", type=click.FloatRange(0.1, 600.0), default=30.0, show_default=True, help="Seconds per log request.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable verdict on stdout.")
def main(model: Path, log_url: str | None, log_key: str | None, backbone: Path | None, bundle: Path | None,
         no_scan: bool, timeout: float, as_json: bool) -> None:
    """Extract the watermark and fingerprint from MODEL (a merged model: .pt state dict, safetensors
    or a Hugging Face folder, with --backbone; or a peft adapter folder), find the matching issuance
    in the public log, verify the issuer's signature, the inclusion proof and the log's checkpoint
    against the pinned key, and print a verdict.

    \b
    Exit codes: 0 match verified, 1 no match, 2 bad input, 3 log misbehaving, 4 log unavailable.
    """
    if log_key is None:
        _fail(EXIT_BAD_INPUT, "give the log's verifier key with --log-key (the key pins which log to trust)", as_json)
    try:
        verifier = read_log_key(log_key)
    except ValueError as exc:
        _fail(EXIT_BAD_INPUT, str(exc), as_json)
    if bundle is not None:
        _fail(EXIT_BAD_INPUT, "offline verification (--bundle) is not built yet (issue #8)", as_json)
    if not log_url:
        _fail(EXIT_BAD_INPUT, "give the log's URL with --log (or --bundle FILE for offline verification)", as_json)
    if urlsplit(log_url).scheme not in ("http", "https") or not urlsplit(log_url).netloc:
        _fail(EXIT_BAD_INPUT, f"--log must be an http(s) URL, got {log_url!r}", as_json)
    from verifier.verify_suspect import BadSuspect, load_suspect  # torch: not needed for --help

    progress = not as_json and sys.stderr.isatty()
    try:
        with load_suspect(model, backbone) as suspect:
            log = VerifiedLog(LogClient(log_url, timeout=timeout), verifier, progress=progress)
            verdict = verify_suspect(suspect, log, scan=not no_scan, progress=progress)
    except BadSuspect as exc:
        _fail(EXIT_BAD_INPUT, str(exc), as_json)
    except LogMisbehaving as exc:
        _fail(EXIT_LOG_MISBEHAVING, str(exc), as_json)
    except LogUnavailable as exc:
        _fail(EXIT_LOG_UNAVAILABLE, str(exc), as_json)
    out: Any = json.dumps(verdict.to_json(), indent=2, sort_keys=True) if as_json else _text(verdict)
    click.echo(out)
    sys.exit(verdict.exit_code)
