"""How an instruction record becomes model text, shared by training and evaluation."""

from __future__ import annotations

PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


def prompt_of(record: dict[str, str]) -> str:
    """The text the model sees before its answer."""
    return PROMPT_TEMPLATE.format(instruction=record["instruction"], input=record["input"])
