"""The C2SP tlog-tiles read API over the log store (spec/tiles.md).

Tiles and entry bundles are read straight from the store: a hash tile is one primary-key range
of perfect nodes (level 8·L), a bundle one range of leaves. Only resources that the latest
checkpoint's tree determines are served, so every byte served is covered by a signed checkpoint
and never changes afterwards: full tiles are cacheable forever, partial ones briefly (a log may
stop serving a partial tile once the full one exists).
"""

from __future__ import annotations

from emshield.tlog.tiles import TILE_WIDTH, Tile, TileError, encode_entry_bundle

from .storage import LogStore, StoreError

FULL_CACHE = "public, max-age=31536000, immutable"
PARTIAL_CACHE = "public, max-age=60"


class TileNotFound(LookupError):
    """The path is well formed but the tree does not (yet) determine that tile."""


def cache_control(tile: Tile) -> str:
    return FULL_CACHE if tile.full else PARTIAL_CACHE


def read(store: LogStore, tile: Tile, tree_size: int) -> bytes:
    """The bytes of a hash tile or entry bundle in a tree of ``tree_size`` leaves."""
    if not tile.fits(tree_size):
        raise TileNotFound(f"{tile.path()} is beyond the tree of size {tree_size}")
    first = tile.index * TILE_WIDTH
    if tile.level is None:
        leaves = store.leaves(first, first + tile.width)
        if len(leaves) != tile.width:
            raise StoreError(f"store lacks leaves of {tile.path()}")
        try:
            return encode_entry_bundle([lf.data for lf in leaves])
        except TileError as exc:  # cannot happen: entry field limits keep entries below 64 KiB
            raise StoreError(str(exc)) from exc
    hashes = store.node_range(tile.hash_level, first, first + tile.width)
    if len(hashes) != tile.width:
        raise StoreError(f"store lacks nodes of {tile.path()}")
    return b"".join(hashes)
