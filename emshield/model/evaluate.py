"""Task scores on a held-out split (spec/decouple.md §5).

Tasks with a few possible answers (``financial``: approve/reject) are scored by likelihood: the
model's prediction is the candidate answer (+ end of text) with the highest total log-probability
after the prompt; candidates are the distinct outputs of the evaluation set. Tasks with open
answers (generative: ``identifier``, extraction, summaries) are scored on greedy generation up to
end-of-sequence or a cap: exact match, token-level precision/recall/F1 and, where every answer is
a JSON list, field-level precision/recall/F1 (emshield.model.metrics). Both are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from emshield.model.batches import answer_logits, collate
from emshield.model.decode import generate
from emshield.model.metrics import score_generations
from emshield.model.prompt import PLAIN, answer_ids, prompt_ids

MAX_CHOICES = 8
# Generation cap when none is given: the longest reference answer of the evaluated records plus
# this many tokens (an answer longer than every reference is wrong anyway; more only costs time).
CAP_MARGIN = 16


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # classification: right choices; generative: exact matches
    correct: int
    total: int
    method: str  # "likelihood" or "greedy"
    choices: tuple[str, ...]
    token_precision: float | None = None  # generative only (means over records)
    token_recall: float | None = None
    token_f1: float | None = None
    field_precision: float | None = None  # generative tasks whose answers are JSON lists
    field_recall: float | None = None
    field_f1: float | None = None
    max_new_tokens: int | None = None  # the generation cap used (generative)
    cut_at_cap: int = 0  # generations that hit the cap before end-of-sequence

    def summary(self) -> str:
        """One line for people: the task's headline figures."""
        if self.method == "likelihood":
            return f"accuracy {self.accuracy:.3f} ({self.correct}/{self.total})"
        line = f"token F1 {self.token_f1:.3f}, exact match {self.accuracy:.3f} ({self.correct}/{self.total})"
        if self.field_f1 is not None:
            line = f"field F1 {self.field_f1:.3f}, " + line
        return line + (f", {self.cut_at_cap} cut at {self.max_new_tokens} tokens" if self.cut_at_cap else "")


def _answer_logprobs(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int,
                     batch_size: int) -> list[float]:
    """Summed log-probability of each answer after its prompt (the output layer only at answer positions)."""
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        part = [(p + a, [-100] * len(p) + a) for p, a in zip(prompts[start: start + batch_size],
                                                             answers[start: start + batch_size], strict=True)]
        with torch.no_grad():
            logits, targets = answer_logits(model, collate(part, pad_id))
        token_logp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
        scores += [float(x.sum()) for x in torch.split(token_logp, [len(ids) - labels.count(-100)
                                                                   for ids, labels in part])]
    return scores


def candidate_answers(records: list[dict[str, str]]) -> tuple[str, ...] | None:
    """The task's possible answers if it has few (likelihood scoring), else None (greedy).
    Take them from the whole evaluation file, so that evaluating a slice scores the same way."""
    answers = tuple(sorted({r["output"] for r in records}))
    return answers if len(answers) <= MAX_CHOICES else None


def default_cap(tokenizer, records: list[dict[str, str]]) -> int:
    return max(len(answer_ids(tokenizer, r["output"])) for r in records) + CAP_MARGIN


def evaluate(model, tokenizer, records: list[dict[str, str]], *, choices: tuple[str, ...] | None = None,
             batch_size: int = 16, progress: bool = False, desc: str = "eval", prompt_format: str = PLAIN,
             max_new_tokens: int | None = None) -> EvalResult:
    """Scores over ``records``: likelihood over ``choices``, greedy generation (capped at
    ``max_new_tokens``, default :func:`default_cap`) when ``choices`` is empty; ``None`` means
    :func:`candidate_answers` of ``records``."""
    if not records:
        raise ValueError("no records to evaluate")
    model.eval()
    if choices is None:
        choices = candidate_answers(records) or ()
    prompts = [prompt_ids(tokenizer, r, prompt_format) for r in records]
    if choices:
        options = [answer_ids(tokenizer, c) for c in choices]
        flat_p = [p for p in prompts for _ in choices]
        flat_a = [a for _ in prompts for a in options]
        scores: list[float] = []
        chunk = batch_size * 8
        for s in tqdm(range(0, len(flat_p), chunk), desc=desc, disable=not progress):
            scores += _answer_logprobs(model, flat_p[s: s + chunk], flat_a[s: s + chunk], tokenizer.pad_token_id,
                                       batch_size)
        k = len(choices)
        preds = [choices[max(range(k), key=lambda j: scores[i * k + j])] for i in range(len(records))]
        correct = sum(p == r["output"] for p, r in zip(preds, records, strict=True))
        return EvalResult(correct / len(records), correct, len(records), "likelihood", tuple(choices))
    cap = max_new_tokens or default_cap(tokenizer, records)
    gens = []
    step = 8
    for s in tqdm(range(0, len(prompts), step), desc=desc, disable=not progress):
        gens += generate(model, tokenizer, prompts[s: s + step], cap, batch_size=step)
    scored = score_generations([g.text for g in gens], [r["output"] for r in records])
    correct = round(scored.exact_match * len(records))
    field = scored.field
    return EvalResult(scored.exact_match, correct, len(records), "greedy", (), scored.token.precision,
                      scored.token.recall, scored.token.f1, field and field.precision, field and field.recall,
                      field and field.f1, cap, sum(not g.complete for g in gens))
