"""`emshield issuer ...` and `emshield issue`: the issuance pipeline's command line (spec/issue.md).

The pipeline (emshield.issue) is imported inside the commands, so ``emshield --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from emshield import exit_codes
from emshield.model.prompt import PLAIN, PROMPT_FORMATS

DEFAULT_ISSUER_DIR = Path.home() / ".local" / "share" / "emshield" / "issuer"
TOKEN_ENV = "EMSHIELD_LOG_OPERATOR_TOKEN"
DEFAULT_TIMEOUT_S = 30.0


def _issuer_dir_option(f):
    return click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                        envvar="EMSHIELD_ISSUER_DIR", default=DEFAULT_ISSUER_DIR, show_default=True,
                        help="Issuer key directory (env EMSHIELD_ISSUER_DIR).")(f)


def _log_option(f):
    f = click.option("--timeout", type=click.FloatRange(0.1, 3600.0), default=DEFAULT_TIMEOUT_S, show_default=True,
                     help="Seconds to wait for each answer of the log (a hanging log is reported as unavailable, "
                          "exit 4).")(f)
    return click.option("--log", "log_url", required=True, envvar="EMSHIELD_LOG_URL",
                        help="Log base URL, e.g. http://127.0.0.1:8080 (env EMSHIELD_LOG_URL).")(f)


def _log_url(log_url: str, as_json: bool) -> str:
    from emshield.logclient.url import log_url_problem

    problem = log_url_problem(log_url)
    if problem is not None:
        raise exit_codes.refuse(f"--log {problem}", as_json=as_json)
    return log_url


def _exit_code_for(exc: Exception) -> int:
    """The shared exit code (spec/cli.md) of an exception the pipeline raised."""
    from emshield.issue.errors import LogMisbehavingError
    from emshield.logclient.http import LogClientError
    from emshield.tlog.checkpoint import CheckpointError
    from emshield.tlog.merkle import ProofError

    if isinstance(exc, (LogMisbehavingError, CheckpointError, ProofError)):
        return exit_codes.LOG_MISBEHAVING
    if isinstance(exc, LogClientError) and (exc.retryable or exc.code == "bad_response"):
        return exit_codes.UNAVAILABLE
    return exit_codes.BAD_INPUT


def _message(exc: Exception) -> str:
    from emshield.logclient.http import LogClientError

    if isinstance(exc, LogClientError) and exc.status == 404 and exc.code == "http_error":
        return f"no EMShield log answers at this URL ({exc.detail}): check --log"
    if isinstance(exc, LogClientError) and exc.status in (401, 403):
        return f"the log refused the operator token ({exc.detail}): check {TOKEN_ENV}"
    return str(exc)


def _emit(as_json: bool, data: dict, lines: list[str]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else "\n".join(lines))


def _errors():
    """The exceptions the pipeline raises for bad input, refusals and log failures."""
    from emshield.bundle import BundleError
    from emshield.core import ModelFileError
    from emshield.issue.errors import IssueError
    from emshield.logclient.http import LogClientError
    from emshield.tee.errors import SealError
    from emshield.tlog.checkpoint import CheckpointError
    from emshield.tlog.entry import EntryError
    from emshield.tlog.merkle import ProofError

    return (IssueError, BundleError, ModelFileError, SealError, LogClientError, CheckpointError, EntryError,
            ProofError)


def _read_core(path: Path):
    from emshield.marking.cli import read_core

    return read_core(path)


@click.group(name="issuer")
def issuer_group() -> None:
    """Issuer keys and registration of the issuer in the transparency log."""


@issuer_group.command("init")
@_issuer_dir_option
@click.option("--json", "as_json", is_flag=True)
def init_cmd(directory: Path, as_json: bool) -> None:
    """Create the issuer's Ed25519 signing key and marking secret (files 0600, never overwritten)."""
    from emshield.issue.errors import IssueError
    from emshield.issue.keys import init_issuer

    try:
        keys = init_issuer(directory)
    except IssueError as exc:
        raise exit_codes.refuse(str(exc), as_json=as_json) from None
    data = {"dir": str(directory), "public_key": keys.public_key.hex(), "key_id": keys.key_id.hex()}
    _emit(as_json, data, [f"issuer keys written to {directory}", f"public key: {data['public_key']}",
                          f"key id:     {data['key_id']}"])


