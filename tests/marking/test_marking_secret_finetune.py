"""Secret tier against a leaker who strips the public mark and fine-tunes (in either order).

Small-size version of bench/attacks.py's rows "strip, then fine-tune ..." and "strip after
fine-tune ...": a random core issued with both tiers, the public mark stripped with the published
parameters (`strip_public_mark`), and a simulated fine-tune (`_kit.cores.finetune`, decaying input
spectrum) towards a task optimum near the leaked copy: not the unmarked core, which the leaker does
not have. The owner must be named and no other of 24 issuances; the same attack on the unmarked
core names nobody, so the naming comes from the owner's mark.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _kit.cores import DELTA_RMS, finetune, make_params, noise, random_core
from emshield.core import LoraFactors
from emshield.marking import batched, secret, watermark
from emshield.marking.strip import strip_public_mark
from emshield.model.recover import factorise
from emshield.model.taskeval import delta_drift

ISSUER = bytes(range(32))
DIMS = [(128, 128), (64, 128)] * 6  # 12 layers of the fixture's q/v shapes, all keyed
ISSUANCES = 24
PAYLOAD = 0x5EED0000BEEF
STEPS, LR = 300, 2e-3  # Adam on the factors: ΔW moves by half its norm or more, most of the way to the optimum


def _key(j: int) -> bytes:
    return secret.detection_key(ISSUER, "test-backbone", j.to_bytes(16, "big"), bytes(16)).key


def _deltas(core: dict[str, LoraFactors]) -> dict[str, np.ndarray]:
    return {n: f.delta() for n, f in core.items()}


def _as_factors(deltas: dict[str, np.ndarray]) -> dict[str, LoraFactors]:
    """The stripped ΔW (no longer rank r) as exact LoRA factors of each layer's numerical rank."""
    return {n: factorise(torch.from_numpy(d), None, full_svd=True, max_rank=min(d.shape), rel_tol=1e-9)[0]
            for n, d in deltas.items()}


def _fine_tune(core: dict[str, LoraFactors]) -> tuple[dict[str, np.ndarray], float, float]:
    """Fine-tuned ΔW towards a task optimum the factors can reach, near the copy: ΔW of the factors
    with noise of their own std added. Returns the result, how far ΔW moved, and how much of the way
    to the task optimum is left (relative to the start)."""
    start = _deltas(core)
    rng = np.random.default_rng(4)
    task = {n: f.scale * noise(f.b.astype(np.float64), 1.0, rng) @ noise(f.a.astype(np.float64), 1.0, rng)
            for n, f in core.items()}
    tuned = finetune(core, task, STEPS, LR, np.random.default_rng(14), decay=1.0)
    after = _deltas(tuned)
    left = np.sqrt(sum(np.sum((task[n] - after[n]) ** 2) for n in task) / sum(np.sum((task[n] - start[n]) ** 2)
                                                                              for n in task))
    return after, delta_drift(core, tuned), float(left)


def _attack(core: dict[str, LoraFactors], params, order: str) -> tuple[dict[str, np.ndarray], float, float]:
    if order == "strip, then fine-tune":
        stripped = strip_public_mark(_deltas(core), params)
        assert np.max(np.abs(watermark.extract_from_deltas(stripped, params).z)) < 1e-4  # the strip is exact (τ = 3)
        factors = _as_factors(stripped)
        for n, f in factors.items():  # exact up to the factors' float32 rounding
            np.testing.assert_allclose(f.delta(), stripped[n], rtol=0, atol=1e-6 * np.max(np.abs(stripped[n])))
        return _fine_tune(factors)
    tuned, moved, left = _fine_tune(core)
    stripped = strip_public_mark(tuned, params)
    assert np.max(np.abs(watermark.extract_from_deltas(stripped, params).z)) < 1e-4
    return stripped, moved, left


@pytest.fixture(scope="module")
def issued():
    params = make_params(DIMS)
    core = random_core(np.random.default_rng(21), DIMS, 8, DELTA_RMS)
    keys = [_key(j) for j in range(ISSUANCES)]
    marked, _ = watermark.embed(core, PAYLOAD, params, extra=secret.directions(keys[0], params))
    assert secret.presence_from_factors(marked, keys[0], params).named
    return params, core, marked, keys


@pytest.mark.parametrize("order", ["strip, then fine-tune", "fine-tune, then strip"])
def test_owner_named_after_strip_and_fine_tune(issued, order: str) -> None:
    params, _, marked, keys = issued
    suspect, moved, left = _attack(marked, params, order)
    assert moved > 0.4 and left < 0.2  # the fine-tune really moved ΔW, most of the way to its optimum
    assert not watermark.extract_from_deltas(suspect, params).accepted  # the public tier names nobody
    t = batched.scores(suspect, keys, params)
    assert [j for j, x in enumerate(t) if x >= secret.NAME_THRESHOLD] == [0]  # T 10.2 / 8.3 (10.7 before the attack)


def test_same_attack_on_the_unmarked_core_names_nobody(issued) -> None:
    params, core, _, keys = issued
    for order in ("strip, then fine-tune", "fine-tune, then strip"):
        suspect, _, _ = _attack(core, params, order)
        assert float(np.max(batched.scores(suspect, keys, params))) < secret.NAME_THRESHOLD
