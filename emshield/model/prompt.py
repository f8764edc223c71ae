"""How an instruction record becomes model input, shared by training, evaluation, issuance and the
device: one function per direction, so that a core always sees the prompt it was trained on.

Two prompt formats (spec/decouple.md §5): ``plain``, our short template, and ``chat``, the
backbone tokenizer's own chat template (instruction and input as one user turn), for instruct
backbones whose chat format the user wants to keep.
"""

from __future__ import annotations

# Short on purpose: the tiny fixture backbone was pretrained on 128-token windows, and a prompt
# that pushes the decisive fields past that position is not learnable by it (spec/decouple.md §5).
PROMPT_TEMPLATE = "{instruction}\n{input}\nAnswer:\n"
PLAIN = "plain"
CHAT = "chat"
PROMPT_FORMATS = (PLAIN, CHAT)


def prompt_of(record: dict[str, str]) -> str:
    """The plain-format text the model sees before its answer."""
    return PROMPT_TEMPLATE.format(instruction=record["instruction"], input=record.get("input", ""))


def _chat_text(tokenizer, record: dict[str, str]) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt format 'chat' needs a backbone whose tokenizer has a chat template; "
                         "this one has none (use the plain format)")
    user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)


def prompt_ids(tokenizer, record: dict[str, str], fmt: str = PLAIN) -> list[int]:
    """Token ids of the prompt in format ``fmt``; the answer follows them directly."""
    if fmt == PLAIN:
        return list(tokenizer(prompt_of(record))["input_ids"])
    if fmt == CHAT:
        # The rendered chat text already holds the template's special tokens.
        return list(tokenizer(_chat_text(tokenizer, record), add_special_tokens=False)["input_ids"])
    raise ValueError(f"unknown prompt format {fmt!r}; one of {', '.join(PROMPT_FORMATS)}")


def answer_ids(tokenizer, answer: str) -> list[int]:
    """Token ids of an answer as trained and scored: the text, then the end-of-text token."""
    return list(tokenizer(answer, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
