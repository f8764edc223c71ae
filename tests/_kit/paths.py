"""Fixed places of the repository and the installed console scripts."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
SPEC = ROOT / "spec"
VECTORS = SPEC / "vectors"
TINY = ROOT / "fixtures" / "tiny-llama"  # the committed tiny Llama backbone
BIN = Path(sys.executable).parent  # where the venv's console scripts are
