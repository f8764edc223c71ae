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
from .storage import SqliteStore


@dataclass(frozen=True)
class ServerConfig:
    """Everything `create_app` needs; limits are part of the API (spec/api.md, "Limits")."""

    db_path: Path
    key_path: Path | None = None  # default: <db>.signer-key
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch_entries: int = 10_000
    max_page: int = 1000
    max_lookup: int = 100
    max_side_record_bytes: int = 1 << 20
    max_sequencer_batch: int = 20_000
    witnesses: tuple[str, ...] = ()  # "URL=VERIFIER_KEY" of C2SP tlog-witnesses to submit checkpoints to
    witness_quorum: int = 0  # GET /checkpoint serves the latest checkpoint cosigned by this many of them
    witness_poll_s: float = 0.2
    body_timeout_s: float = 10.0  # `serve`: a request body not complete this long after its headers is refused (408)
    sequencer_socket: Path | None = None  # set by `serve`: the sequencer process's Unix socket

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ServerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown server config keys: {sorted(unknown)}")
        cfg = cls(**{k: v for k, v in values.items()})
        return replace(cfg, db_path=Path(cfg.db_path), key_path=None if cfg.key_path is None else Path(cfg.key_path),
                       witnesses=tuple(cfg.witnesses),
                       sequencer_socket=None if cfg.sequencer_socket is None else Path(cfg.sequencer_socket))


def open_store(cfg: ServerConfig) -> tuple[SqliteStore, str]:
    """The store and its origin. Fails early if the store is not one `emshield-log init` made."""
    store = SqliteStore(cfg.db_path)
    origin_raw = store.meta("origin")
    if origin_raw is None or store.meta(keys.TOKEN_META_KEY) is None:
        raise RuntimeError(f"{cfg.db_path}: store has no origin or operator credential; re-run `emshield-log init`")
    return store, origin_raw.decode("utf-8")


def open_sequencer(cfg: ServerConfig) -> Sequencer:
    """The store's sequencer with the log's signing key. Fails early if the store or key is unusable."""
    store, origin = open_store(cfg)
    signer = keys.read_signer_key(cfg.key_path or keys.default_key_path(cfg.db_path))
    if signer.name != origin:
        raise RuntimeError(f"signing key name {signer.name!r} does not match the log origin {origin!r}")
    return Sequencer(store, signer, origin, max_batch=cfg.max_sequencer_batch)
