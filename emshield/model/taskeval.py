"""A core measured on its task: a score and the loss, input statistics, further fine-tuning.

What the marking policy needs from the task side (``policy.mark(task_eval=..., input_moments=...)``)
and what the watermark's fine-tuning robustness is measured with. Marking itself works on arrays
and never imports this module; the issuer and the benchmarks hand these results to it.

The score (spec/issue.md §3, step 4): for a task with a few answers, accuracy by answer likelihood
(emshield.model.evaluate); for a generative task, teacher-forced token accuracy, the share of
answer tokens the model predicts (argmax) given the reference answer so far. The latter is graded
where exact match of a long answer is all-or-nothing, needs no generation (one forward pass per
record, shared with the loss), and measures what a mark could damage: which tokens the model predicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from emshield.core import Core, LoraFactors, weight_module
from emshield.model.evaluate import candidate_answers, evaluate
from emshield.model.hf import load_causal_lm, load_tokenizer
from emshield.model.prompt import PLAIN
from emshield.model.batches import answer_logits, collate, encode
from emshield.model.train import TrainConfig, lora_model

MAX_LENGTH = 512
BATCH = 32
ACCURACY = "accuracy"
TOKEN_ACCURACY = "token accuracy (teacher-forced)"


def _check_layers(model, core: Core) -> dict[str, torch.Tensor]:
    state = dict(model.state_dict())
    for name, f in core.items():
        if name not in state or tuple(state[name].shape) != f.shape:
            raise ValueError(f"core layer {name!r} does not fit the backbone")
    return state


@dataclass
class TaskModel:
    """The backbone held in memory, with one core (or none) merged into it at a time."""

    model: object
    tokenizer: object
    original: dict[str, torch.Tensor]
    prompt_format: str = PLAIN

    @classmethod
    def load(cls, backbone: str | Path, prompt_format: str = PLAIN) -> TaskModel:
        model = load_causal_lm(backbone)
        return cls(model, load_tokenizer(backbone), {k: v.clone() for k, v in model.state_dict().items()},
                   prompt_format)

    def use(self, core: Core | None) -> None:
        """Backbone weights + ΔW of ``core`` (float64 sum, like merge); ``None``: the bare backbone."""
        state = _check_layers(self.model, core or {})
        with torch.no_grad():
            for k, v in self.original.items():
                state[k].copy_(v)
            for k, f in (core or {}).items():
                state[k].copy_((self.original[k].double() + torch.from_numpy(f.delta())).to(state[k].dtype))

    def _encode(self, records: list[dict[str, str]]) -> list[tuple[list[int], list[int]]]:
        return [encode(self.tokenizer, r, MAX_LENGTH, self.prompt_format) for r in records]

    def loss(self, records: list[dict[str, str]]) -> float:
        """Mean answer-token loss per batch-weighted record (the training loss, batched)."""
        return self.loss_and_token_accuracy(records)[0]

    def loss_and_token_accuracy(self, records: list[dict[str, str]]) -> tuple[float, float]:
        """(mean answer-token loss as :meth:`loss`, teacher-forced token accuracy over all answer tokens)."""
        enc = self._encode(records)
        total, right, tokens = 0.0, 0, 0
        with torch.no_grad():
            for i in range(0, len(enc), BATCH):
                part = enc[i: i + BATCH]
                logits, targets = answer_logits(self.model, collate(part, self.tokenizer.pad_token_id))
                total += F.cross_entropy(logits, targets).item() * len(part)
                right += int((logits.argmax(-1) == targets).sum())
                tokens += len(targets)
        return total / len(enc), right / tokens

    @staticmethod
    def metric(task: list[dict[str, str]]) -> str:
        """The score :meth:`evaluator` reports for a task (all its records, not a slice: a slice of
        a generative task can have few distinct answers): ACCURACY or TOKEN_ACCURACY."""
        return ACCURACY if candidate_answers(task) else TOKEN_ACCURACY

    def evaluator(self, records: list[dict[str, str]],
                  task: list[dict[str, str]] | None = None) -> Callable[[Core], tuple[float, float]]:
        """``policy.TaskEval``: (score, mean loss) of a core on ``records``; the score is
        :meth:`metric` of ``task``, the whole file ``records`` come from (default: ``records``)."""
        choices = candidate_answers(task or records)

        def task_eval(core: Core) -> tuple[float, float]:
            self.use(core)
            if not choices:
                loss, token_accuracy = self.loss_and_token_accuracy(records)
                return token_accuracy, loss
            accuracy = evaluate(self.model, self.tokenizer, records, choices=choices,
                                prompt_format=self.prompt_format).accuracy
            return accuracy, self.loss(records)
        return task_eval

    def input_moments(self, core: Core, records: list[dict[str, str]]) -> dict[str, np.ndarray]:
        """E[x·xᵀ] of each core layer's inputs over prompt + answer tokens, with ``core`` merged:
        what input-aware embedding needs (spec/watermark.md)."""
        self.use(core)
        modules = dict(self.model.named_modules())
        sums: dict[str, list] = {}
        hooks = []
        for name in core:
            def hook(_m, inp, _out, name=name) -> None:  # noqa: ANN001
                x = inp[0].detach().double().reshape(-1, inp[0].shape[-1])
                acc = sums.setdefault(name, [0.0, 0])
                acc[0] = acc[0] + (x.T @ x).numpy()
                acc[1] += x.shape[0]
            hooks.append(modules[name.removesuffix(".weight")].register_forward_hook(hook))
        enc = self._encode(records)
        try:
            with torch.no_grad():
                for i in range(0, len(enc), BATCH):
                    batch = collate(enc[i: i + BATCH], self.tokenizer.pad_token_id)
                    self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        finally:
            for h in hooks:
                h.remove()
        return {k: v[0] / v[1] for k, v in sums.items()}


def finetune_core(backbone: str | Path, core: Core, records: list[dict[str, str]], steps: int, lr: float,
                  batch_size: int = 8, seed: int = 7) -> dict[str, LoraFactors]:
    """Further fine-tuning of a core on task records: peft LoRA initialised with the core's factors,
    fresh AdamW at a constant ``lr`` (no warm-up: the harsher case), batches drawn with ``seed``.

    This is the attack the watermark's fine-tuning robustness is measured against.
    """
    ranks = {f.rank for f in core.values()}
    scales = {round(f.scale, 12) for f in core.values()}
    if len(ranks) != 1 or len(scales) != 1:
        raise ValueError("fine-tuning needs one rank and one scale for all layers")
    rank, scale = ranks.pop(), scales.pop()
    modules = sorted({weight_module(n).rsplit(".", 1)[-1] for n in core})
    cfg = TrainConfig(backbone=str(backbone), dataset="-", output_dir="-", lr=lr, rank=rank, alpha=scale * rank,
                      target_modules=modules, batch_size=batch_size, seed=seed)
    tok = load_tokenizer(backbone)
    model = lora_model(load_causal_lm(backbone), cfg)
    state = model.state_dict()
    keys = {}
    for name, f in core.items():
        stem = "base_model.model." + name.removesuffix(".weight")
        keys[name] = (f"{stem}.lora_A.default.weight", f"{stem}.lora_B.default.weight")
        with torch.no_grad():
            state[keys[name][0]].copy_(torch.from_numpy(np.asarray(f.a, dtype=np.float32)))
            state[keys[name][1]].copy_(torch.from_numpy(np.asarray(f.b, dtype=np.float32)))
    wrapped = {k for pair in keys.values() for k in pair}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if trainable != wrapped:
        raise ValueError("the core does not cover exactly the LoRA modules of its module names")
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        batch = [encode(tok, records[i], MAX_LENGTH) for i in rng.choice(len(records), batch_size, replace=False)]
        model(**collate(batch, tok.pad_token_id)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    state = model.state_dict()
    return {n: LoraFactors(state[a].detach().numpy().copy(), state[b].detach().numpy().copy(), core[n].scale)
            for n, (a, b) in keys.items()}


def delta_drift(before: Core, after: Core) -> float:
    """‖ΔW_after − ΔW_before‖_F / ‖ΔW_before‖_F over all layers together."""
    num = sum(float(np.sum((after[k].delta() - f.delta()) ** 2)) for k, f in before.items())
    den = sum(float(np.sum(f.delta() ** 2)) for f in before.values())
    return float(np.sqrt(num / den))
