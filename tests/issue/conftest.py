"""Fixtures for the issuance tests: one real log server for the directory, issuers, devices, cores."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests import issue_helpers

from issue_helpers import RunningLog, fixture_core, running_log  # noqa: E402

from emshield.core import LoraFactors  # noqa: E402
from emshield.tee.device import Device, init_device  # noqa: E402


@pytest.fixture(scope="session")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLog]:
    """A real `emshield-log serve` on 127.0.0.1, shared by the issuance tests (each uses its own issuer key)."""
    with running_log(tmp_path_factory.mktemp("log")) as running:
        yield running


@pytest.fixture
def core() -> dict[str, LoraFactors]:
    return fixture_core(0)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return init_device(tmp_path / "device", "file")
