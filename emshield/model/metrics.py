"""Scores of a generated answer against its reference: exact match, token-level and field-level
precision/recall/F1 (spec/decouple.md §5, "Generative tasks"). Pure functions over strings.

Tokens are words for scripts that separate words by spaces and single characters for Chinese and
Japanese (which do not), so that a Chinese answer with one wrong character loses one token, not
the whole answer. Field-level scores compare the items of JSON-array answers as multisets, for
tasks whose outputs are lists (e.g. the identifiers found in a record).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Han (CJK unified ideographs, extension A, compatibility), hiragana and katakana: one token a character.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


def normalise(text: str) -> str:
    """NFKC (full-width forms become ASCII), case-folded, outer white space removed."""
    return unicodedata.normalize("NFKC", text).casefold().strip()


def text_tokens(text: str) -> list[str]:
    """Words (runs of letters and digits) and single CJK characters; punctuation is dropped."""
    return _TOKEN.findall(normalise(text))


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float
    f1: float


def overlap_prf(predicted: Iterable[str], reference: Iterable[str]) -> PRF:
    """Multiset overlap: both empty scores 1, one empty scores 0."""
    pred, ref = Counter(predicted), Counter(reference)
    if not pred and not ref:
        return PRF(1.0, 1.0, 1.0)
    common = sum((pred & ref).values())
    if common == 0:
        return PRF(0.0, 0.0, 0.0)
    p, r = common / sum(pred.values()), common / sum(ref.values())
    return PRF(p, r, 2 * p * r / (p + r))


def json_list_items(text: str) -> list[str] | None:
    """The normalised items of a JSON array (strings normalised, other items as canonical JSON),
    or None when ``text`` is not a JSON array."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(value, list):
        return None
    return [normalise(v) if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)
            for v in value]


def is_list_task(references: Sequence[str]) -> bool:
    """Field-level scores apply when every reference answer is a JSON array."""
    return bool(references) and all(json_list_items(r) is not None for r in references)


@dataclass(frozen=True)
class GenerativeScores:
    """Means over records (each record's precision, recall and F1, then averaged)."""

    exact_match: float  # the answer reproduced exactly (outer white space aside)
    token: PRF
    field: PRF | None  # only for list tasks (is_list_task)
    records: int


def _mean(prfs: list[PRF]) -> PRF:
    n = len(prfs)
    return PRF(sum(x.precision for x in prfs) / n, sum(x.recall for x in prfs) / n, sum(x.f1 for x in prfs) / n)


def _field_prf(predicted: str, reference: str) -> PRF:
    """Items of two JSON arrays; an answer that is not a JSON array scores 0."""
    items = json_list_items(predicted)
    return PRF(0.0, 0.0, 0.0) if items is None else overlap_prf(items, json_list_items(reference) or [])


def score_generations(predictions: Sequence[str], references: Sequence[str]) -> GenerativeScores:
    if len(predictions) != len(references) or not references:
        raise ValueError("need one prediction per reference, and at least one")
    exact = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    token = _mean([overlap_prf(text_tokens(p), text_tokens(r)) for p, r in zip(predictions, references, strict=True)])
    field = None
    if is_list_task(references):
        field = _mean([_field_prf(p, r) for p, r in zip(predictions, references, strict=True)])
    return GenerativeScores(exact / len(references), token, field, len(references))
