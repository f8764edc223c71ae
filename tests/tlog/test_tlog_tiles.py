"""C2SP tlog-tiles (the pure core): path encoding and strict parsing, tile geometry, entry-bundle
bytes against the vectors in spec/vectors/tiles/ (computed with a literal RFC 9162 MTH)."""

from __future__ import annotations

import json
import random

import pytest

from _kit.paths import VECTORS as VECTOR_DIR
from emshield.tlog.tiles import (
    Tile,
    TileError,
    bundles_for,
    decode_entry_bundle,
    encode_entry_bundle,
    parse_tile_path,
    tile_hashes,
    tiles_at_level,
)

VECTORS = json.loads((VECTOR_DIR / "tiles" / "tiles.json").read_text())


def test_path_vectors_encode_and_parse() -> None:
    for case in VECTORS["paths"]:
        t = Tile(case["level"], case["index"], case["width"])
        assert t.path() == case["path"]
        assert parse_tile_path(case["path"].removeprefix("tile/")) == t
    rng = random.Random(7)
    for _ in range(2000):
        t = Tile(rng.choice([None, 0, 1, 5, 63]), rng.randrange(1 << rng.randrange(1, 64)), rng.randrange(1, 257))
        assert parse_tile_path(t.path().removeprefix("tile/")) == t


def test_invalid_paths_are_refused() -> None:
    assert VECTORS["invalid_paths"]
    for case in VECTORS["invalid_paths"]:
        with pytest.raises(TileError, match=case["reason"]):
            parse_tile_path(case["path"])


def test_tile_geometry_follows_the_spec_example() -> None:
    tree = VECTORS["tree"]
    # "a tree of size 70,000 will be represented by 273 full level 0 tiles, one partial level 0
    # tile of width 112, one full level 1 tile, one partial level 1 tile of width 17, and one
    # partial level 2 tile of width 1" (c2sp.org/tlog-tiles).
    assert [t.width for t in tiles_at_level(0, 70_000)] == [256] * 273 + [112]
    assert [t.width for t in tiles_at_level(1, 70_000)] == [256, 17]
    assert [t.width for t in tiles_at_level(2, 70_000)] == [1]
    assert tiles_at_level(3, 70_000) == []
    assert {k: v for k, v in tree["tile_counts"].items()} == {"0": [256, 112], "1": [256, 17], "2": [1], "3": []}
    assert [t.width for t in tiles_at_level(1, 256)] == [1]  # "a tree of size 256 ... partial level 1 tile of width 1"
    assert [(b.index, b.width) for b in bundles_for(250, 600)] == [(0, 256), (1, 256), (2, 88)]


def test_entry_bundle_encoding_is_strict() -> None:
    small = next(b for b in VECTORS["tree"]["bundles"] if "hex" in b)
    data = bytes.fromhex(small["hex"])
    t = parse_tile_path(small["path"].removeprefix("tile/"))
    entries = decode_entry_bundle(data, t)
    assert entries == [b"emshield tile vector %d" % i for i in range(3)]
    assert encode_entry_bundle(entries) == data
    for bad, why in [(data[:-1], "truncated"), (data + b"\x00", "truncated"), (data + b"\x00\x00", "more than"),
                     (data[:2 + len(entries[0])], "1 entries, want 3")]:
        with pytest.raises(TileError, match=why):
            decode_entry_bundle(bad, t)
    with pytest.raises(TileError, match="at most 65535"):
        encode_entry_bundle([b"x" * 65536])
    with pytest.raises(TileError, match="bytes, want"):
        tile_hashes(b"\x00" * 33, Tile(0, 0, 1))
