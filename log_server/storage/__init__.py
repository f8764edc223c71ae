"""The log's stores: the `LogStore` / `WriteTxn` protocols (`interface`), SQLite (`sqlite`, the
embedded default) and PostgreSQL (`postgres`, for several API hosts on one database).

A store is named by one string: a `postgresql://` (or `postgres://`) URL, or else the path of a
SQLite file. `open_store` and `create_store` take that string; nothing else needs to know which
store it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .interface import (
    ATTRIBUTION_LOOKUP_FIELDS,
    ISSUANCE_KEYS,
    ISSUER_EPOCH_META_KEY,
    LOOKUP_FIELDS,
    SCHEMA_VERSION,
    AttributionIndex,
    AttributionRow,
    DuplicateLeaf,
    IssuanceIndex,
    IssuanceRow,
    IssuerRecord,
    LeafRecord,
    LeafRow,
    LogStore,
    NodeID,
    RoleLock,
    StoredCheckpoint,
    StoreError,
    StoreUnavailable,
    TreeHead,
    WriteCtx,
    WriteTxn,
    blob_key,
    device_key,
)
from .sqlite import SqliteStore

__all__ = [
    "ATTRIBUTION_LOOKUP_FIELDS", "AttributionIndex", "AttributionRow", "ISSUANCE_KEYS", "ISSUER_EPOCH_META_KEY", "LOOKUP_FIELDS", "SCHEMA_VERSION", "DuplicateLeaf", "IssuanceIndex",
    "IssuanceRow", "IssuerRecord", "LeafRecord", "LeafRow", "LogStore", "NodeID", "RoleLock", "SqliteStore",
    "StoreError", "StoreUnavailable", "StoredCheckpoint", "TreeHead", "WriteCtx", "WriteTxn", "blob_key", "check_url", "create_store",
    "device_key",
    "is_postgres", "open_store",
]

_URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(store: str | Path) -> bool:
    """Whether ``store`` names a PostgreSQL database (a URL) rather than a SQLite file."""
    return isinstance(store, str) and store.startswith(_URL_SCHEMES)


def check_url(url: str) -> None:
    """`StoreError` unless ``url`` is a PostgreSQL URL this store accepts (parses; no password in it)."""
    from .postgres import check_url as check

    check(url)


def open_store(store: str | Path) -> LogStore:
    """The existing log store ``store`` names; `StoreError` for anything that is not one, left as it is."""
    if is_postgres(store):
        from .postgres import PostgresStore  # psycopg only where PostgreSQL is used

        return PostgresStore(str(store))
    return SqliteStore(store)


def create_store(store: str | Path, meta: Mapping[str, bytes]) -> LogStore:
    """A new, empty log store at ``store`` with ``meta``; `StoreError` if one (or anything else) is there."""
    if is_postgres(store):
        from .postgres import PostgresStore

        return PostgresStore.create(str(store), meta)
    return SqliteStore.create(store, meta)