@issuer_group.command("register")
@_log_option
@click.option("--core", "core_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Core file (emshield/core/v1) giving the marked layer layout.")
@click.option("--backbone", required=True, type=click.Path(exists=True, path_type=Path),
              help="The public backbone (folder or file) the core belongs to.")
@click.option("--name", required=True, help="Issuer name published in the log (1..128 UTF-8 bytes).")
@click.option("--rs-nsym", type=click.IntRange(2, 32), default=10, show_default=True, help="Reed-Solomon parity bytes.")
@click.option("--tau", type=click.FloatRange(0.1, 100.0), default=3.0, show_default=True, help="Embedding margin.")
@_issuer_dir_option
@click.option("--json", "as_json", is_flag=True)
def register_cmd(log_url: str, timeout: float, core_path: Path, backbone: Path, name: str, rs_nsym: int, tau: float,
                 directory: Path, as_json: bool) -> None:
    """Publish the issuer key and the public marking parameters to the log.

    Needs the log's operator token in the environment variable EMSHIELD_LOG_OPERATOR_TOKEN.
    Idempotent: an issuer registered with the same parameters gets its index back.
    Exit codes (spec/cli.md): 0 registered, 2 bad input or refused token, 4 log unavailable."""
    # Checked before anything is imported or read: a missing token must not cost the model's load.
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise exit_codes.refuse(f"set {TOKEN_ENV} to the log's operator token", as_json=as_json)
    log_url = _log_url(log_url, as_json)
    from emshield.issue.keys import load_issuer
    from emshield.issue.registration import marking_params_for, register_issuer
    from emshield.logclient.http import LogClient
    from emshield.model.io import backbone_id

    try:
        keys = load_issuer(directory)
        params = marking_params_for(keys, backbone_id(backbone), _read_core(core_path), rs_nsym=rs_nsym, tau=tau)
        result = register_issuer(LogClient(log_url, operator_token=token, timeout=timeout), keys, name, params)
    except exit_codes.Failure as exc:  # the core file's own checks
        raise exit_codes.refuse(exc.message, exc.exit_code, as_json=as_json) from None
    except _errors() as exc:
        raise exit_codes.refuse(_message(exc), _exit_code_for(exc), as_json=as_json) from None
    data = {"index": result.index, "created": result.created, "key_id": result.key_id.hex(),
            "params_digest": params.digest().hex(), "backbone_id": params.backbone_id, "layers": len(params.layers)}
    _emit(as_json, data, [f"{'registered' if result.created else 'already registered'} at log index {result.index}",
                          f"key id: {data['key_id']}", f"marking parameters: {data['params_digest']} "
                          f"({data['layers']} layers, backbone {data['backbone_id']})"])


@issuer_group.command("rotate")
@_log_option
@click.option("--name", default=None, help="Issuer name for the new registration (default: the current one's).")
@_issuer_dir_option
@click.option("--json", "as_json", is_flag=True)
def rotate_cmd(log_url: str, timeout: float, name: str | None, directory: Path, as_json: bool) -> None:
    """Replace the issuer's signing key, keeping its marking secret (spec/issue.md §8).

    Registers a new signing key with the current registration's marking parameters and keeps the
    old key as a retired file in the issuer directory: every earlier issuance stays traceable with
    `emshield trace`, and attributions are then signed with the new key. Needs the operator token
    (EMSHIELD_LOG_OPERATOR_TOKEN). Resumable. Exit codes (spec/cli.md): 0 rotated, 2 bad input or
    refused token, 4 log unavailable."""
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise exit_codes.refuse(f"set {TOKEN_ENV} to the log's operator token", as_json=as_json)
    log_url = _log_url(log_url, as_json)
    from emshield.issue.registration import rotate_issuer
    from emshield.logclient.http import LogClient

    try:
        result = rotate_issuer(LogClient(log_url, operator_token=token, timeout=timeout), directory, name=name)
    except (OSError, *_errors()) as exc:
        code = exit_codes.LOCAL_STATE if isinstance(exc, OSError) else _exit_code_for(exc)
        raise exit_codes.refuse(_message(exc), code, as_json=as_json) from None
    data = {"old_key_id": result.old_key_id.hex(), "new_key_id": result.new_key_id.hex(), "index": result.index}
    _emit(as_json, data, [f"new signing key registered at log index {result.index}",
                          f"key id: {data['new_key_id']} (retired: {data['old_key_id']})"])


