"""A log server's configuration, and opening its store and sequencer from it.

Both the Flask app of every worker and the sequencer process open the store through here, so they
agree on what a usable store is (one `emshield-log init` made) and on the signing key's path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import keys
from .sequencer import Sequencer
from .static_tiles import TileMirror
from .storage import LogStore, is_postgres, open_store


@dataclass(frozen=True)
class ServerConfig:
    """Everything `create_app` needs; limits are part of the API (spec/api.md, "Limits")."""

    store: str | Path  # a SQLite file, or a postgresql:// URL (`storage.open_store`)
    key_path: Path | None = None  # default: <file>.signer-key beside a SQLite store; required with PostgreSQL
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch_entries: int = 10_000
    max_page: int = 1000
    max_lookup: int = 100
    max_side_record_bytes: int = 1 << 20
    max_sequencer_batch: int = 20_000
    witnesses: tuple[str, ...] = ()  # "URL=VERIFIER_KEY" of C2SP tlog-witnesses to submit checkpoints to
    witness_quorum: int = 0  # GET /checkpoint serves the latest checkpoint cosigned by this many of them
    witness_poll_s: float = 0.2
    tiles_dir: Path | None = None  # the sequencer writes static C2SP tiles of every new checkpoint here
    body_timeout_s: float = 10.0  # `serve`: a request body not complete this long after its headers is refused (408)
    sequencer_socket: Path | None = None  # set by `serve`: the sequencer process's Unix socket

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ServerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown server config keys: {sorted(unknown)}")
        cfg = cls(**{k: v for k, v in values.items()})

        def path(p: Any) -> Path | None:
            return None if p is None else Path(p)

        return replace(cfg, store=cfg.store if is_postgres(cfg.store) else Path(cfg.store), key_path=path(cfg.key_path),
                       witnesses=tuple(cfg.witnesses), tiles_dir=path(cfg.tiles_dir),
                       sequencer_socket=path(cfg.sequencer_socket))

    @property
    def signer_key_path(self) -> Path:
        """The checkpoint signing key's file: given, or beside a SQLite store."""
        if self.key_path is not None:
            return self.key_path
        if is_postgres(self.store):
            raise keys.KeyFileError("a PostgreSQL store has no default signing key file: give --key-file")
        return keys.default_key_path(self.store)


def open_log(cfg: ServerConfig) -> tuple[LogStore, str]:
    """The store and its origin. Fails early if the store is not one `emshield-log init` made."""
    store = open_store(cfg.store)
    origin_raw = store.meta("origin")
    if origin_raw is None or store.meta(keys.TOKEN_META_KEY) is None:
        store.close()
        raise RuntimeError(f"{store.describe()}: store has no origin or operator credential; re-run `emshield-log init`")
    return store, origin_raw.decode("utf-8")


def open_sequencer(cfg: ServerConfig) -> Sequencer:
    """The store's sequencer with the log's signing key (and, with ``tiles_dir``, the static tile
    mirror it wakes after every commit). Fails early if the store or key is unusable."""
    store, origin = open_log(cfg)
    try:
        signer = keys.read_signer_key(cfg.signer_key_path)
    except keys.KeyFileError:
        store.close()
        raise
    if signer.name != origin:
        store.close()
        raise RuntimeError(f"signing key name {signer.name!r} does not match the log origin {origin!r}")
    on_commit = (lambda: None) if cfg.tiles_dir is None else TileMirror(store, cfg.tiles_dir).wake
    return Sequencer(store, signer, origin, max_batch=cfg.max_sequencer_batch, on_commit=on_commit)
