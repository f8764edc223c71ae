"""Fetch C2SP tlog-tiles resources (hash tiles, entry bundles) from a log or any mirror of it.

Only fetching and strict decoding: whether the bytes are *right* is the auditor's business
(verifier/audit.py). Fetches run on a small thread pool (one HTTP session per thread) because a
replay needs two resources per 256 entries and latency, not bandwidth, bounds it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import requests

from emshield.tlog.merkle import NodeID, root_from_leaf_hashes
from emshield.tlog.tiles import MAX_LEVEL, TILE_HEIGHT, TILE_WIDTH, Tile, TileError, decode_entry_bundle, tile_hashes

DEFAULT_TIMEOUT_S = 30.0
MAX_TILE_BYTES = 256 * (2 + 0xFFFF)  # the largest possible entry bundle


class TileFetchError(RuntimeError):
    """A tile could not be fetched, or its bytes are not a well-formed tile of that path."""


class TileClient:
    """Reads ``<prefix>/tile/...`` from one log; thread safe."""

    def __init__(self, prefix: str, *, timeout: float = DEFAULT_TIMEOUT_S, threads: int = 8) -> None:
        self.prefix = prefix.rstrip("/")
        self.timeout = timeout
        self.threads = threads
        self._local = threading.local()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def fetch_raw(self, tile: Tile) -> bytes:
        """The bytes at the tile's path (no interpretation beyond a size bound)."""
        url = f"{self.prefix}/{tile.path()}"
        try:
            with self._session().get(url, timeout=self.timeout, stream=True,
                                     headers={"Accept-Encoding": "gzip, identity"}) as resp:
                if resp.status_code != 200:
                    raise TileFetchError(f"GET {url}: HTTP {resp.status_code} {resp.text[:200]!r}")
                data = resp.raw.read(MAX_TILE_BYTES + 1, decode_content=True)
        except requests.RequestException as exc:
            raise TileFetchError(f"GET {url}: {exc}") from exc
        if len(data) > MAX_TILE_BYTES:
            raise TileFetchError(f"GET {url}: answer larger than any tile")
        return data

    def hashes(self, tile: Tile) -> list[bytes]:
        """A hash tile's ``width`` 32-byte hashes."""
        try:
            return tile_hashes(self.fetch_raw(tile), tile)
        except TileError as exc:
            raise TileFetchError(str(exc)) from exc

    def entries(self, tile: Tile) -> list[bytes]:
        """An entry bundle's ``width`` entries."""
        try:
            return decode_entry_bundle(self.fetch_raw(tile), tile)
        except TileError as exc:
            raise TileFetchError(str(exc)) from exc

    def fetch_many(self, tiles: Iterable[Tile]) -> Iterator[tuple[Tile, list[bytes]]]:
        """Hash tiles or bundles (decoded), in the given order, fetched concurrently."""
        def one(t: Tile) -> tuple[Tile, list[bytes]]:
            return t, (self.entries(t) if t.level is None else self.hashes(t))

        with ThreadPoolExecutor(self.threads) as pool:
            yield from pool.map(one, tiles)


def tile_node_reader(client: TileClient, tree_size: int) -> Callable[[list[NodeID]], dict[NodeID, bytes]]:
    """A `merkle.GetNodes` over the tiles of a tree of ``tree_size`` leaves, so that RFC 9162
    inclusion and consistency proofs can be computed from a tile mirror alone (no /v1 API).

    Perfect node (8·k + r, i) is the root of the 2**r level-k tile hashes i·2**r .. (i+1)·2**r − 1,
    which lie in one tile. Nodes the tree does not have are left out (merkle reports them missing).
    Whatever this returns is untrusted: callers verify the proofs against signed roots.
    """
    cache: dict[Tile, list[bytes]] = {}

    def get_nodes(ids: list[NodeID]) -> dict[NodeID, bytes]:
        where: dict[NodeID, tuple[Tile, int, int]] = {}
        for level, index in ids:
            k, r = divmod(level, TILE_HEIGHT)
            first = index << r
            n, offset = divmod(first, TILE_WIDTH)
            width = min(TILE_WIDTH, tree_size // TILE_WIDTH ** k - n * TILE_WIDTH)
            if k <= MAX_LEVEL and offset + (1 << r) <= width:
                where[(level, index)] = (Tile(k, n, width), offset, 1 << r)
        missing = list(dict.fromkeys(t for t, _, _ in where.values() if t not in cache))
        cache.update(client.fetch_many(missing))
        return {node: root_from_leaf_hashes(cache[t][off:off + count]) for node, (t, off, count) in where.items()}

    return get_nodes
