"""Go's golang.org/x/mod/sumdb/tlog reads our log through the C2SP tile API: it authenticates every
tile against the checkpoint root, proves entries from the bundles and proves the tree grew from an
older checkpoint. Needs Go and golang.org/x/mod (skipped where they are missing, except in CI)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from emshield.tlog.client import LogClient

ROOT = Path(__file__).resolve().parents[2]
GOCODE = Path("/usr/share/gocode")
GO = shutil.which("go")

pytestmark = pytest.mark.skipif(
    os.environ.get("CI") != "true"
    and (GO is None or not (GOCODE / "src/golang.org/x/mod/sumdb/tlog/tile.go").is_file()),
    reason="Go and golang.org/x/mod are not installed (apt-get install golang-go golang-golang-x-mod-dev)",
)


def test_go_tlog_reads_our_tiles(log_files, server_factory, issuer_key, kit, tmp_path: Path) -> None:
    srv = server_factory(log_files.db)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(kit.registration(issuer_key))
    log.append_batch([kit.issuance(issuer_key, n) for n in range(299)])
    old = log.verified_checkpoint(log_files.verifier)
    log.append_batch([kit.issuance(issuer_key, n) for n in range(299, 700)])
    cp = log.verified_checkpoint(log_files.verifier)
    assert (old.size, cp.size) == (300, 701)
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{tmp_path}:{GOCODE}", "GOFLAGS": "",
           "GOCACHE": os.environ.get("GOCACHE", str(tmp_path / "cache"))}
    out = subprocess.run([str(GO), "run", str(ROOT / "spec/vectors/tiles/go_interop/main.go"), srv.url,
                          str(cp.size), base64.b64encode(cp.root_hash).decode(), str(old.size),
                          base64.b64encode(old.root_hash).decode()],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    for line in ("tree hash from tiles: ok", "entry bundles and record proofs: ok",
                 "tree proof from the old checkpoint: ok"):
        assert line in out.stdout
