"""Marking tests: make the shared helpers (marking_helpers.py) importable under importlib mode."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
