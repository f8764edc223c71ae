"""C2SP tlog-tiles served by the log: the store's tiles against the vectors in spec/vectors/tiles/,
and the read API of a real server, proofs from the tiles alone included (`emshield.logclient.tiles`)."""

from __future__ import annotations

import hashlib
import json

import pytest
import requests

from _kit.logs import issuance, registration
from _kit.paths import VECTORS as VECTOR_DIR
from emshield.logclient.http import LogClient
from emshield.logclient.tiles import TileClient, tile_node_reader
from emshield.tlog import merkle
from emshield.tlog.tiles import Tile, decode_entry_bundle, parse_tile_path, tile_hashes, tile_root, tiles_at_level
from log_server import tile_reader
from log_server.storage import LeafRecord, create_store

VECTORS = json.loads((VECTOR_DIR / "tiles" / "tiles.json").read_text())


def test_server_store_reads_match_the_vectors(store_location) -> None:
    """The store's tiles (perfect nodes at level 8·L) equal tiles computed by literal RFC 9162 MTH."""
    tree = VECTORS["tree"]
    store = create_store(store_location, {"origin": b"vectors"})
    rng = merkle.CompactRange()
    leaves, nodes = [], []
    for i in range(tree["size"]):
        data = b"emshield tile vector %d" % i
        lh = merkle.leaf_hash(data)
        leaves.append(LeafRecord(i, lh, data, "vector"))
        nodes.extend(rng.append(lh))
    with store.write() as tx:
        tx.add_leaves(leaves)
        tx.add_nodes(nodes)
    assert rng.root().hex() == tree["root"]
    for case in tree["tiles"]:
        t = parse_tile_path(case["path"].removeprefix("tile/"))
        data = tile_reader.read(store, t, tree["size"])
        assert (len(data) // 32, hashlib.sha256(data).hexdigest(), data[:32].hex()) == \
            (case["width"], case["sha256"], case["first_hash"]), case["path"]
    big = next(b for b in tree["bundles"] if "sha256" in b)
    data = tile_reader.read(store, parse_tile_path(big["path"].removeprefix("tile/")), tree["size"])
    assert hashlib.sha256(data).hexdigest() == big["sha256"]
    with pytest.raises(tile_reader.TileNotFound):
        tile_reader.read(store, Tile(0, 273, 113), tree["size"])
    with pytest.raises(tile_reader.TileNotFound):
        tile_reader.read(store, Tile(2, 0, 2), tree["size"])
    store.close()


def test_tile_api_of_a_real_server(log_files, server_factory, issuer_key) -> None:
    srv = server_factory(log_files)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    log.append_batch([issuance(issuer_key, n) for n in range(599)])
    cp = log.verified_checkpoint(log_files.verifier)
    assert cp.size == 600
    leaves = [e.data for e in log.iter_entries(0, cp.size)]
    hashes = [merkle.leaf_hash(d) for d in leaves]

    def get(path: str) -> requests.Response:
        return requests.get(f"{srv.url}/{path}", timeout=10)

    for t in tiles_at_level(0, cp.size):
        r = get(t.path())
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/octet-stream"
        assert tile_hashes(r.content, t) == hashes[t.index * 256:t.index * 256 + t.width]
        assert ("immutable" in r.headers["Cache-Control"]) == t.full
        b = Tile(None, t.index, t.width)
        r = get(b.path())  # requests asks for gzip and decodes it
        assert r.headers["Content-Encoding"] == "gzip" and r.headers["Vary"] == "Accept-Encoding"
        assert decode_entry_bundle(r.content, b) == leaves[t.index * 256:t.index * 256 + t.width]
        plain = requests.get(f"{srv.url}/{b.path()}", headers={"Accept-Encoding": "identity"}, timeout=10)
        assert "Content-Encoding" not in plain.headers and plain.content == r.content
    (top,) = tiles_at_level(1, cp.size)
    assert (top.width, top.full) == (2, False)
    assert tile_hashes(get(top.path()).content, top) == [tile_root(hashes[:256]), tile_root(hashes[256:512])]
    # A partial tile of an earlier tree size is served too (its bytes never change).
    assert tile_hashes(get("tile/0/002.p/7").content, Tile(0, 2, 7)) == hashes[512:519]
    assert get("tile/checkpoint").status_code == 404
    for path, code, error in [("tile/0/002.p/89", 404, "no_such_tile"), ("tile/0/003", 404, "no_such_tile"),
                              ("tile/2/000.p/1", 404, "no_such_tile"), ("tile/0/02", 404, "bad_tile_path"),
                              ("tile/0/x000/000", 404, "bad_tile_path"), ("tile/entries/000.p/256", 404, "bad_tile_path"),
                              ("tile/0/000?x=1", 400, "unknown_parameter")]:
        r = get(path)
        assert (r.status_code, r.json()["error"]) == (code, error), path
    assert requests.post(f"{srv.url}/tile/0/000", timeout=10).status_code == 405
    # RFC 9162 proofs computed from the tiles alone equal the ones the /v1 API serves.
    get_nodes = tile_node_reader(TileClient(srv.url), cp.size)
    assert merkle.root_from_nodes(cp.size, get_nodes) == cp.root_hash
    for m in [1, 2, 255, 256, 257, 300, 511, 512, 513, 599, 600]:
        assert merkle.consistency_proof(m, cp.size, get_nodes) == list(log.consistency_proof(m, cp.size).hashes), m
    for i in [0, 1, 255, 256, 400, 511, 512, 599]:
        assert merkle.inclusion_proof(i, cp.size, get_nodes) == list(log.inclusion_proof(i, cp.size).hashes), i
