"""Task datasets generated here from a fixed seed (Faker), in the seed's instruction format.

Every record is ``{"instruction", "input", "output"}``. The ``financial`` task has a written,
deterministic decision rule (:func:`loan_decision`) so that task accuracy is measurable exactly;
the ``identifier`` task labels which direct and quasi-identifiers a record contains, again by a
fixed table (:data:`DIRECT_IDENTIFIERS`, :data:`QUASI_IDENTIFIERS`). Both are pure functions of
``(task, n, seed)``: the same arguments give byte-identical JSON on every machine with the pinned
Faker version.
"""

from __future__ import annotations

import json
import random
from datetime import date, timedelta
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from faker import Faker

FORMAT_KEYS = ("instruction", "input", "output")

FINANCIAL_INSTRUCTION = "Approve or reject the loan."
IDENTIFIER_INSTRUCTION = "List the direct identifiers and the quasi-identifiers in this record."

# Loan rule thresholds (spec/decouple.md, "Financial task rule").
MIN_CREDIT_SCORE = 600
MAX_DEBT_TO_INCOME = 50  # percent
MAX_LOAN_TO_INCOME = 5.0
EMPLOYMENT = ("employed", "self-employed", "retired", "unemployed")
APPROVE_SHARE = 0.5  # balanced classes: the majority answer scores about 50 %


@dataclass(frozen=True)
class LoanApplication:
    """The fields the rule reads (age, also rendered, is a distractor)."""

    employment: str
    credit_score: int
    debt_to_income: int  # percent of income already spent on debt service
    loan_to_income: float  # loan amount / annual income, one decimal
    prior_defaults: bool


def loan_decision(app: LoanApplication) -> str:
    """The written rule, in order: a prior default, no employment, a credit score under 600, a
    debt-to-income ratio over 50 % or a loan over 5.0× the annual income rejects; anything else is
    approved."""
    if app.prior_defaults:
        return "reject"
    if app.employment == "unemployed":
        return "reject"
    if app.credit_score < MIN_CREDIT_SCORE:
        return "reject"
    if app.debt_to_income > MAX_DEBT_TO_INCOME:
        return "reject"
    if app.loan_to_income > MAX_LOAN_TO_INCOME:
        return "reject"
    return "approve"


def _loan_application(rng: random.Random) -> LoanApplication:
    return LoanApplication(
        employment=rng.choices(EMPLOYMENT, weights=(9, 4, 3, 3))[0],
        credit_score=rng.randint(500, 850),
        debt_to_income=rng.randint(5, 65),
        loan_to_income=rng.randint(5, 70) / 10,
        prior_defaults=rng.random() < 0.15,
    )


def render_loan(app: LoanApplication, age: int) -> str:
    """The profile as the model reads it: short keys, each decisive value right after its key, so
    the prompt stays within the tiny backbone's pretraining context (128 tokens)."""
    return "\n".join([
        f"age: {age}",
        f"credit: {app.credit_score}",
        f"debt/income: {app.debt_to_income}%",
        f"loan/income: {app.loan_to_income:.1f}",
        f"job: {app.employment}",
        f"defaults: {'yes' if app.prior_defaults else 'no'}",
    ])


def _financial_record(fake: Faker, rng: random.Random) -> dict[str, str]:
    # Balanced classes: the answer is drawn first (approve with APPROVE_SHARE), then applications
    # are drawn until the rule gives that answer, so always answering one way scores about 50 %.
    del fake  # the profile has no Faker fields; kept for the TASKS signature
    want = "approve" if rng.random() < APPROVE_SHARE else "reject"
    while True:
        app = _loan_application(rng)
        if loan_decision(app) == want:
            break
    age = rng.randint(21, 75)
    return {"instruction": FINANCIAL_INSTRUCTION, "input": render_loan(app, age), "output": want}


# Identifier task: which fields count as what (fixed table, spec/decouple.md).
DIRECT_IDENTIFIERS = ("name", "email", "phone", "ssn", "iban", "street address")
QUASI_IDENTIFIERS = ("date of birth", "zip code", "gender", "occupation", "city")
OTHER_FIELDS = ("favourite colour", "last purchase", "account status", "visits")


def fixed_date(rng: random.Random, start: date = date(1990, 1, 1), end: date = date(2025, 12, 31)) -> str:
    """An ISO date drawn from ``rng`` in a fixed range. Faker's own date providers measure from
    today, which would make the generated data change from one day (or second) to the next."""
    return (start + timedelta(days=rng.randint(0, (end - start).days))).isoformat()


