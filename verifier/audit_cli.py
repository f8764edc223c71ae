"""`emshield-audit`: check that a transparency log stays append-only and consistent (spec/audit.md),
and `emshield-audit witness ...`: run a C2SP tlog-witness (spec/witness.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

EXIT_CODES_HELP = """\b
Exit codes:
  0  the log is consistent with everything this auditor saw (state saved)
  1  misbehaviour found (fork, rollback, rewritten entries, ...); evidence saved
  2  usage error
  4  the log could not be reached or answered something unverifiable (retry)
  5  state problem: corrupt or locked state file, or --key differs from the pinned key"""


def _default_state() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "emshield" / "audit-state.json"


class _Fail(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXIT_CODES_HELP)
@click.option("--log", "log_url", metavar="URL", help="Base URL of the transparency log.")
@click.option("--key", metavar="VERIFIER_KEY", help="The log's verifier key (C2SP signed-note format); pinned on first use.")
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
def main(ctx: click.Context, log_url: str | None, key: str | None, state: Path | None, replay: bool,
         proofs: str, incremental: bool, jobs: int,
         evidence_dir: Path | None, timeout: float, witness_keys: tuple[str, ...], quorum: int, as_json: bool) -> None:
    """Fetch the log's latest checkpoint, verify its signature and its consistency with the
    last checkpoint this auditor verified, and report forks, rollbacks and rewritten entries
    with the evidence. `--replay` also re-checks every entry and the whole tree."""
    if ctx.invoked_subcommand is not None:
        return
    if not log_url or not key:
        raise click.UsageError("--log and --key are required (or give a sub-command)")
    if incremental and not replay:
        raise click.UsageError("--incremental only applies to --replay")
    from tqdm import tqdm

    from .audit import AuditError, audit

    state_path = state or _default_state()
    bar = tqdm(unit="entry", desc="replay", disable=as_json or None, file=sys.stderr) if replay else None
    try:
        report = audit(log_url, key, state_path, do_replay=replay, jobs=jobs, evidence_dir=evidence_dir,
                       progress=None if bar is None else bar.update, timeout=timeout, witness_keys=witness_keys,
                       quorum=quorum, incremental=incremental, proofs=proofs)
    except AuditError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": str(exc), "exit_code": exc.exit_code}))
            ctx.exit(exc.exit_code)
        raise _Fail(str(exc), exc.exit_code) from exc
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report, state_path)
    ctx.exit(0 if report.ok else 1)


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


@main.group()
def witness() -> None:
    """Run a C2SP tlog-witness: cosign checkpoints of trusted logs along one append-only history."""


@witness.command("init")
@click.option("--key-file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to create the witness signing key (mode 0600; must not exist).")
@click.option("--name", required=True, help="The witness name, e.g. 'witness.example.org/w1' (the key name).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def witness_init(key_file: Path, name: str, as_json: bool) -> None:
    """Create a witness key and print its verifier key (C2SP tlog-cosignature, type 0x04)."""
    from emshield.tlog.checkpoint import NoteError

    from .witness import write_witness_key

    try:
        signer = write_witness_key(key_file, name)
    except FileExistsError as exc:
        raise click.ClickException(f"{key_file} already exists; refusing to overwrite a witness key") from exc
    except (OSError, NoteError) as exc:
        raise click.ClickException(f"cannot create the witness key: {exc}") from exc
    if as_json:
        click.echo(json.dumps({"key_file": str(key_file), "name": name, "verifier_key": signer.verifier_key()}))
    else:
        click.echo(f"witness key: {key_file} (mode 0600; keep it secret)")
        click.echo(f"witness verifier key: {signer.verifier_key()}")


@witness.command("serve")
@click.option("--key-file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The witness signing key from `emshield-audit witness init`.")
@click.option("--state", "state_db", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite file with the latest cosigned checkpoint per log (created if missing).")
@click.option("--log-key", "log_keys", multiple=True, required=True, metavar="VERIFIER_KEY",
              help="Verifier key of a log to witness (repeatable); its name is the log's origin.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 256))
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error", "critical"]))
def witness_serve(key_file: Path, state_db: Path, log_keys: tuple[str, ...], host: str, port: int, workers: int,
                  threads: int, log_level: str) -> None:
    """Serve POST /add-checkpoint (c2sp.org/tlog-witness) with gunicorn."""
    from emshield.tlog.checkpoint import NoteError, NoteVerifier

    from .witness import Witness, WitnessKeyError, read_witness_key
    from .witness_server import serve

    try:
        signer = read_witness_key(key_file)
        logs = [NoteVerifier.from_verifier_key(k) for k in log_keys]
        # Fail here, clearly, rather than in a worker; and close before gunicorn forks: a worker that
        # inherited this connection's descriptor and closed it (on garbage collection) would drop the
        # POSIX locks of its own connections to the file, and SQLite would corrupt the state.
        Witness(signer, logs, state_db).close()
    except (WitnessKeyError, NoteError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    serve(lambda: Witness(signer, logs, state_db), host, port, workers, threads, log_level)


@witness.command("conflicts")
@click.option("--state", "state_db", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The witness state file.")
@click.option("--origin", default=None, help="Only this log.")
@click.option("--json", "as_json", is_flag=True, help="Print the evidence as JSON (requests base64).")
def witness_conflicts(state_db: Path, origin: str | None, as_json: bool) -> None:
    """Print the validly signed but inconsistent checkpoints the witness refused (fork evidence)."""
    import base64
    import sqlite3

    from .witness import read_conflicts

    try:
        found = read_conflicts(state_db, origin)
    except (OSError, sqlite3.Error) as exc:
        raise click.ClickException(f"cannot read {state_db}: {exc}") from exc
    if as_json:
        click.echo(json.dumps([{"origin": c.origin, "received_at": c.received_at, "status": c.status, "reason": c.reason,
                                "request": base64.b64encode(c.request).decode()} for c in found], indent=2))
        return
    for c in found:
        click.echo(f"--- {c.origin}: HTTP {c.status} at {c.received_at:.0f}: {c.reason}")
        click.echo(c.request.decode("utf-8", "replace"))
    if not found:
        click.echo("no conflicts recorded")
