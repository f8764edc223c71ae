"""Go's golang.org/x/mod/sumdb/note opens our checkpoint notes and signs identically with our key.

Needs Go and golang.org/x/mod in GOPATH form (Debian: golang-go, golang-golang-x-mod-dev); skipped
where they are not installed. The published Go vectors in notes.json are checked without Go in
test_tlog_checkpoint.py.
"""

from __future__ import annotations

from pathlib import Path

from _kit.golang import go_run, requires_x_mod
from _kit.paths import VECTORS

pytestmark = requires_x_mod("sumdb/note/note.go")


def test_go_sumdb_note_accepts_our_checkpoints(tmp_path: Path) -> None:
    out = go_run(VECTORS / "tlog/go_interop/main.go", str(VECTORS / "tlog/notes.json"), workdir=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "open checkpoint: ok" in out.stdout
    assert "sign with our signer key: identical bytes" in out.stdout
    assert "witness cosignature left unverified" in out.stdout
