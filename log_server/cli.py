"""`emshield-log`: create and serve the transparency log."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from emshield import exit_codes
from emshield.exit_codes import Failure

from . import keys

MAX_ORIGIN_CHARS = 255
STORE_HELP = ("The log store: a SQLite file, or a postgresql:// URL (without a password: libpq reads it from"
              " $PGPASSWORD or a 0600 password file, $PGPASSFILE or ~/.pgpass).")


class StoreParam(click.ParamType):
    """A store argument: a postgresql:// URL as it is, anything else a SQLite file's path."""

    name = "FILE|URL"

    def __init__(self, exists: bool) -> None:
        self._file = click.Path(exists=exists, dir_okay=False, path_type=Path)

    def convert(self, value, param, ctx):
        from .storage import StoreError, check_url, is_postgres

        if isinstance(value, str) and is_postgres(value):
            try:
                check_url(value)
            except StoreError as exc:
                self.fail(str(exc), param, ctx)
            return value
        return self._file.convert(value, param, ctx)


def _failure(exc: Exception) -> Failure:
    """A store, key or server failure as the command's refusal: an unreachable store server is exit 4
    (retry later), anything else the operator's input (exit 2; spec/cli.md)."""
    from .storage import StoreUnavailable

    return Failure(str(exc), exit_codes.UNAVAILABLE if isinstance(exc, StoreUnavailable) else exit_codes.BAD_INPUT)


def _store_option(exists: bool, help: str = STORE_HELP):
    return click.option("--store", "--db", "store", required=True, type=StoreParam(exists), help=help)


