"""C2SP tlog-tiles: tile paths, tile and entry-bundle encodings, and which tiles a tree has.

Pure functions over ints and bytes (spec/tiles.md). A tile at level L, index N holds the Merkle
Tree Hashes of 256 consecutive perfect subtrees of 256**L leaves each; in this project's node
store (merkle.py) those are the perfect nodes ``(8 * L, N * 256 + i)``. The rightmost tile of a
level may be *partial* (width 1..255). Entry bundles are the leaves of one level-0 tile, each
prefixed with its length as a big-endian uint16.

Paths are parsed strictly: one resource has exactly one path (no leading zeros, no redundant
``x000`` groups, widths 1..255 only with ``.p/``), so HTTP caches never hold two copies and a
hostile path cannot name something unexpected.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .merkle import HASH_SIZE, root_from_leaf_hashes

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # hashes in a full tile, entries in a full bundle
MAX_LEVEL = 63
MAX_BUNDLE_ENTRY = 0xFFFF  # the uint16 length prefix
ENTRIES = "entries"

_LEVEL = re.compile(r"0|[1-9][0-9]?")
_WIDTH = re.compile(r"[1-9][0-9]{0,2}")
_GROUP = re.compile(r"x[0-9]{3}")
_LAST = re.compile(r"[0-9]{3}")


class TileError(ValueError):
    """A tile path, tile or entry bundle is malformed or does not fit the tree."""


@dataclass(frozen=True)
class Tile:
    """One tile resource: ``level`` is None for an entry bundle; ``width`` is 256 when full."""

    level: int | None
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        if self.level is not None and not 0 <= self.level <= MAX_LEVEL:
            raise TileError(f"tile level must be 0..{MAX_LEVEL}, got {self.level}")
        if self.index < 0:
            raise TileError(f"tile index must not be negative, got {self.index}")
        if not 1 <= self.width <= TILE_WIDTH:
            raise TileError(f"tile width must be 1..{TILE_WIDTH}, got {self.width}")

    @property
    def full(self) -> bool:
        return self.width == TILE_WIDTH

    @property
    def hash_level(self) -> int:
        """The Merkle level of the hashes in this tile (entry bundles: their leaves, level 0)."""
        return TILE_HEIGHT * (self.level or 0)

    def path(self) -> str:
        """``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]``."""
        head = ENTRIES if self.level is None else str(self.level)
        tail = "" if self.full else f".p/{self.width}"
        return f"tile/{head}/{encode_index(self.index)}{tail}"

    def leaf_range(self) -> tuple[int, int]:
        """The leaves [start, end) the hashes of this tile cover (its end for a partial tile)."""
        span = TILE_WIDTH ** (self.level or 0)
        return self.index * TILE_WIDTH * span, (self.index * TILE_WIDTH + self.width) * span

    def fits(self, tree_size: int) -> bool:
        """Whether a tree of ``tree_size`` leaves determines every hash of this tile."""
        return self.leaf_range()[1] <= tree_size


def encode_index(n: int) -> str:
    """Tile index as zero-padded 3-digit path elements, all but the last prefixed with 'x'."""
    if n < 0:
        raise TileError(f"tile index must not be negative, got {n}")
    digits = str(n)
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i:i + 3] for i in range(0, len(digits), 3)]
    return "/".join([f"x{g}" for g in groups[:-1]] + [groups[-1]])


def parse_tile_path(path: str) -> Tile:
    """Strict parse of ``<L>/<N>[.p/<W>]`` or ``entries/<N>[.p/<W>]`` (the part after ``tile/``)."""
    parts = path.split("/")
    if len(parts) < 2:
        raise TileError("a tile path is <L>/<N>[.p/<W>] or entries/<N>[.p/<W>]")
    head, rest = parts[0], parts[1:]
    if head == ENTRIES:
        level = None
    elif _LEVEL.fullmatch(head) and int(head) <= MAX_LEVEL:
        level = int(head)
    else:
        raise TileError(f"tile level must be 0..{MAX_LEVEL} without leading zeros or 'entries', got {head[:20]!r}")
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        w = rest[-1]
        if not _WIDTH.fullmatch(w) or int(w) >= TILE_WIDTH:
            raise TileError(f"partial tile width must be 1..{TILE_WIDTH - 1} without leading zeros, got {w[:20]!r}")
        width = int(w)
        rest = rest[:-2] + [rest[-2][:-2]]
    *groups, last = rest
    if not _LAST.fullmatch(last) or not all(_GROUP.fullmatch(g) for g in groups):
        raise TileError("tile index must be 3-digit path elements, all but the last starting with 'x'")
    if groups and groups[0] == "x000":
        raise TileError("tile index has a redundant leading x000 element")
    if len(groups) > 7:  # 2**64 has 20 digits: at most 7 groups before the last
        raise TileError("tile index is too large")
    index = int("".join(g[1:] for g in groups) + last)
    return Tile(level, index, width)


def tile_hashes(data: bytes, tile: Tile) -> list[bytes]:
    """Split a hash tile into its ``width`` 32-byte hashes (the size must be exact)."""
    if len(data) != tile.width * HASH_SIZE:
        raise TileError(f"{tile.path()}: {len(data)} bytes, want {tile.width * HASH_SIZE}")
    return [data[i:i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    """Entries each prefixed with a big-endian uint16 length (one level-0 tile's worth)."""
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise TileError(f"an entry bundle holds 1..{TILE_WIDTH} entries, got {len(entries)}")
    out = bytearray()
    for i, e in enumerate(entries):
        if len(e) > MAX_BUNDLE_ENTRY:
            raise TileError(f"entry {i} is {len(e)} bytes; an entry bundle holds at most {MAX_BUNDLE_ENTRY}")
        out += len(e).to_bytes(2, "big") + e
    return bytes(out)


def decode_entry_bundle(data: bytes, tile: Tile) -> list[bytes]:
    """The ``tile.width`` entries of a bundle; anything short, long or trailing is an error."""
    entries: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise TileError(f"{tile.path()}: truncated length prefix at byte {pos}")
        size = int.from_bytes(data[pos:pos + 2], "big")
        end = pos + 2 + size
        if end > len(data):
            raise TileError(f"{tile.path()}: entry {len(entries)} is truncated")
        entries.append(data[pos + 2:end])
        pos = end
        if len(entries) > tile.width:
            raise TileError(f"{tile.path()}: more than {tile.width} entries")
    if len(entries) != tile.width:
        raise TileError(f"{tile.path()}: {len(entries)} entries, want {tile.width}")
    return entries


def bundles_for(start: int, end: int) -> list[Tile]:
    """The entry bundles (full, then at most one partial) that hold the leaves [start, end)."""
    if not 0 <= start <= end:
        raise TileError(f"need 0 <= start <= end, got {start}, {end}")
    out = []
    for n in range(start // TILE_WIDTH, -(-end // TILE_WIDTH)):
        width = min(TILE_WIDTH, end - n * TILE_WIDTH)
        out.append(Tile(None, n, width))
    return out


def tiles_at_level(level: int, tree_size: int) -> list[Tile]:
    """Every hash tile of one level in a tree of ``tree_size`` leaves (full ones, then the partial one)."""
    span = TILE_WIDTH ** level
    hashes = tree_size // span  # perfect subtrees of 256**level leaves at this level
    full, rest = divmod(hashes, TILE_WIDTH)
    tiles = [Tile(level, n) for n in range(full)]
    if rest:
        tiles.append(Tile(level, full, rest))
    return tiles


def tile_root(hashes: Sequence[bytes]) -> bytes:
    """MTH of a full tile's 256 hashes: the hash its parent tile holds for it."""
    if len(hashes) != TILE_WIDTH:
        raise TileError(f"only a full tile ({TILE_WIDTH} hashes) has a parent hash, got {len(hashes)}")
    return root_from_leaf_hashes(hashes)
