"""Watermark on a real trained core (the committed fixture recipe core, financial task): fidelity
against the 0.5 pp / 1 % target, and survival of real further fine-tuning (spec/watermark.md)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from emshield.marking import policy, watermark
from emshield.marking.params import LayerSpec, MarkingParams, verification_key

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
BACKBONE = ROOT / "fixtures" / "tiny-llama"
CORE = ROOT / "fixtures" / "cores" / "financial-lora.safetensors"
PAYLOAD = 0x5EED0000BEEF
RECIPE_LR = 2e-3  # the rate the core was trained at (fixtures/recipes/financial-lora.yaml)


@pytest.fixture(scope="module")
def task():
    from emshield.model.adapter import load_core
    from emshield.model.datasets import load_dataset
    from emshield.model.io import backbone_id
    from emshield.model.taskeval import TaskModel

    core = load_core(CORE)
    bid = backbone_id(BACKBONE)
    params = MarkingParams(bid, verification_key(bytes(range(32)), bid),
                           tuple(LayerSpec(n, *core[n].shape) for n in sorted(core)))
    tm = TaskModel.load(BACKBONE)
    test = load_dataset(ROOT / "fixtures" / "data" / "financial-test.json")
    train = load_dataset(ROOT / "fixtures" / "data" / "financial-train.json")
    return tm, core, params, test, train


def test_mark_meets_fidelity_target_on_the_fixture_task(task) -> None:
    tm, core, params, test, _ = task
    res = policy.mark(core, PAYLOAD, params, policy.Tolerance(), task_eval=tm.evaluator(test))
    r = res.record
    msg = (f"{len(params.layers)} layers, {params.code_bits} code bits, τ={params.tau}: accuracy "
           f"{r.accuracy_unmarked:.4f} -> {r.accuracy_marked:.4f}, loss {r.loss_unmarked:.4f} -> "
           f"{r.loss_marked:.4f}; policy {r.mode} ({r.reason})")
    print(msg)
    assert r.accuracy_unmarked > 0.85, msg  # a core that learned the rule, not the answer prior
    assert r.mode == policy.MODE_BOTH, msg
    assert 100 * (r.accuracy_unmarked - r.accuracy_marked) <= 0.5, msg
    assert r.loss_marked <= 1.01 * r.loss_unmarked, msg
    ex = watermark.extract_from_factors(res.core, params)
    assert ex.accepted and ex.payload == PAYLOAD, msg


def test_mark_survives_100_finetuning_steps_at_the_training_rate(task) -> None:
    """A fresh AdamW at the recipe's peak rate, no warm-up: it moves ΔW by ~60 % of its norm
    (bench/marking.py sweeps 2e-4 … 1e-2 and shows where the mark breaks)."""
    from emshield.model.taskeval import delta_drift, finetune_core

    tm, core, params, test, train = task
    marked, report = watermark.embed(core, PAYLOAD, params)
    tuned = finetune_core(BACKBONE, marked, train, steps=100, lr=RECIPE_LR)
    ex = watermark.extract_from_factors(tuned, params)
    margin = float(np.min(report.signs * ex.z))
    acc, loss = tm.evaluator(test)(tuned)
    msg = (f"100 AdamW steps at lr {RECIPE_LR:g} (the training rate): ΔW drift {delta_drift(marked, tuned):.3f}, "
           f"raw bit errors {int(np.sum(ex.bits != (report.signs > 0)))}, smallest b·z {margin:.2f} "
           f"(τ={params.tau}), task accuracy {acc:.4f} loss {loss:.4f}")
    print(msg)
    assert ex.accepted and ex.payload == PAYLOAD, msg
    assert delta_drift(marked, tuned) > 0.3, msg  # a real change of the core, not a no-op
    assert acc > 0.85, msg  # and still the task: a fine-tune, not a reset
