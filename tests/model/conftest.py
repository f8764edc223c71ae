"""Shared fixtures for the decoupling tests: the committed tiny backbone, offline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "fixtures" / "tiny-llama"


@pytest.fixture(scope="session")
def tiny() -> Path:
    return TINY


def random_core(backbone: Path, modules=("q_proj", "v_proj"), rank: int = 4, scale: float = 2.0, seed: int = 0,
                magnitude: float = 0.05):
    """A core with random, non-trivial factors for every targeted module of ``backbone``."""
    from emshield.core import LoraFactors
    from emshield.model.io import open_tensors

    rng = np.random.default_rng(seed)
    core = {}
    with open_tensors(backbone) as src:
        for name in src.keys():
            if any(f".{m}.weight" in name for m in modules):
                out, inp = src.get(name).shape
                core[name] = LoraFactors(a=(rng.standard_normal((rank, inp)) * magnitude).astype(np.float32),
                                         b=(rng.standard_normal((out, rank)) * magnitude).astype(np.float32),
                                         scale=scale)
    return core


@pytest.fixture(scope="session")
def make_core():
    """:func:`random_core` as a fixture (test modules cannot import conftest under importlib mode)."""
    return random_core
