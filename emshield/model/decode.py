"""Greedy decoding: free generation up to end-of-sequence, and choosing among a known answer set.

Free generation stops at the end-of-sequence token or at a cap; an answer cut by the cap is
reported as such, and the partial character a byte-level tokenizer leaves at the cut (U+FFFD)
is dropped rather than shown. Classification prompts are answered by greedy decoding restricted
to the answer set: at each step only tokens that continue some allowed answer (each followed by
the end-of-text token, as trained) are eligible, so the model can only say one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from emshield.model.prompt import answer_ids

REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int  # new tokens generated (the end-of-sequence token included)
    complete: bool  # ended with end-of-sequence; False: cut at the cap


def _decode(tokenizer, new: list[int]) -> Generation:
    eos = tokenizer.eos_token_id
    complete = eos in new
    if complete:
        new = new[: new.index(eos) + 1]
    text = tokenizer.decode(new, skip_special_tokens=True)
    if not complete:
        text = text.rstrip(REPLACEMENT)  # the cut fell inside a multi-byte character
    return Generation(text.strip(), len(new), complete)


def generate(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int,
             batch_size: int = 8) -> list[Generation]:
    """Greedy continuation of each prompt (token ids), batched with left padding."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    out: list[Generation] = []
    pad = tokenizer.pad_token_id
    for start in range(0, len(prompts), batch_size):
        part = prompts[start: start + batch_size]
        width = max(len(p) for p in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(part):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        out.extend(_decode(tokenizer, gen[i, width:].tolist()) for i in range(len(part)))
    return out


def choose(model, tokenizer, prompt: list[int], choices: Sequence[str]) -> str:
    """The answer among ``choices`` that restricted greedy decoding picks after ``prompt``."""
    seqs = {c: answer_ids(tokenizer, c) for c in dict.fromkeys(choices)}
    if not seqs:
        raise ValueError("no answers to choose from")
    prefix: list[int] = []
    while True:
        alive = [c for c, s in seqs.items() if s[: len(prefix)] == prefix]
        for c in alive:
            if len(seqs[c]) == len(prefix):
                return c
        allowed = sorted({seqs[c][len(prefix)] for c in alive})
        if len(allowed) == 1:
            prefix.append(allowed[0])  # forced: no need to ask the model
            continue
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + prefix], dtype=torch.long)).logits[0, -1]
        prefix.append(max(allowed, key=lambda t: float(logits[t])))
