"""Watermark as the issuer embeds it (policy.mark with a task evaluation and input moments, trying
its embedding candidates) on a real trained core, the committed fixture recipe core: fidelity
against the 0.5 pp / 1 % target, and survival of real further fine-tuning (spec/watermark.md,
"Policy" and "Fidelity and fine-tuning")."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from emshield.marking import ecc, policy, watermark
from emshield.marking.params import LayerSpec, MarkingParams, verification_key

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
BACKBONE = ROOT / "fixtures" / "tiny-llama"
CORE = ROOT / "fixtures" / "cores" / "financial-lora.safetensors"
PAYLOADS = (0x5EED0000BEEF, 0x99FBCBDE970C, 0x123456789ABC)
HARD = 0x99FBCBDE970C  # the first candidate (input-aware ρ = 0.1) costs +1.16 % loss with this key
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


@pytest.fixture(scope="module")
def marks(task):
    tm, core, params, test, _, moments = task
    evaluator = tm.evaluator(test)
    return {p: policy.mark(core, p, params, policy.Tolerance(), task_eval=evaluator, input_moments=moments)
            for p in PAYLOADS}


def test_mark_fidelity_on_the_fixture_task(task, marks) -> None:
    """Every payload gets a mark within 0.5 pp accuracy and 1 % loss: the policy keeps the first
    embedding candidate within tolerance (spec/watermark.md, "Policy"); the record says which."""
    params, lines = task[2], []
    names = [c.name for c in policy.CANDIDATES]
    for payload, res in marks.items():
        r = res.record
        drop_pp = 100 * (r.accuracy_unmarked - r.accuracy_marked)
        loss_rel = (r.loss_marked - r.loss_unmarked) / r.loss_unmarked
        lines.append(f"payload {payload:012x}: accuracy {r.accuracy_unmarked:.4f} -> {r.accuracy_marked:.4f}, "
                     f"loss {r.loss_unmarked:.4f} -> {r.loss_marked:.4f} ({100 * loss_rel:+.2f} %), policy {r.mode}, "
                     f"{r.embedding}; tried: {'; '.join(r.candidates_tried)}")
        assert r.accuracy_unmarked > 0.85, lines  # a core that learned the rule, not the answer prior
        assert r.mode == policy.MODE_BOTH and drop_pp <= 0.5 and loss_rel <= 0.01, lines
        kept = names.index(r.embedding)
        assert len(r.candidates_tried) == kept + 1, lines  # the first within tolerance is kept
        assert all(t.endswith("(over tolerance)") for t in r.candidates_tried[:kept]), lines
        ex = watermark.extract_from_factors(res.core, params)
        assert ex.accepted and ex.payload == payload, lines
    print(f"{len(params.layers)} layers, {params.code_bits} code bits, τ={params.tau}:", *lines, sep="\n  ")
    assert marks[HARD].record.embedding != names[0], lines  # the candidate list is what rescues it


def test_mark_survives_100_finetuning_steps_at_the_training_rate(task, marks) -> None:
    """The mark the policy chose for the payload the first candidate misses, 100 steps of a fresh
    AdamW at the recipe's peak rate, no warm-up: it moves ΔW by ~60 % of its norm
    (bench/marking.py sweeps 2e-4 … 1e-2 and shows where the mark breaks)."""
    from emshield.model.taskeval import delta_drift, finetune_core

    tm, core, params, test, train, _ = task
    marked, record = marks[HARD].core, marks[HARD].record
    tuned = finetune_core(BACKBONE, marked, train, steps=100, lr=RECIPE_LR)
    ex = watermark.extract_from_factors(tuned, params)
    signs = ecc.encode(HARD, params.rs_nsym).astype(np.float64) * 2 - 1
    margin = float(np.min(signs * ex.z))
    acc, loss = tm.evaluator(test)(tuned)
    msg = (f"{record.embedding} mark, 100 AdamW steps at lr {RECIPE_LR:g} (the training rate): ΔW drift "
           f"{delta_drift(marked, tuned):.3f}, raw bit errors {int(np.sum(ex.bits != (signs > 0)))}, smallest b·z "
           f"{margin:.2f} (τ={params.tau}), task accuracy {acc:.4f} loss {loss:.4f}")
    print(msg)
    assert ex.accepted and ex.payload == HARD, msg
    assert delta_drift(marked, tuned) > 0.3, msg  # a real change of the core, not a no-op
    assert acc > 0.85, msg  # and still the task: a fine-tune, not a reset


def test_policy_tries_every_candidate_before_fingerprint_only(task) -> None:
    """A tolerance no embedding can meet (the loss must fall by half): all candidates are tried in
    order, the core is issued untouched with a fingerprint only, and the record lists the attempts."""
    tm, core, params, test, _, moments = task
    res = policy.mark(core, PAYLOADS[0], params, policy.Tolerance(max_loss_increase=-0.5),
                      task_eval=tm.evaluator(test[:40]), input_moments=moments)
    r = res.record
    assert r.mode == policy.MODE_FINGERPRINT and r.embedding is None and r.payload is None, r
    assert [t.split(":")[0] for t in r.candidates_tried] == [c.name for c in policy.CANDIDATES], r
    assert all(t.endswith("(over tolerance)") for t in r.candidates_tried), r
    assert r.reason.startswith(f"no embedding within tolerance ({len(policy.CANDIDATES)} tried"), r
    assert all(np.array_equal(res.core[k].a, core[k].a) and np.array_equal(res.core[k].b, core[k].b) for k in core)
    with pytest.raises(ValueError, match="needs input moments"):
        policy.mark(core, PAYLOADS[0], params, task_eval=tm.evaluator(test[:40]),
                    candidates=(policy.Embedding(0.1),))
