"""Regenerate the tile vectors: `python spec/vectors/tiles/make_vectors.py` (spec/tiles.md).

tiles.json holds
- `paths`: tile and entry-bundle paths for (level, index, width), including the examples of the
  C2SP tlog-tiles text (index 1234067 is x001/x234/067);
- `invalid_paths`: paths a strict parser must refuse (the part after `tile/`), with the reason;
- `tree`: a log of 70,000 leaves ``b"emshield tile vector %d"`` and, for every tile the spec's
  70,000 example names plus a few more, the width, SHA-256 of the tile bytes and its first hash;
  and one small partial entry bundle in full. Tile hashes here are computed with a literal
  transcription of RFC 9162 MTH (not the project's node store), so the vectors check our code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from emshield.tlog.tiles import Tile, encode_entry_bundle, tiles_at_level

SIZE = 70_000


def leaf(i: int) -> bytes:
    return b"emshield tile vector %d" % i


def mth(hashes: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 over leaf hashes: split at the largest power of two below n."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(hashes[:k]) + mth(hashes[k:])).digest()


def main() -> None:
    leaf_hashes = [hashlib.sha256(b"\x00" + leaf(i)).digest() for i in range(SIZE)]
    paths = [{"level": lv, "index": n, "width": w, "path": Tile(lv, n, w).path()}
             for lv, n, w in [(0, 0, 256), (0, 1234067, 256), (0, 1234067, 8), (1, 999, 256), (2, 1000, 17),
                              (63, 1000000, 255), (0, 18446744073709551615, 256)]]
    paths += [{"level": None, "index": n, "width": w, "path": Tile(None, n, w).path()}
              for n, w in [(0, 1), (1234067, 256), (1234067, 8), (5, 3)]]
    invalid = [("0/1", "3-digit"), ("0/0001", "3-digit"), ("00/000", "level"), ("64/000", "level"),
               ("0/x000/001", "redundant"), ("0/x1/000", "3-digit"), ("0/001/x002", "3-digit"),
               ("0/000.p/256", "width"), ("0/000.p/0", "width"), ("0/000.p/01", "width"),
               ("0/000.p", "3-digit"), ("entry/000", "level"), ("0", "tile path"), ("-1/000", "level"),
               ("0/000/", "3-digit"), ("0/x001/x002/x003/x004/x005/x006/x007/x008/009", "too large")]
    tiles = []
    for level in range(3):
        span = 256 ** level
        level_hashes = [mth(leaf_hashes[j * span:(j + 1) * span]) for j in range(SIZE // span)] if level else leaf_hashes
        for t in tiles_at_level(level, SIZE):
            if t.index not in (0, 1, 272, 273):
                continue
            hs = level_hashes[t.index * 256:t.index * 256 + t.width]
            tiles.append({"path": t.path(), "width": t.width, "sha256": hashlib.sha256(b"".join(hs)).hexdigest(),
                          "first_hash": hs[0].hex()})
    bundle = Tile(None, 273, 112)
    bundles = [{"path": bundle.path(),
                "sha256": hashlib.sha256(encode_entry_bundle([leaf(i) for i in range(273 * 256, SIZE)])).hexdigest()},
               {"path": Tile(None, 0, 3).path(), "hex": encode_entry_bundle([leaf(i) for i in range(3)]).hex()}]
    doc = {"spec": "spec/tiles.md (C2SP tlog-tiles)", "paths": paths,
           "invalid_paths": [{"path": p, "reason": r} for p, r in invalid],
           "tree": {"size": SIZE, "leaf": "b'emshield tile vector %d' % i", "root": mth(leaf_hashes).hex(),
                    "tile_counts": {str(lv): [t.width for t in tiles_at_level(lv, SIZE)][-2:] for lv in range(4)},
                    "tiles": tiles, "bundles": bundles}}
    out = Path(__file__).with_name("tiles.json")
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
