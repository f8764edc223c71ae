"""Task accuracy on a held-out split.

Tasks with a few possible answers (``financial``: approve/reject) are scored by likelihood: the
model's prediction is the candidate answer (+ end of text) with the highest total log-probability
after the prompt; candidates are the distinct outputs of the evaluation set. Tasks with open
answers (``identifier``) are scored by exact match of greedy generation. Both are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from emshield.model.prompt import prompt_of

MAX_CHOICES = 8


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    correct: int
    total: int
    method: str  # "likelihood" or "greedy"
    choices: tuple[str, ...]


def _answer_logprobs(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int) -> list[float]:
    scores: list[float] = []
    eos = tokenizer.eos_token_id
    for start in range(0, len(prompts), batch_size):
        seqs, spans = [], []
        for p, a in zip(prompts[start: start + batch_size], answers[start: start + batch_size], strict=True):
            pi, ai = tokenizer(p)["input_ids"], tokenizer(a)["input_ids"] + [eos]
            seqs.append(pi + ai)
            spans.append((len(pi), len(pi) + len(ai)))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for i, (lo, hi) in enumerate(spans):
            targets = ids[i, lo:hi]
            scores.append(logp[i, lo - 1: hi - 1].gather(1, targets[:, None]).sum().item())
    return scores


def _greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def candidate_answers(records: list[dict[str, str]]) -> tuple[str, ...] | None:
    """The task's possible answers if it has few (likelihood scoring), else None (greedy).
    Take them from the whole evaluation file, so that evaluating a slice scores the same way."""
    answers = tuple(sorted({r["output"] for r in records}))
    return answers if len(answers) <= MAX_CHOICES else None


def evaluate(model, tokenizer, records: list[dict[str, str]], *, choices: tuple[str, ...] | None = None,
             batch_size: int = 16, progress: bool = False, desc: str = "eval") -> EvalResult:
    """Accuracy over ``records``: likelihood over ``choices``, greedy exact match when ``choices``
    is empty; ``None`` means :func:`candidate_answers` of ``records``."""
    if not records:
        raise ValueError("no records to evaluate")
    model.eval()
    if choices is None:
        choices = candidate_answers(records) or ()
    if choices:
        prompts = [prompt_of(r) for r in records for _ in choices]
        answers = [c for _ in records for c in choices]
        scores = []
        for s in tqdm(range(0, len(prompts), batch_size * 8), desc=desc, disable=not progress):
            scores += _answer_logprobs(model, tokenizer, prompts[s: s + batch_size * 8],
                                       answers[s: s + batch_size * 8], batch_size)
        k = len(choices)
        preds = [choices[max(range(k), key=lambda j: scores[i * k + j])] for i in range(len(records))]
        method = "likelihood"
    else:
        longest = max(len(tokenizer(r["output"])["input_ids"]) for r in records) + 2
        preds = [_greedy(model, tokenizer, prompt_of(r), longest)
                 for r in tqdm(records, desc=desc, disable=not progress)]
        method, choices = "greedy", ()
    correct = sum(p == r["output"] for p, r in zip(preds, records, strict=True))
    return EvalResult(correct / len(records), correct, len(records), method, choices)
