"""Skipping that CI does not allow: a test whose real dependency (swtpm, Go, a database server) is
missing skips elsewhere, saying why, and fails under CI=true, where everything must be installed."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def require(ok: bool, reason: str) -> None:
    """Missing real dependencies fail in CI (CI=true) and skip, saying why, elsewhere."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)
