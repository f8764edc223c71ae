"""Go's golang.org/x/mod/sumdb/note opens our checkpoint notes and signs identically with our key.

Needs Go and golang.org/x/mod in GOPATH form (Debian: golang-go, golang-golang-x-mod-dev); skipped
where they are not installed. The published Go vectors in notes.json are checked without Go in
test_tlog_checkpoint.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOCODE = Path("/usr/share/gocode")
GO = shutil.which("go")

# CI installs both (./run's system packages), so there a missing Go is a failure, not a skip.
pytestmark = pytest.mark.skipif(
    os.environ.get("CI") != "true"
    and (GO is None or not (GOCODE / "src/golang.org/x/mod/sumdb/note/note.go").is_file()),
    reason="Go and golang.org/x/mod are not installed (apt-get install golang-go golang-golang-x-mod-dev)",
)


def test_go_sumdb_note_accepts_our_checkpoints(tmp_path: Path) -> None:
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{tmp_path}:{GOCODE}", "GOFLAGS": "",
           "GOCACHE": os.environ.get("GOCACHE", str(tmp_path / "cache"))}
    out = subprocess.run([str(GO), "run", str(ROOT / "spec/vectors/tlog/go_interop/main.go"),
                          str(ROOT / "spec/vectors/tlog/notes.json")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "open checkpoint: ok" in out.stdout
    assert "sign with our signer key: identical bytes" in out.stdout
    assert "witness cosignature left unverified" in out.stdout
