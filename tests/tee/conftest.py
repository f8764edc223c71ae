"""Fixtures for the sealing tests: devices, sample cores, a real swtpm, tool requirements."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from _kit.tee import make_core, start_swtpm
from emshield.core import LoraFactors
from emshield.tee.device import Device, init_device


@pytest.fixture
def core() -> dict[str, LoraFactors]:
    return make_core()


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return init_device(tmp_path / "device", "file")


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real swtpm TPM 2.0 simulator on 127.0.0.1 for the module; yields its TCTI string."""
    with start_swtpm(tmp_path_factory.mktemp("swtpm")) as tcti:
        yield tcti


@pytest.fixture
def keyring_description_cleanup() -> Iterator[list[Device]]:
    """Devices created in the user keyring @u during a test; their keys are invalidated afterwards."""
    made: list[Device] = []
    yield made
    for d in made:
        d.provider.destroy()

