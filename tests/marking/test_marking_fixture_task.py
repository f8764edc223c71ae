"""Watermark (input-aware, as the issuer embeds it) on a real trained core, the committed fixture
recipe core: fidelity against the 0.5 pp / 1 % target, and survival of real further fine-tuning
(spec/watermark.md, "Fidelity and fine-tuning")."""

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
    moments = tm.input_moments(core, train[:200])  # the issuer's path: input-aware embedding
    return tm, core, params, test, train, moments


def test_mark_fidelity_on_the_fixture_task(task) -> None:
    """Accuracy is kept for every payload; the loss cost varies with the payload (spec/watermark.md,
    "Fidelity"): the policy keeps the mark exactly when both are within tolerance."""
    tm, core, params, test, _, moments = task
    evaluator, lines, kept = tm.evaluator(test), [], 0
    for payload in (PAYLOAD, 0x99FBCBDE970C, 0x123456789ABC):
        r = policy.mark(core, payload, params, policy.Tolerance(), task_eval=evaluator, input_moments=moments).record
        drop_pp = 100 * (r.accuracy_unmarked - r.accuracy_marked)
        loss_rel = (r.loss_marked - r.loss_unmarked) / r.loss_unmarked
        lines.append(f"payload {payload:012x}: accuracy {r.accuracy_unmarked:.4f} -> {r.accuracy_marked:.4f}, "
                     f"loss {r.loss_unmarked:.4f} -> {r.loss_marked:.4f} ({100 * loss_rel:+.2f} %), policy {r.mode}")
        assert r.accuracy_unmarked > 0.85, lines  # a core that learned the rule, not the answer prior
        assert drop_pp <= 0.5, lines
        assert (r.mode == policy.MODE_BOTH) == (loss_rel <= 0.01), lines
        kept += r.mode == policy.MODE_BOTH
    print(f"input-aware, {len(params.layers)} layers, {params.code_bits} code bits, τ={params.tau}:", *lines,
          sep="\n  ")
    assert kept >= 1, lines


def test_mark_survives_100_finetuning_steps_at_the_training_rate(task) -> None:
    """A fresh AdamW at the recipe's peak rate, no warm-up: it moves ΔW by ~60 % of its norm
    (bench/marking.py sweeps 2e-4 … 1e-2 and shows where the mark breaks)."""
    from emshield.model.taskeval import delta_drift, finetune_core

    tm, core, params, test, train, moments = task
    marked, report = watermark.embed(core, PAYLOAD, params, moments)
    tuned = finetune_core(BACKBONE, marked, train, steps=100, lr=RECIPE_LR)
    ex = watermark.extract_from_factors(tuned, params)
    margin = float(np.min(report.signs * ex.z))
    acc, loss = tm.evaluator(test)(tuned)
    msg = (f"input-aware mark, 100 AdamW steps at lr {RECIPE_LR:g} (the training rate): ΔW drift {delta_drift(marked, tuned):.3f}, "
           f"raw bit errors {int(np.sum(ex.bits != (report.signs > 0)))}, smallest b·z {margin:.2f} "
           f"(τ={params.tau}), task accuracy {acc:.4f} loss {loss:.4f}")
    print(msg)
    assert ex.accepted and ex.payload == PAYLOAD, msg
    assert delta_drift(marked, tuned) > 0.3, msg  # a real change of the core, not a no-op
    assert acc > 0.85, msg  # and still the task: a fine-tune, not a reset
