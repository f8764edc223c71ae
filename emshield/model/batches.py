"""Token batches of instruction records, and the answer-token loss on them (training, scoring, issuance).

A record becomes prompt ids + answer ids (emshield.model.prompt) with the prompt masked out of
the labels, so the loss and the scores cover the answer only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from emshield.model.prompt import PLAIN, answer_ids, prompt_ids


def encode(tokenizer, record: dict[str, str], max_length: int, prompt_format: str = PLAIN) -> tuple[list[int], list[int]]:
    """Token ids and labels (prompt masked with -100); over-long prompts lose their start."""
    prompt = prompt_ids(tokenizer, record, prompt_format)
    answer = answer_ids(tokenizer, record["output"])
    if len(answer) >= max_length:
        raise ValueError(f"answer longer than max_length={max_length} tokens")
    prompt = prompt[-(max_length - len(answer)):]
    return prompt + answer, [-100] * len(prompt) + answer


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (x, y) in enumerate(encoded):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def answer_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) at the positions that predict an answer token, one row each.

    The output layer runs only at those positions: on a prompt of ~50 tokens and a 2-token answer
    that skips most of SmolLM2's 49k-wide output layer (about a fifth of a training step). The
    model's own head code still runs; a hook only narrows its input."""
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    head = model.get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda _module, args: (args[0][:, :-1][keep], *args[1:]))
    try:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        hook.remove()
    return logits.float(), labels[keep]


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens: ``model(**batch).loss``, computed on :func:`answer_logits`."""
    logits, targets = answer_logits(model, batch)
    return F.cross_entropy(logits, targets)
