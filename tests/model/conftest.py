"""Shared fixtures for the decoupling tests: the committed tiny backbone, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from _kit.paths import TINY


@pytest.fixture(scope="session")
def tiny() -> Path:
    return TINY
