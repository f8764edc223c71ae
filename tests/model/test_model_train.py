"""LoRA training on the tiny backbone: it learns part of the financial rule (beyond the answer
prior: the classes are balanced), deterministically, and its merged model is the adapter-wrapped model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emshield.model.adapter import load_core
from emshield.model.datasets import load_dataset
from emshield.model.evaluate import evaluate
from emshield.model.hf import load_adapter_model, load_causal_lm, load_tokenizer
from emshield.model.merge import write_merged
from emshield.model.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "fixtures" / "data"
EVAL_RECORDS = 120
# Seconds of training (~0.25 s CPU a step): enough to learn the categorical reject reasons (prior
# default, unemployed: ~0.69 on balanced data), not the whole rule (the recipe's 625 steps: spec/decouple.md §5).
FAST = dict(lr=4e-3, max_steps=110, batch_size=16, rank=8, alpha=16, seed=0, warmup_steps=20, schedule="cosine",
            max_grad_norm=1.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny: Path):
    out = tmp_path_factory.mktemp("lora")
    cfg = TrainConfig(backbone=str(tiny), dataset=str(DATA / "financial-train.json"), output_dir=str(out), **FAST)
    return train(cfg, progress=False)


def test_training_improves_task_accuracy(trained, tiny: Path) -> None:
    records = load_dataset(DATA / "financial-test.json")[:EVAL_RECORDS]
    tok = load_tokenizer(tiny)
    bare = evaluate(load_causal_lm(tiny), tok, records)
    tuned = evaluate(load_adapter_model(tiny, trained.adapter_dir), tok, records)
    majority = max(sum(r["output"] == c for r in records) for c in ("approve", "reject")) / len(records)
    msg = (f"financial held-out accuracy ({len(records)} records): bare backbone {bare.accuracy:.3f}, "
           f"adapter {tuned.accuracy:.3f} after {trained.steps} steps ({trained.seconds:.1f} s); "
           f"majority answer {majority:.3f}")
    print(msg)
    assert trained.final_loss < trained.first_loss, msg
    assert tuned.accuracy >= bare.accuracy + 0.10, msg
    assert tuned.accuracy >= majority + 0.10, msg  # more than the answer prior


def test_merged_trained_model_equals_adapter_model(trained, tiny: Path, tmp_path: Path) -> None:
    merged = write_merged(tiny, load_core(trained.core_path), tmp_path / "merged")
    ids = load_tokenizer(tiny)(["Approve or reject the loan.\nage: 40", "job: retired\ndefaults: no"], return_tensors="pt",
                               padding=True)
    with torch.no_grad():
        a = load_adapter_model(tiny, trained.adapter_dir)(**ids).logits
        m = load_causal_lm(merged)(**ids).logits
        base = load_causal_lm(tiny)(**ids).logits
    assert (a - base).abs().max() > 1e-3
    torch.testing.assert_close(m, a, rtol=1e-4, atol=1e-4)


def test_core_file_equals_adapter_folder(trained) -> None:
    c1, c2 = load_core(trained.core_path), load_core(trained.adapter_dir)
    assert sorted(c1) == sorted(c2) and len(c1) == 4 * 7
    for k in c1:
        assert (c1[k].a == c2[k].a).all() and (c1[k].b == c2[k].b).all() and c1[k].scale == c2[k].scale == 2.0


def test_training_is_deterministic(tmp_path: Path, tiny: Path) -> None:
    runs = []
    for i in range(2):
        cfg = TrainConfig(backbone=str(tiny), dataset=str(DATA / "financial-train.json"),
                          output_dir=str(tmp_path / f"r{i}"), max_steps=3, batch_size=4, limit=12, seed=7)
        runs.append(train(cfg, progress=False).core_path.read_bytes())
    assert runs[0] == runs[1]


def test_learning_rate_schedule_and_its_config_checks(tmp_path: Path) -> None:
    from emshield.model.train import lr_factor

    base = dict(backbone="b", dataset="d", output_dir="o")
    cos = TrainConfig(**base, warmup_steps=4, schedule="cosine")
    got = [lr_factor(cos, s, 12) for s in range(12)]
    assert got[:4] == [0.25, 0.5, 0.75, 1.0] and got[3] > got[7] > got[11] >= 0.0
    assert abs(got[8] - 0.5) < 1e-12  # half-way through the decay (steps 4..11 of 12)
    assert [lr_factor(TrainConfig(**base), s, 5) for s in range(5)] == [1.0] * 5
    for bad in ({"schedule": "linear"}, {"warmup_steps": -1}, {"max_grad_norm": 0.0}):
        with pytest.raises(ValueError):
            TrainConfig(**base, **bad)
    (tmp_path / "t.yaml").write_text("backbone: b\ndataset: d\noutput_dir: o\nmax_grad_norm: 1\nschedule: cosine\n")
    cfg = TrainConfig.from_yaml(tmp_path / "t.yaml")
    assert cfg.max_grad_norm == 1.0 and isinstance(cfg.max_grad_norm, float) and cfg.schedule == "cosine"


def test_answer_loss_is_the_models_own_loss(tiny: Path) -> None:
    """The output layer computed only at answer positions gives the loss transformers computes on all of them."""
    from emshield.model.batches import answer_loss, collate, encode

    tok = load_tokenizer(tiny)
    model = load_causal_lm(tiny)
    records = load_dataset(DATA / "financial-train.json")[:6] + load_dataset(DATA / "identifier-train.json")[:2]
    batch = collate([encode(tok, r, 256) for r in records], tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(answer_loss(model, batch), model(**batch).loss, rtol=1e-6, atol=1e-6)


def test_wrapping_a_model_in_peft_raises_no_deprecation_warning(tiny: Path) -> None:
    """Every training run and adapter load printed transformers' FutureWarning that
    `is_gradient_checkpointing` is deprecated (read by peft when it wraps a model); our calls into peft
    silence exactly that warning, and nothing else."""
    import warnings

    from emshield.model.train import lora_model

    base = dict(backbone=str(tiny), dataset="-", output_dir="-")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lora_model(load_causal_lm(tiny), TrainConfig(**base))
        warnings.warn("still reported", FutureWarning)
    assert [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))] == \
        ["still reported"]


def test_chat_prompt_format_renders_the_backbones_template(tiny: Path) -> None:
    """`prompt_format: chat` puts instruction and input in one user turn of the tokenizer's chat template
    (the tiny fixture has none: one is given here), and the answer follows the generation prompt."""
    from emshield.model.batches import encode
    from emshield.model.prompt import CHAT, prompt_ids

    tok = load_tokenizer(tiny)
    record = {"instruction": "Approve or reject the loan.", "input": "credit: 700", "output": "approve"}
    with pytest.raises(ValueError, match="has a chat template; this one has none"):
        prompt_ids(tok, record, CHAT)
    tok.chat_template = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    text = "<|endoftext|>user: Approve or reject the loan.\n\ncredit: 700\nassistant: "
    assert prompt_ids(tok, record, CHAT) == tok(text, add_special_tokens=False)["input_ids"]
    assert prompt_ids(tok, record, CHAT)[0] == tok.eos_token_id  # the template's special token, as a token
    ids, labels = encode(tok, record, 256, CHAT)
    assert ids[-1] == labels[-1] == tok.eos_token_id and labels.count(-100) == len(prompt_ids(tok, record, CHAT))
    assert tok.decode([t for t in labels if t != -100], skip_special_tokens=True) == "approve"