@click.command(name="issue")
@_log_option
@click.option("--log-key", required=True, envvar="EMSHIELD_LOG_KEY",
              help="The log's verifier key, or a file holding it (env EMSHIELD_LOG_KEY): proofs are checked with it.")
@click.option("--core", "core_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The trained core file (emshield/core/v1).")
@click.option("--backbone", required=True, type=click.Path(exists=True, path_type=Path), help="The public backbone.")
@click.option("--device", "device_files", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="A device's record (device.json or its folder, from `emshield device init`); repeatable.")
@click.option("--devices", "devices_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of devices: device_uuid,x25519_public,xwing_public (hex).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the bundles (<device uuid>.emshield-bundle).")
@click.option("--policy", type=click.Choice(["auto", "fingerprint"]), default="auto", show_default=True,
              help="auto: watermark + fingerprint if the mark's cost is within --tolerance, else fingerprint only.")
@click.option("--tolerance", type=click.FloatRange(0.0, 10.0), default=None,
              help="Largest relative weight perturbation ‖δΔW‖/‖W‖ the watermark may cause (without --task-data; "
                   "default: the policy's, 0.15).")
@click.option("--allow-shared-core", is_flag=True,
              help="Issue a fingerprint-only core even if another device already got the same one (the verifier "
                   "can then only say which core a leak is, not which device).")
@click.option("--task-data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Held-out task records (instruction-format JSON): keep the watermark only if the task score drops "
                   "≤ 0.5 pp and loss rises ≤ 1 % on them (score: accuracy for tasks with a few answers, "
                   "teacher-forced token accuracy for generative ones); tries input-aware embeddings first. Slower.")
@click.option("--no-task-data", is_flag=True,
              help="Do not measure on the held-out records that `emshield decouple train --holdout` wrote beside "
                   "the core (heldout.json); by default they are used unless --task-data or --tolerance is given.")
@click.option("--task-records", type=click.IntRange(1, 10_000), default=120, show_default=True,
              help="Records of --task-data used to measure (and as many again for input statistics).")
@click.option("--task-prompt-format", type=click.Choice(PROMPT_FORMATS), default=PLAIN, show_default=True,
              help="The prompt format the core was trained with (emshield decouple train --prompt-format).")
@click.option("--no-secret-tier", is_flag=True,
              help="Embed the public watermark alone, without the secret tier (spec/watermark.md, \"Secret tier\"): "
                   "the issued copies can then be traced only by the public mark, which a reader of the log can strip.")
