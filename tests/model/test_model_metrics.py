"""Generative task scores (spec/decouple.md §5): token-level and field-level precision/recall/F1, and
greedy decoding that stops at end-of-sequence or says it was cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from emshield.model.metrics import PRF, is_list_task, overlap_prf, score_generations, text_tokens


def test_tokens_are_words_and_single_cjk_characters() -> None:
    assert text_tokens("Direct: e-mail, SSN; quasi: zip code") == ["direct", "e", "mail", "ssn", "quasi", "zip", "code"]
    assert text_tokens("公司名称：深圳ABC科技有限公司") == ["公", "司", "名", "称", "深", "圳", "abc", "科", "技", "有",
                                                    "限", "公", "司"]
    assert text_tokens("ＡＢＣ１２３") == ["abc123"]  # full-width forms fold to ASCII
    assert text_tokens(" ,;。") == []


def test_token_prf_counts_a_multiset_overlap() -> None:
    assert overlap_prf(["a", "b"], ["a", "b"]) == PRF(1.0, 1.0, 1.0)
    assert overlap_prf([], []) == PRF(1.0, 1.0, 1.0)
    assert overlap_prf(["a"], []) == PRF(0.0, 0.0, 0.0)
    got = overlap_prf(["a", "a", "c"], ["a", "b"])  # one "a" matches: P 1/3, R 1/2
    assert got.precision == pytest.approx(1 / 3) and got.recall == pytest.approx(1 / 2)
    assert got.f1 == pytest.approx(0.4)


def test_one_wrong_chinese_character_costs_one_token() -> None:
    scores = score_generations(["公司名称：深圳科技"], ["公司名称：深圳科枝"])
    assert scores.exact_match == 0.0
    assert scores.token.f1 == pytest.approx(7 / 8)
    assert scores.field is None


def test_field_scores_for_json_list_answers() -> None:
    refs = ['["张三", "13800000000", "zhangsan@example.com"]', '[]']
    assert is_list_task(refs) and not is_list_task(refs + ["plain text"])
    scores = score_generations(['["13800000000", "张三"]', "not json"], refs)
    assert scores.field.precision == pytest.approx((1.0 + 0.0) / 2)  # an answer that is no list scores 0
    assert scores.field.recall == pytest.approx((2 / 3 + 0.0) / 2)
    assert score_generations(["[]"], ["[]"]).field == PRF(1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        score_generations(["a"], ["a", "b"])


def test_a_cut_inside_a_character_is_dropped_and_reported(tiny: Path) -> None:
    """A byte-level tokenizer splits a Chinese character into byte tokens; cutting between them decoded as
    `公�`. The partial character is dropped and the generation is marked as cut."""
    from emshield.model.decode import _decode
    from emshield.model.hf import load_tokenizer

    tok = load_tokenizer(tiny)
    ids = tok("公司", add_special_tokens=False)["input_ids"]
    assert len(ids) > 2 and "\ufffd" in tok.decode(ids[:-1])
    cut = _decode(tok, ids[:-1])
    assert not cut.complete and "\ufffd" not in cut.text and cut.text.startswith("公")
    whole = _decode(tok, ids + [tok.eos_token_id, tok.eos_token_id])
    assert whole.complete and whole.text == "公司" and whole.tokens == len(ids) + 1


def test_batched_greedy_generation_equals_one_at_a_time(tiny: Path) -> None:
    from emshield.model.decode import generate
    from emshield.model.hf import load_causal_lm, load_tokenizer
    from emshield.model.prompt import prompt_ids

    tok, model = load_tokenizer(tiny), load_causal_lm(tiny)
    prompts = [prompt_ids(tok, {"instruction": "List the identifiers.", "input": text})
               for text in ("name: Ann", "city: Boston\nzip code: 02110\nphone: 555-0100", "visits: 3")]
    together = generate(model, tok, prompts, 24, batch_size=3)
    alone = [generate(model, tok, [p], 24)[0] for p in prompts]
    assert together == alone
    assert all(g.tokens <= 24 for g in together)