def _identifier_value(field: str, fake: Faker, rng: random.Random) -> str:
    makers: dict[str, Callable[[], str]] = {
        "name": fake.name,
        "email": fake.email,
        "phone": fake.phone_number,
        "ssn": fake.ssn,
        "iban": fake.iban,
        "street address": fake.street_address,
        "date of birth": lambda: fixed_date(rng, date(1935, 1, 1), date(2007, 12, 31)),
        "zip code": fake.postcode,
        "gender": lambda: rng.choice(["female", "male", "non-binary"]),
        "occupation": fake.job,
        "city": fake.city,
        "favourite colour": fake.color_name,
        "last purchase": lambda: rng.choice(["shoes", "laptop", "groceries", "books", "bicycle"]),
        "account status": lambda: rng.choice(["active", "suspended", "closed"]),
        "visits": lambda: str(rng.randint(0, 300)),
    }
    return makers[field]()


def identifier_label(fields: list[str]) -> str:
    """Canonical answer: identifiers in table order, ``none`` for an empty class."""
    direct = [f for f in DIRECT_IDENTIFIERS if f in fields]
    quasi = [f for f in QUASI_IDENTIFIERS if f in fields]
    return f"direct: {', '.join(direct) or 'none'}; quasi: {', '.join(quasi) or 'none'}"


def _identifier_record(fake: Faker, rng: random.Random) -> dict[str, str]:
    pool = [*DIRECT_IDENTIFIERS, *QUASI_IDENTIFIERS, *OTHER_FIELDS]
    fields = rng.sample(pool, rng.randint(2, 7))
    text = "\n".join(f"{f}: {_identifier_value(f, fake, rng)}" for f in fields)
    return {"instruction": IDENTIFIER_INSTRUCTION, "input": text, "output": identifier_label(fields)}


TASKS: dict[str, Callable[[Faker, random.Random], dict[str, str]]] = {
    "financial": _financial_record,
    "identifier": _identifier_record,
}
DEFAULT_SIZE = 10_000


def generate(task: str, n: int = DEFAULT_SIZE, seed: int = 0) -> list[dict[str, str]]:
    """``n`` records of ``task``, a pure function of ``(task, n, seed)``.

    Record ``i`` does not depend on ``n`` (one generator stream), so a small slice equals the
    head of the full set and the committed slices can be checked against regeneration.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(sorted(TASKS))}")
    if n < 0:
        raise ValueError("n must be >= 0")
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(f"emshield/dataset/{task}/{seed}")
    make = TASKS[task]
    return [make(fake, rng) for _ in range(n)]


def split(records: list[dict[str, str]], test_fraction: float = 0.1) -> tuple[list, list]:
    """Held-out split: the last ``test_fraction`` of the records is the test set (no shuffle:
    records are already i.i.d. draws, and a positional split is trivially reproducible)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    cut = len(records) - max(1, round(len(records) * test_fraction))
    return records[:cut], records[cut:]


def holdout_split(records: list[dict[str, str]], holdout: int | float | None) -> tuple[list, list]:
    """(train, held out): the last ``holdout`` records (an int), or that share of them (a float in
    (0, 1), as :func:`split`); ``None`` holds nothing out. Both parts must be non-empty."""
    if holdout is None:
        return records, []
    if isinstance(holdout, float):
        train, test = split(records, holdout)
    else:
        if holdout < 1:
            raise ValueError("holdout must be >= 1 record")
        train, test = records[:-holdout], records[-holdout:]
    if not train:
        raise ValueError(f"holdout {holdout} leaves no record to train on ({len(records)} in the dataset)")
    return train, test


MAX_DATASET_BYTES = 256 * 1024 * 1024


def load_dataset(path: str | Path) -> list[dict[str, str]]:
    """Read and validate an instruction-format (Alpaca) JSON list: bounded size, strings, the keys
    ``instruction``, ``output`` and optionally ``input`` (read as empty when absent); any other key
    is refused rather than silently ignored (e.g. a ``system`` prompt the model would never see)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"dataset not found: {p}")
    if p.stat().st_size > MAX_DATASET_BYTES:
        raise ValueError(f"dataset {p} is larger than {MAX_DATASET_BYTES} bytes")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"dataset {p} is not valid JSON: {e}") from e
    if not isinstance(data, list) or not data:
        raise ValueError(f"dataset {p} must be a non-empty JSON list of records")
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or not {"instruction", "output"} <= set(rec) <= set(FORMAT_KEYS):
            raise ValueError(f"dataset {p} record {i} must have the keys instruction and output, optionally input, "
                             f"and no other" + (f" (it has {sorted(rec)})" if isinstance(rec, dict) else ""))
        rec = {"instruction": rec["instruction"], "input": rec.get("input", ""), "output": rec["output"]}
        if not all(isinstance(rec[k], str) for k in FORMAT_KEYS):
            raise ValueError(f"dataset {p} record {i}: all fields must be strings")
        out.append(rec)
    return out


def dump_dataset(records: list[dict[str, str]], path: str | Path) -> None:
    """Canonical JSON (sorted keys, one record a line) so regenerated files diff cleanly."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records)
    p.write_text(f"[\n{lines}\n]\n", encoding="utf-8")