@click.group(cls=exit_codes.Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run the EMShield transparency log (RFC 9162 Merkle log, C2SP checkpoints)."""


@main.command()
@_store_option(False, STORE_HELP + " A file must not exist; a database must hold no log store yet.")
@click.option("--origin", required=True,
              help="The log's origin line, e.g. 'log.example.org/emshield' (also the signing key's name).")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the checkpoint signing key (mode 0600). Default: <file>.signer-key beside a"
                   " SQLite store; required with PostgreSQL.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(store: str | Path, origin: str, key_file: Path | None, as_json: bool) -> None:
    """Create the log store and the log's Ed25519 key; print the verifier key.

    The operator credential (needed to register and revoke issuers) is taken from the environment
    variable EMSHIELD_LOG_OPERATOR_TOKEN if set (at least 32 characters); otherwise a random one is
    generated and printed ONCE. The store keeps only its hash; `emshield-log set-token` replaces it.
    """
    from emshield.tlog.checkpoint import NoteSigner, is_valid_key_name

    from .sequencer import Sequencer
    from .storage import StoreError, create_store, is_postgres

    # The origin is also the signing key's name (C2SP tlog-checkpoint recommends it), so it must be
    # a valid signed-note key name: non-empty, no spaces, no '+', no control characters.
    if not is_valid_key_name(origin) or len(origin) > MAX_ORIGIN_CHARS:
        raise Failure(f"origin must be 1-{MAX_ORIGIN_CHARS} characters without spaces, '+' or"
                                   " control characters (it is also the signed-note key name)")
    if key_file is None and is_postgres(store):
        raise Failure("a PostgreSQL store needs --key-file: where to write the signing key")
    key_path = key_file or keys.default_key_path(store)
    for p in ([] if is_postgres(store) else [Path(store)]) + [key_path]:
        if p.exists():
            raise Failure(f"{p} already exists; refusing to overwrite a log")
    token, generated = _token_from_env_or_new()
    signer = NoteSigner.generate(origin)
    try:
        keys.write_signer_key(key_path, signer)
    except OSError as exc:
        raise Failure(f"cannot write the signing key to {key_path}: {exc}") from exc
    try:
        log_store = create_store(store, {"origin": origin.encode(), keys.TOKEN_META_KEY: keys.token_digest(token)})
    except (StoreError, OSError) as exc:
        key_path.unlink(missing_ok=True)
        raise _failure(exc) from exc
    # The signed checkpoint of the empty tree, so `GET /checkpoint` answers from the start.
    Sequencer(log_store, signer, origin).sign_current()
    where = log_store.describe()
    log_store.close()
    result = {"store": str(store), "key_file": str(key_path), "origin": origin, "verifier_key": signer.verifier_key(),
              "operator_token": token if generated else None,
              "operator_token_source": "generated" if generated else keys.TOKEN_ENV}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"created log {origin!r} in {where}")
    click.echo(f"signing key: {key_path} (mode 0600; back it up, keep it secret)")
    click.echo(f"verifier key: {signer.verifier_key()}")
    if generated:
        click.echo(f"operator token (shown once, only its hash is stored): {token}")
    else:
        click.echo(f"operator token: taken from ${keys.TOKEN_ENV}")


def _token_from_env_or_new() -> tuple[str, bool]:
    env = os.environ.get(keys.TOKEN_ENV)
    if env is None:
        return keys.new_operator_token(), True
    try:
        keys.check_token_strength(env)
    except ValueError as exc:
        raise Failure(f"${keys.TOKEN_ENV}: {exc}") from exc
    return env, False


@main.command("set-token")
@_store_option(True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def set_token(store: str | Path, as_json: bool) -> None:
    """Replace the operator credential (from $EMSHIELD_LOG_OPERATOR_TOKEN, or a new random one).

    Takes effect immediately for running servers (they read the hash from the store).
    """
    from .storage import StoreError, open_store

    token, generated = _token_from_env_or_new()
    try:
        log_store = open_store(store)
        with log_store.write() as tx:
            tx.set_meta(keys.TOKEN_META_KEY, keys.token_digest(token))
        log_store.close()
    except StoreError as exc:
        raise _failure(exc) from exc
    if as_json:
        click.echo(json.dumps({"operator_token": token if generated else None,
                               "operator_token_source": "generated" if generated else keys.TOKEN_ENV}))
    elif generated:
        click.echo(f"new operator token (shown once): {token}")
    else:
        click.echo(f"operator token replaced with ${keys.TOKEN_ENV}")


@main.command()
@_store_option(True, STORE_HELP + " Made by `emshield-log init`.")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The checkpoint signing key. Default: <file>.signer-key beside a SQLite store; required with"
                   " PostgreSQL.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--server", "server", default="granian", show_default=True, type=click.Choice(["granian", "gunicorn"]),
              help="HTTP server: Granian (HTTP in Rust, less CPU per request) or gunicorn (its asgi worker).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="worker processes (they decode and verify; one sequencer process commits for all).")
@click.option("--threads", default=16, show_default=True, type=click.IntRange(1, 1024),
              help="request threads per worker.")
@click.option("--body-timeout", "body_timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="seconds a request body may take to arrive after its headers; slower ones are refused (408).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error", "critical"]))
@click.option("--witness", "witnesses", multiple=True, metavar="URL=VERIFIER_KEY",
              help="A C2SP tlog-witness to submit new checkpoints to (repeatable); its cosignatures are"
                   " attached to the served checkpoint. The URL must not contain '='.")
@click.option("--witness-quorum", default=0, show_default=True, type=click.IntRange(0, 100),
              help="Serve at /checkpoint only checkpoints cosigned by at least this many of the witnesses.")
@click.option("--tiles-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write every new checkpoint's C2SP tiles and entry bundles as static files here (for nginx,"
                   " a CDN or an object-store sync): checkpoint, tile/<L>/<N>, tile/entries/<N>.")
def serve(store: str | Path, key_file: Path | None, host: str, port: int, server: str, workers: int, threads: int,
          body_timeout: float, log_level: str, witnesses: tuple[str, ...], witness_quorum: int,
          tiles_dir: Path | None) -> None:
    """Serve the log over HTTP with a production WSGI server (gunicorn or Granian)."""
    from .app import create_app
    from .config import ServerConfig
    from .keys import KeyFileError
    from .serve import AddressInUse
    from .serve import serve as run_server
    from .state import EXTENSION
    from .storage import StoreError

    config = ServerConfig(store=store, key_path=key_file, witnesses=witnesses, witness_quorum=witness_quorum,
                          tiles_dir=tiles_dir, body_timeout_s=body_timeout)
    try:  # fail here, with a clear message, rather than in every worker
        create_app(config).extensions[EXTENSION].store.close()
    except (StoreError, KeyFileError, RuntimeError, ValueError) as exc:
        raise _failure(exc) from exc
    try:
        run_server(config, host, port, workers, threads, log_level, server=server)
    except AddressInUse as exc:
        raise _failure(exc) from exc
