"""`emshield-audit`: check that a transparency log stays append-only and consistent (spec/audit.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from emshield import exit_codes

EXIT_CODES_HELP = """\b
Exit codes (the same for every EMShield command, spec/cli.md):
  0  the log is consistent with everything this auditor saw (state saved)
  2  bad input: options, --key or --witness keys, or no log at --log
  3  the log misbehaves (fork, rollback, rewritten entries, a checkpoint that does not
     verify with the pinned key, ...); evidence saved
  4  the log could not be reached or served an incomplete answer (retry)
  7  local state: corrupt or locked state file, or --key differs from the pinned key"""


def _default_state() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "emshield" / "audit-state.json"


@click.command(cls=exit_codes.Command, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.option("--log", "log_url", metavar="URL", required=True, help="Base URL of the transparency log.")
@click.option("--key", metavar="KEY|FILE", required=True,
              help="The log's verifier key (C2SP signed-note format), or a file holding it; pinned on first use.")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="State file holding the pinned key and last verified checkpoint per log."
                   " Default: $XDG_STATE_HOME/emshield/audit-state.json")
@click.option("--replay", is_flag=True, help="Read every entry through the tile API, check each one and recompute the tree.")
@click.option("--proofs", type=click.Choice(["tiles", "api"]), default="tiles", show_default=True,
              help="Where consistency proofs come from: computed from the C2SP tiles (works against a plain"
                   " tile mirror) or the log's /v1/proof/consistency.")
@click.option("--incremental", is_flag=True,
              help="With --replay: check only entries after the tree the last replay of this state checked"
                   " (faster; does not re-read old entries, so a later rewrite of one goes unseen).")
@click.option("--jobs", type=click.IntRange(1, 64), default=os.cpu_count() or 1, show_default=True,
              help="Processes that check entry signatures during --replay.")
@click.option("--evidence-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where evidence of misbehaviour is written. Default: <state>.evidence/")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=30.0, show_default=True,
              help="HTTP timeout in seconds.")
@click.option("--witness", "witness_keys", multiple=True, metavar="WITNESS_KEY",
              help="A witness verifier key (C2SP tlog-cosignature, repeatable); see --quorum.")
@click.option("--quorum", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Require this many of the --witness keys to have cosigned the checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def main(ctx: click.Context, log_url: str, key: str, state: Path | None, replay: bool,
         proofs: str, incremental: bool, jobs: int,
         evidence_dir: Path | None, timeout: float, witness_keys: tuple[str, ...], quorum: int, as_json: bool) -> None:
    """Fetch the log's latest checkpoint, verify its signature and its consistency with the
    last checkpoint this auditor verified, and report forks, rollbacks and rewritten entries
    with the evidence. `--replay` also re-checks every entry and the whole tree."""
    if incremental and not replay:
        raise click.UsageError("--incremental only applies to --replay")
    from tqdm import tqdm

    from emshield.bundle import LogKeyError, parse_log_key
    from emshield.logclient.url import log_url_problem

    from .auditor import AuditError, audit

    problem = log_url_problem(log_url)
    if problem is not None:
        raise exit_codes.refuse(f"--log {problem}", exit_codes.BAD_INPUT, as_json=as_json)
    try:
        key = parse_log_key(key).verifier_key()  # the key itself, or read from the file naming it
    except LogKeyError as exc:
        raise exit_codes.refuse(f"--key: {exc}", exit_codes.BAD_INPUT, as_json=as_json) from exc
    state_path = state or _default_state()
    bar = tqdm(unit="entry", desc="replay", disable=as_json or None, file=sys.stderr) if replay else None
    try:
        report = audit(log_url, key, state_path, do_replay=replay, jobs=jobs, evidence_dir=evidence_dir,
                       progress=None if bar is None else bar.update, timeout=timeout, witness_keys=witness_keys,
                       quorum=quorum, incremental=incremental, proofs=proofs)
    except AuditError as exc:
        raise exit_codes.refuse(str(exc), exc.exit_code, as_json=as_json) from exc
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report, state_path)
    ctx.exit(exit_codes.OK if report.ok else exit_codes.LOG_MISBEHAVING)


def _print_report(report, state_path: Path) -> None:
    cp = report.checkpoint
    prev = report.previous
    click.echo(f"log {report.origin} at {report.url}")
    click.echo(f"checkpoint: size {cp.size}, signature valid"
               + ("" if prev is None else f" (previously verified: size {prev.size})"))
    if report.replayed:
        click.echo(f"replayed {report.replayed} entries from index {report.replayed_from} in {report.elapsed_s:.1f} s")
    if report.ok:
        click.echo(f"OK: consistent; state saved to {state_path}")
        return
    for f in report.findings:
        click.echo(f"MISBEHAVIOUR [{f.kind}]: {f.detail}", err=True)
    click.echo(f"evidence written to {report.evidence_file}", err=True)
