"""Fixtures for the issuance tests: one real log server for the directory, issuers, devices, cores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from _kit.cores import fixture_core
from _kit.logs import RunningLog, running_log
from emshield.core import LoraFactors
from emshield.tee.device import Device, init_device


@pytest.fixture(scope="session")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLog]:
    """A real `emshield-log serve` on 127.0.0.1, shared by the issuance tests (each uses its own issuer key)."""
    with running_log(tmp_path_factory.mktemp("log"), "issue-test.emshield.example/log") as running:
        yield running


@pytest.fixture
def core() -> dict[str, LoraFactors]:
    return fixture_core(0)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return init_device(tmp_path / "device", "file")
