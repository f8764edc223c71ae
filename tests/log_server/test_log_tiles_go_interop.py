"""Go's golang.org/x/mod/sumdb/tlog reads our log through the C2SP tile API: it authenticates every
tile against the checkpoint root, proves entries from the bundles and proves the tree grew from an
older checkpoint. Needs Go and golang.org/x/mod (skipped where they are missing, except in CI)."""

from __future__ import annotations

import base64
from pathlib import Path

from _kit.golang import go_run, requires_x_mod
from _kit.logs import issuance, registration
from _kit.paths import VECTORS
from emshield.logclient.http import LogClient

pytestmark = requires_x_mod("sumdb/tlog/tile.go")


def test_go_tlog_reads_our_tiles(log_files, server_factory, issuer_key, tmp_path: Path) -> None:
    srv = server_factory(log_files)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    log.append_batch([issuance(issuer_key, n) for n in range(299)])
    old = log.verified_checkpoint(log_files.verifier)
    log.append_batch([issuance(issuer_key, n) for n in range(299, 700)])
    cp = log.verified_checkpoint(log_files.verifier)
    assert (old.size, cp.size) == (300, 701)
    out = go_run(VECTORS / "tiles/go_interop/main.go", srv.url, str(cp.size), base64.b64encode(cp.root_hash).decode(),
                 str(old.size), base64.b64encode(old.root_hash).decode(), workdir=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    for line in ("tree hash from tiles: ok", "entry bundles and record proofs: ok",
                 "tree proof from the old checkpoint: ok"):
        assert line in out.stdout
