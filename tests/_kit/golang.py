"""Running the Go programs in spec/vectors/*/go_interop against our output: transparency-dev's
golang.org/x/mod (sumdb/note, sumdb/tlog) from Debian's packages, offline (GOPATH mode)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .ci import in_ci

GOCODE = Path("/usr/share/gocode")
GO = shutil.which("go")


def requires_x_mod(package_file: str) -> pytest.MarkDecorator:
    """Skip unless Go and ``golang.org/x/mod/<package_file>`` are installed; CI installs both
    (./run's system packages), so there a missing Go is a failure, not a skip."""
    return pytest.mark.skipif(
        not in_ci() and (GO is None or not (GOCODE / "src/golang.org/x/mod" / package_file).is_file()),
        reason="Go and golang.org/x/mod are not installed (apt-get install golang-go golang-golang-x-mod-dev)")


def go_run(program: Path, *args: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """`go run PROGRAM ARGS...` with the Debian GOPATH and a build cache under ``workdir``."""
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{workdir}:{GOCODE}", "GOFLAGS": "",
           "GOCACHE": os.environ.get("GOCACHE", str(workdir / "cache"))}
    return subprocess.run([str(GO), "run", str(program), *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=workdir)
