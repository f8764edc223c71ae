"""How an instruction record becomes model text, shared by training and evaluation."""

from __future__ import annotations

# Short on purpose: the tiny fixture backbone was pretrained on 128-token windows, and a prompt
# that pushes the decisive fields past that position is not learnable by it (spec/decouple.md §5).
PROMPT_TEMPLATE = "{instruction}\n{input}\nAnswer:\n"


def prompt_of(record: dict[str, str]) -> str:
    """The text the model sees before its answer."""
    return PROMPT_TEMPLATE.format(instruction=record["instruction"], input=record["input"])
