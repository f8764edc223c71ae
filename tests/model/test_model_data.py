"""Generated task datasets: reproducible from the seed, the written rule, strict loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from emshield.model import datasets
from emshield.model.datasets import LoanApplication, generate, load_dataset, loan_decision, split

ROOT = Path(__file__).resolve().parents[2]
RECIPE = yaml.safe_load((ROOT / "fixtures" / "recipes" / "tiny-llama.yaml").read_text())


@pytest.mark.parametrize("task", ["financial", "identifier"])
def test_committed_slices_equal_regeneration_from_the_seed(task: str) -> None:
    sizes = RECIPE["datasets"][task]
    regenerated = generate(task, sizes["train"] + sizes["test"], seed=RECIPE["seed"])
    train = load_dataset(ROOT / "fixtures" / "data" / f"{task}-train.json")
    test = load_dataset(ROOT / "fixtures" / "data" / f"{task}-test.json")
    assert train + test == regenerated


def test_a_slice_is_the_head_of_a_larger_set() -> None:
    assert generate("identifier", 20, seed=5) == generate("identifier", 50, seed=5)[:20]
    assert generate("identifier", 20, seed=5) != generate("identifier", 20, seed=6)


def _parse(record: dict[str, str]) -> LoanApplication:
    f = dict(line.split(": ", 1) for line in record["input"].split("\n"))
    assert list(f) == ["age", "credit", "debt/income", "loan/income", "job", "defaults"]
    assert f["debt/income"].endswith("%")
    return LoanApplication(employment=f["job"], credit_score=int(f["credit"]),
                           debt_to_income=int(f["debt/income"][:-1]), loan_to_income=float(f["loan/income"]),
                           prior_defaults={"yes": True, "no": False}[f["defaults"]])


def test_financial_labels_follow_the_written_rule_and_classes_are_balanced() -> None:
    records = generate("financial", 600, seed=3)
    assert all(loan_decision(_parse(r)) == r["output"] for r in records)
    approved = sum(r["output"] == "approve" for r in records) / len(records)
    assert 0.45 < approved < 0.55, approved
    committed = load_dataset(ROOT / "fixtures" / "data" / "financial-test.json")
    assert 0.4 < sum(r["output"] == "approve" for r in committed) / len(committed) < 0.6


@pytest.mark.parametrize(("app", "want"), [
    (LoanApplication("employed", 700, 30, 2.0, False), "approve"),
    (LoanApplication("employed", 700, 30, 2.0, True), "reject"),
    (LoanApplication("unemployed", 700, 30, 2.0, False), "reject"),
    (LoanApplication("retired", 599, 30, 2.0, False), "reject"),
    (LoanApplication("retired", 600, 50, 2.0, False), "approve"),
    (LoanApplication("self-employed", 600, 51, 2.0, False), "reject"),
    (LoanApplication("employed", 800, 10, 5.0, False), "approve"),
    (LoanApplication("employed", 800, 10, 5.1, False), "reject"),
])
def test_loan_rule_boundaries(app: LoanApplication, want: str) -> None:
    assert loan_decision(app) == want


def test_identifier_labels_name_exactly_the_identifier_fields() -> None:
    for r in generate("identifier", 200, seed=1):
        fields = [line.split(": ", 1)[0] for line in r["input"].split("\n")]
        direct, quasi = r["output"].split("; ")
        want_direct = [f for f in datasets.DIRECT_IDENTIFIERS if f in fields]
        want_quasi = [f for f in datasets.QUASI_IDENTIFIERS if f in fields]
        assert direct == "direct: " + (", ".join(want_direct) or "none")
        assert quasi == "quasi: " + (", ".join(want_quasi) or "none")


def test_split_is_positional() -> None:
    records = generate("identifier", 30, seed=0)
    train, test = split(records, 0.1)
    assert train + test == records and len(test) == 3
    with pytest.raises(ValueError):
        split(records, 1.5)


@pytest.mark.parametrize("content", [
    "not json", "[]", "{}", json.dumps([{"instruction": "a", "input": "b"}]),
    json.dumps([{"instruction": "a", "input": "b", "output": 3}]),
    json.dumps([{"instruction": "a", "input": "b", "output": "c", "extra": "d"}]),
])
def test_bad_datasets_are_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "d.json").write_text(content)
    with pytest.raises(ValueError):
        load_dataset(tmp_path / "d.json")


def test_missing_dataset_and_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "none.json")
    with pytest.raises(ValueError, match="unknown task"):
        generate("weather", 3)