@_issuer_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object: results per device.")
def issue_cmd(log_url: str, timeout: float, log_key: str, core_path: Path, backbone: Path,
              device_files: tuple[Path, ...], devices_csv: Path | None, out_dir: Path, policy: str,
              tolerance: float | None, allow_shared_core: bool,
              task_data: Path | None, no_task_data: bool, task_records: int, task_prompt_format: str,
              no_secret_tier: bool, directory: Path, as_json: bool) -> None:
    """Issue a marked, sealed core to one or many devices: log entry, inclusion proof, bundle.

    Devices come from --device (repeatable) and/or --devices (a CSV); a UUID given twice is refused.
    Resumable: devices already issued (found in the log by UUID) are not issued again; their
    bundle is rebuilt for the logged entry if it is missing. Exit codes (spec/cli.md): 0 all issued
    or up to date, 1 some devices refused (the others were issued), 2 bad input, 3 the log served a
    proof or checkpoint that does not verify (the run stops), 4 the log is unavailable (re-run to
    resume)."""
    log_url = _log_url(log_url, as_json)
    if no_task_data and task_data is not None:
        raise exit_codes.refuse("--no-task-data and --task-data contradict each other", as_json=as_json)
    if task_data is None and tolerance is None and not no_task_data:
        from emshield.model.heldout import heldout_beside

        held = heldout_beside(core_path)
        if held is not None:  # traceable by default, at a measured cost on the task (spec/issue.md §3)
            task_data, task_prompt_format = held.path, held.prompt_format
            click.echo(f"measuring the watermark's cost on the held-out records in {held.path} "
                       f"({held.prompt_format} prompts; --no-task-data to skip)", err=True)
    if not device_files and devices_csv is None:
        raise exit_codes.refuse("give the devices: --device FILE (repeatable) and/or --devices CSV", as_json=as_json)
    from emshield.bundle import LogKeyError, parse_log_key
    from emshield.issue.devices import DeviceTarget, read_devices_csv
    from emshield.issue.errors import IssueError
    from emshield.issue.keys import load_issuer
    from emshield.issue.pipeline import issue_many, prepare_run
    from emshield.logclient.http import LogClient
    from emshield.marking.policy import Tolerance
    from emshield.tee.device import DeviceRecord

    results: list = []
    try:
        verifier = parse_log_key(log_key)
        devices = []
        for path in device_files:
            record = DeviceRecord.load(path)
            devices.append(DeviceTarget(record.uuid, record.public))
        if devices_csv is not None:
            devices += read_devices_csv(devices_csv)
        seen: set = set()
        for target in devices:
            if target.uuid in seen:
                raise exit_codes.Failure(f"device {target.uuid} is given twice (in --device or --devices)")
            seen.add(target.uuid)
        issuer = prepare_run(LogClient(log_url, timeout=timeout), verifier, load_issuer(directory),
                             _read_core(core_path), backbone, policy=policy,
                             tolerance=Tolerance() if tolerance is None else Tolerance(max_perturbation=tolerance),
                             task_data=task_data, task_records=task_records, allow_shared_core=allow_shared_core,
                             task_prompt_format=task_prompt_format, secret=not no_secret_tier)
        for result in issue_many(issuer, devices, out_dir, progress=not as_json):
            results.append(result)
    except exit_codes.Failure as exc:  # the core file's own checks, a device given twice
        raise exit_codes.refuse(exc.message, exc.exit_code, as_json=as_json, issued=[]) from None
    except (LogKeyError, *_errors()) as exc:
        code = _exit_code_for(exc)
        detail = _message(exc)
        if code == exit_codes.LOG_MISBEHAVING:
            detail += " (stopped: no bundle was handed out for this device)"
        elif code == exit_codes.UNAVAILABLE:
            detail += " (re-run to resume: issued devices are skipped)"
        done_so_far = [r.to_json() for r in results if not isinstance(r, IssueError)]
        raise exit_codes.refuse(detail, code, as_json=as_json, issued=done_so_far) from None
    done = [r for r in results if not isinstance(r, IssueError)]
    refused = [r for r in results if isinstance(r, IssueError)]
    if as_json:
        click.echo(json.dumps({"ok": not refused, "issued": [r.to_json() for r in done],
                               "refused": [{"reason": e.reason, "detail": e.detail} for e in refused]},
                              indent=2, sort_keys=True))
    else:
        for r in done:
            click.echo(f"{r.device_uuid}: {r.status}, index {r.index}, policy {r.policy}, bundle {r.bundle}")
        for e in refused:
            click.echo(f"refused: {e}", err=True)
        counts = {s: sum(r.status == s for r in done) for s in ("issued", "bundle-rebuilt", "up-to-date")}
        click.echo(", ".join(f"{n} {s}" for s, n in counts.items()) + f", {len(refused)} refused")
    if refused:
        sys.exit(exit_codes.NEGATIVE)


@click.command(name="trace")
@click.argument("suspect", type=click.Path(exists=True, path_type=Path))
@_log_option
@click.option("--log-key", required=True, envvar="EMSHIELD_LOG_KEY",
              help="The log's verifier key (note format), pinned (env EMSHIELD_LOG_KEY).")
@click.option("--backbone", type=click.Path(exists=True, path_type=Path),
              help="The public backbone (needed for a merged model; not for an adapter folder or core file).")
