"""The tile design in practice: a log copied file by file into a directory and served by a plain
static HTTP server (`python -m http.server`, no log code) is audited like the log itself, replay
and consistency proofs included, because the auditor needs only /checkpoint and the tiles."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests

from _kit.logs import StaticSite, free_port, issuance, registration, wait_for_mirror
from emshield.logclient.http import LogClient
from emshield.tlog.tiles import bundles_for, tiles_at_level


def mirror(url: str, size: int, directory: Path) -> None:
    """Copy the checkpoint and every tile and bundle of the tree into ``directory`` (a mirror job)."""
    paths = [t.path() for level in range(8) for t in tiles_at_level(level, size)]
    paths += [b.path() for b in bundles_for(0, size)]
    for path in ["checkpoint", *paths]:
        r = requests.get(f"{url}/{path}", headers={"Accept-Encoding": "identity"}, timeout=10)
        assert r.status_code == 200, path
        out = directory / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(r.content)


def test_a_static_tile_mirror_can_be_audited(run_audit, log_files, server_factory, issuer_key, tmp_path) -> None:
    srv = server_factory(log_files)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    log.append_batch([issuance(issuer_key, n) for n in range(599)])
    site = tmp_path / "site"
    mirror(srv.url, 600, site)
    port = free_port()
    static = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory",
                               str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        murl = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(murl + "/checkpoint", timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "static server did not start"
                time.sleep(0.1)
        key = log_files.verifier.verifier_key()
        state = tmp_path / "audit.json"
        code, out = run_audit(murl, key, state, "--replay")
        assert (code, out["replayed"]) == (0, 600), out
        # The log grows; the mirror job copies the new state; the auditor proves consistency from tiles.
        log.append_batch([issuance(issuer_key, n) for n in range(599, 899)])
        mirror(srv.url, 900, site)
        code, out = run_audit(murl, key, state, "--replay", "--incremental")
        assert (code, out["previous"]["size"], out["checkpoint"]["size"], out["replayed"]) == (0, 600, 900, 300), out
        # The mirror has no /v1 API: asking for API proofs is an error to report, not a finding.
        log.append_batch([issuance(issuer_key, n) for n in range(899, 909)])
        mirror(srv.url, 910, site)
        code, out = run_audit(murl, key, state, "--proofs", "api")
        assert code == 4 and "consistency proof" in out["detail"]
        assert run_audit(murl, key, state)[0] == 0
    finally:
        static.terminate()
        static.wait(timeout=10)


def test_the_sequencers_own_static_tiles_are_audited(run_audit, log_files, server_factory, issuer_key, tmp_path) -> None:
    """`serve --tiles-dir`: the mirror the sequencer writes after every checkpoint, served by
    `python -m http.server`, is replayed and proved consistent while the log grows."""
    site = tmp_path / "site"
    srv = server_factory(log_files, tiles_dir=site)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    log.append_batch([issuance(issuer_key, n) for n in range(599)])
    wait_for_mirror(site, 600)
    static = StaticSite(directory=site).start()
    try:
        key = log_files.verifier.verifier_key()
        state = tmp_path / "audit.json"
        code, out = run_audit(static.url, key, state, "--replay")
        assert (code, out["replayed"], out["checkpoint"]["size"]) == (0, 600, 600), out
        for n in range(599, 640):
            log.append(issuance(issuer_key, n))
        wait_for_mirror(site, 641)
        code, out = run_audit(static.url, key, state, "--replay", "--incremental")
        assert (code, out["previous"]["size"], out["checkpoint"]["size"], out["replayed"]) == (0, 600, 641, 41), out
    finally:
        static.stop()
