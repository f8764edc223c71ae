"""Static tiles (`emshield-log serve --tiles-dir`): after every checkpoint the sequencer writes the
tree as files, byte for byte what the tile API serves; full tiles once, partial ones dropped when
their full tile exists, no temporary files left, the checkpoint file last and never smaller.
On both stores."""

from __future__ import annotations

from pathlib import Path

import requests

from _kit.logs import issuance, registration, wait_for_mirror
from emshield.logclient.http import LogClient
from emshield.tlog.tiles import bundles_for, parse_tile_path, tiles_at_level
from log_server import static_tiles
from log_server.storage import open_store


def _tree_paths(size: int) -> set[str]:
    paths = {t.path() for level in range(8) for t in tiles_at_level(level, size)}
    return paths | {b.path() for b in bundles_for(0, size)}


def _files(site: Path) -> set[str]:
    return {str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()}


def _check_mirror(site: Path, url: str, size: int) -> None:
    """The site holds the checkpoint of ``size`` and exactly the tree's tiles, as the server serves them."""
    assert requests.get(f"{url}/checkpoint", timeout=10).content == (site / "checkpoint").read_bytes()
    files = _files(site) - {"checkpoint", static_tiles.LOCK_NAME}
    wanted = _tree_paths(size)
    # Besides the tree's own tiles only partial tiles of earlier sizes whose full tile is not there yet.
    for extra in files - wanted:
        t = parse_tile_path(extra.removeprefix("tile/"))
        assert not t.full and not (site / t.__class__(t.level, t.index).path()).exists(), extra
    assert wanted <= files, sorted(wanted - files)[:5]
    for path in wanted:
        served = requests.get(f"{url}/{path}", headers={"Accept-Encoding": "identity"}, timeout=10)
        assert served.status_code == 200 and served.content == (site / path).read_bytes(), path


def test_the_sequencer_writes_the_tree_as_static_files(log_files, server_factory, issuer_key, tmp_path) -> None:
    site = tmp_path / "site"
    srv = server_factory(log_files, tiles_dir=site)
    log = LogClient(srv.url, operator_token=log_files.token)
    wait_for_mirror(site, 0)
    assert (site / "checkpoint").read_bytes() == log.checkpoint_note()  # the empty tree's, written at start-up
    log.register_issuer(registration(issuer_key))
    log.append_batch([issuance(issuer_key, n) for n in range(599)])
    for n in range(599, 605):  # single appends: one small commit (and partial tiles) each
        log.append(issuance(issuer_key, n))
    wait_for_mirror(site, 606)
    _check_mirror(site, srv.url, 606)
    full = site / "tile/0/001"
    stamp = full.stat().st_mtime_ns, full.stat().st_ino
    log.append_batch([issuance(issuer_key, n) for n in range(605, 800)])  # completes tile 2 of level 0
    wait_for_mirror(site, 801)
    _check_mirror(site, srv.url, 801)
    assert (full.stat().st_mtime_ns, full.stat().st_ino) == stamp  # a full tile is written once
    assert not (site / "tile/0/002.p").exists() and not (site / "tile/entries/002.p").exists()
    assert not [f for f in _files(site) if ".tmp-" in f]


def test_a_mirror_never_goes_back_to_a_smaller_tree(log_files, server_factory, issuer_key, tmp_path) -> None:
    srv = server_factory(log_files)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    log.append_batch([issuance(issuer_key, n) for n in range(300)])
    store = open_store(log_files.db)
    site = tmp_path / "site"
    big = store.latest_checkpoint()
    assert static_tiles.write_tree(store, big, site) == len(_tree_paths(301)) + 1
    assert static_tiles.write_tree(store, big, site) == 0  # nothing new
    small = store.checkpoint(1)
    assert static_tiles.write_tree(store, small, site) == 0  # an older checkpoint (another writer's) is ignored
    assert static_tiles.written_size(site) == 301 and (site / "checkpoint").read_bytes() == big.note
    assert static_tiles.tiles_between(0, 0) == [] and static_tiles.tiles_between(301, 301) == [
        t for t in [*tiles_at_level(0, 301)[1:], *tiles_at_level(1, 301), *bundles_for(256, 301)]]
    store.close()
