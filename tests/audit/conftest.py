"""Audit and witness tests reuse the log-server test kit (real `emshield-log` stores and servers).

pytest runs with --import-mode=importlib, so that conftest is loaded here by path and its
fixtures re-exported, instead of being copied.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("emshield_log_server_test_kit",
                                               Path(__file__).parents[1] / "log_server" / "conftest.py")
_kit = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _kit  # dataclasses look their module up there
_spec.loader.exec_module(_kit)

log_files = _kit.log_files
issuer_key = _kit.issuer_key
server_factory = _kit.server_factory
kit = _kit.kit
