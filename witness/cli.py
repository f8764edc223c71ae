"""`emshield-witness`: run a C2SP tlog-witness (spec/witness.md).

The witness is a server of its own, run by someone independent of the log operator; it shares no
code with the log server, and the verifier and auditor only check what it signs.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from emshield import exit_codes
from emshield.exit_codes import Failure


@click.group(cls=exit_codes.Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run a C2SP tlog-witness: cosign checkpoints of trusted logs along one append-only history."""


@main.command("init")
@click.option("--key-file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to create the witness signing key (mode 0600; must not exist).")
@click.option("--name", required=True, help="The witness name, e.g. 'witness.example.org/w1' (the key name).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def witness_init(key_file: Path, name: str, as_json: bool) -> None:
    """Create a witness key and print its verifier key (C2SP tlog-cosignature, type 0x04)."""
    from emshield.tlog.checkpoint import NoteError

    from .keyfile import write_witness_key

    try:
        signer = write_witness_key(key_file, name)
    except FileExistsError as exc:
        raise Failure(f"{key_file} already exists; refusing to overwrite a witness key") from exc
    except (OSError, NoteError) as exc:
        raise Failure(f"cannot create the witness key: {exc}") from exc
    if as_json:
        click.echo(json.dumps({"key_file": str(key_file), "name": name, "verifier_key": signer.verifier_key()}))
    else:
        click.echo(f"witness key: {key_file} (mode 0600; keep it secret)")
        click.echo(f"witness verifier key: {signer.verifier_key()}")


@main.command("serve")
@click.option("--key-file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The witness signing key from `emshield-witness init`.")
@click.option("--state", "state_db", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite file with the latest cosigned checkpoint per log (created if missing).")
@click.option("--log-key", "log_keys", multiple=True, required=True, metavar="VERIFIER_KEY",
              help="Verifier key of a log to witness, or a file holding it (repeatable); its name is the log's origin.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 256))
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error", "critical"]))
def witness_serve(key_file: Path, state_db: Path, log_keys: tuple[str, ...], host: str, port: int, workers: int,
                  threads: int, log_level: str) -> None:
    """Serve POST /add-checkpoint (c2sp.org/tlog-witness) with gunicorn."""
    from emshield.bundle import LogKeyError, parse_log_key
    from emshield.tlog.checkpoint import NoteError

    from .http import serve
    from .keyfile import WitnessKeyError, read_witness_key
    from .service import Witness

    try:
        signer = read_witness_key(key_file)
        logs = [parse_log_key(k) for k in log_keys]
        # Fail here, clearly, rather than in a worker; and close before gunicorn forks: a worker that
        # inherited this connection's descriptor and closed it (on garbage collection) would drop the
        # POSIX locks of its own connections to the file, and SQLite would corrupt the state.
        Witness(signer, logs, state_db).close()
    except LogKeyError as exc:
        raise Failure(f"--log-key: {exc}") from exc
    except (WitnessKeyError, NoteError, ValueError, OSError) as exc:
        raise Failure(str(exc)) from exc
    serve(lambda: Witness(signer, logs, state_db), host, port, workers, threads, log_level)


@main.command("conflicts")
@click.option("--state", "state_db", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The witness state file.")
@click.option("--origin", default=None, help="Only this log.")
@click.option("--json", "as_json", is_flag=True, help="Print the evidence as JSON (requests base64).")
def witness_conflicts(state_db: Path, origin: str | None, as_json: bool) -> None:
    """Print the validly signed but inconsistent checkpoints the witness refused (fork evidence)."""
    import base64
    import sqlite3

    from .service import read_conflicts

    try:
        found = read_conflicts(state_db, origin)
    except (OSError, sqlite3.Error) as exc:
        raise Failure(f"cannot read {state_db}: {exc}") from exc
    if as_json:
        click.echo(json.dumps([{"origin": c.origin, "received_at": c.received_at, "status": c.status, "reason": c.reason,
                                "request": base64.b64encode(c.request).decode()} for c in found], indent=2))
        return
    for c in found:
        click.echo(f"--- {c.origin}: HTTP {c.status} at {c.received_at:.0f}: {c.reason}")
        click.echo(c.request.decode("utf-8", "replace"))
    if not found:
        click.echo("no conflicts recorded")