@click.option("--top", type=click.IntRange(1, 1_000_000), default=10, show_default=True,
              help="Rows of the ranked table to print (every named issuance is printed regardless).")
@click.option("--disclose", is_flag=True,
              help="Append an attribution entry to the log for each named issuance, disclosing that issuance's "
                   "detection key alone, so anyone can check the attribution with emshield-verify.")
@_issuer_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the ranked table, named issuances, disclosures.")
def trace_cmd(suspect: Path, log_url: str, timeout: float, log_key: str, backbone: Path | None, top: int,
              disclose: bool, directory: Path, as_json: bool) -> None:
    """Trace a leaked model to this issuer's issuances with the secret tier (issuer only: needs the
    marking secret).

    Scores SUSPECT against every issuance this issuer logged with a secret tier (found by a full,
    root-checked replay of the log) and prints them ranked, with p-values; an issuance is named at
    p ≤ 10^-6. With --disclose, each named issuance's key is disclosed in a signed attribution entry
    and the attribution is checked as a public verifier checks it.

    \b
    Exit codes (spec/cli.md): 0 at least one issuance named (and, with --disclose, disclosed and
    verified), 1 nothing named, 2 bad input, 3 the log misbehaves, 4 the log is unavailable,
    5 internal error.
    """
    log_url = _log_url(log_url, as_json)
    from emshield.bundle import LogKeyError, parse_log_key
    from emshield.issue.keys import load_issuer
    from emshield.issue.trace import disclose as disclose_fn
    from emshield.issue.trace import trace
    from emshield.logclient.http import LogClient
    from verifier.errors import BadSuspect, LogMisbehaving, LogUnavailable, NotALog
    from verifier.verify.digest import suspect_sha256
    from verifier.verify.log_view import open_verified_log
    from verifier.verify.suspect import load_suspect

    try:
        verifier = parse_log_key(log_key)
        keys = load_issuer(directory)
        client = LogClient(log_url, timeout=timeout)
        digest = suspect_sha256(suspect)
        with load_suspect(suspect, backbone) as loaded:
            log = open_verified_log(client, verifier, progress=not as_json and sys.stderr.isatty())
            result = trace(loaded, log, keys.marking_secret, digest)
            if disclose:
                result.disclosures = disclose_fn(client, verifier, keys, log, loaded, result, digest)
    except (BadSuspect, NotALog) as exc:
        raise exit_codes.refuse(str(exc), as_json=as_json) from None
    except LogMisbehaving as exc:
        raise exit_codes.refuse(str(exc), exit_codes.LOG_MISBEHAVING, as_json=as_json) from None
    except LogUnavailable as exc:
        raise exit_codes.refuse(str(exc), exit_codes.UNAVAILABLE, as_json=as_json) from None
    except (LogKeyError, *_errors()) as exc:
        raise exit_codes.refuse(_message(exc), _exit_code_for(exc), as_json=as_json) from None
    lines = [f"traced {result.issuances_scored} issuances with a secret tier (log size {result.tree_size}); "
             f"suspect sha256 {result.suspect_sha256}",
             f"{'rank':>4}  {'leaf':>7}  {'device':36}  {'score':>7}  {'p-value':>9}  named"]
    shown = result.rows[:top] + [r for r in result.rows[top:] if r.named]
    lines += [f"{r.rank:>4}  {r.leaf_index:>7}  {r.device_uuid:36}  {r.score:>7.2f}  {r.p_value:>9.2e}  "
              f"{'NAMED' if r.named else '-'}" for r in shown]
    lines += [f"note: {n}" for n in result.notes]
    for d in result.disclosures:
        state = "appended" if d.created else "already in the log"
        check = "verified as a public verifier checks it" if d.verified else "NOT verified"
        lines.append(f"disclosed: device {d.device_uuid} (issuance leaf {d.issuance_index}): attribution at leaf "
                     f"{d.leaf_index}, {state}, {check}")
    _emit(as_json, {"ok": True, **result.to_json(top)}, lines)
    if disclose and any(not d.verified for d in result.disclosures):
        sys.exit(exit_codes.LOG_MISBEHAVING)
    if not result.named:
        sys.exit(exit_codes.NEGATIVE)
