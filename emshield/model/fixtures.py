"""Build the committed fixtures from their seed: task-data slices and the tiny Llama backbone.

The tiny backbone is a real (if very small) causal language model: a byte-level BPE tokenizer
trained here and a Llama-architecture model briefly pretrained here on generated general text
(Faker prose, addresses, profiles). Nothing is downloaded. On the same torch build the result is
bit-identical (fixed seeds, deterministic algorithms, one intra-op thread), which
``FIXTURE.json``'s backbone id lets anyone check.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from faker import Faker
from tqdm import tqdm

from emshield.model import datasets
from emshield.model.datasets import fixed_date as _fixed_date
from emshield.model.io import backbone_id

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FIXTURES = ROOT / "fixtures"
DEFAULT_RECIPE = DEFAULT_FIXTURES / "recipes" / "tiny-llama.yaml"
TINY_DIR = "tiny-llama"
DATA_DIR = "data"
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class FixtureReport:
    backbone_dir: Path
    backbone_id: str
    parameters: int
    final_loss: float
    seconds: float
    data_files: list[Path]


def load_recipe(path: Path = DEFAULT_RECIPE) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"fixture recipe not found: {path}")
    recipe = yaml.safe_load(path.read_text())
    for key in ("seed", "tokenizer", "architecture", "pretrain", "datasets"):
        if key not in recipe:
            raise ValueError(f"{path}: missing key {key!r}")
    return recipe


def general_corpus(n: int, seed: int) -> list[str]:
    """Generated general text: prose, addresses, people, dates and numbers (no task records)."""
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(f"emshield/corpus/{seed}")
    makers = [
        lambda: fake.paragraph(nb_sentences=rng.randint(2, 6)),
        lambda: fake.text(max_nb_chars=300),
        lambda: f"{fake.name()} lives at {fake.address()}.".replace("\n", ", "),
        lambda: f"{fake.name()} works as {fake.job().lower()} at {fake.company()} in {fake.city()}.",
        lambda: "\n".join(f"{k}: {v}" for k, v in [
            ("name", fake.name()), ("age", rng.randint(18, 90)), ("city", fake.city()),
            ("occupation", fake.job()), ("email", fake.email())][: rng.randint(2, 5)]),
        lambda: f"On {_fixed_date(rng)} the account balance was {rng.randint(0, 250000)} and "
                f"{rng.randint(1, 99)} payments were made.",
        lambda: f"Question: {fake.sentence()}\nAnswer: {fake.sentence()}",
    ]
    return [rng.choice(makers)() for _ in range(n)]


def build_tokenizer(corpus: list[str], vocab_size: int):
    """Byte-level BPE trained on ``corpus``, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                   unk_token=None, model_max_length=512)


def _packed_batches(ids: list[int], seq_len: int, batch: int, steps: int, seed: int):
    data = torch.tensor(ids, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=g)
        yield torch.stack([data[s: s + seq_len] for s in starts.tolist()])


def build_tiny_backbone(out: Path, recipe: dict, progress: bool = True) -> FixtureReport:
    """Tokenizer + Llama model pretrained on the generated corpus, saved in Hugging Face layout."""
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    seed = int(recipe["seed"])
    pre = recipe["pretrain"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fixed reduction order: same bits on every machine with this torch
    torch.use_deterministic_algorithms(True)
    try:
        corpus = general_corpus(int(pre["corpus_documents"]), seed)
        tokenizer = build_tokenizer(corpus, int(recipe["tokenizer"]["vocab_size"]))
        ids: list[int] = []
        for doc in corpus:
            ids.extend(tokenizer(doc)["input_ids"])
            ids.append(tokenizer.eos_token_id)
        config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
                             **recipe["architecture"])
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.train()
        steps, warm = int(pre["steps"]), int(pre["warmup_steps"])
        opt = torch.optim.AdamW(model.parameters(), lr=float(pre["lr"]), weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
            1 + math.cos(math.pi * min(s, steps) / steps)))
        loss_val = float("nan")
        bar = tqdm(_packed_batches(ids, int(pre["seq_len"]), int(pre["batch_size"]), steps, seed),
                   total=steps, desc="pretrain tiny-llama", disable=not progress)
        for batch in bar:
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss_val = loss.item()
            bar.set_postfix(loss=f"{loss_val:.3f}")
        out.mkdir(parents=True, exist_ok=True)
        model.eval()
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    bid = backbone_id(out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "FIXTURE.json").write_text(json.dumps({
        "what": "tiny Llama backbone for tests, pretrained on generated text",
        "rebuild": "emshield decouple fixtures",
        "recipe": "fixtures/recipes/tiny-llama.yaml",
        "seed": seed,
        "parameters": n_params,
        "final_pretrain_loss": round(loss_val, 4),
        "backbone_id": bid,
    }, indent=2) + "\n")
    return FixtureReport(out, bid, n_params, loss_val, time.perf_counter() - t0, [])


def build_data(out: Path, recipe: dict) -> list[Path]:
    """Train/test slices of each task: the head of the full generated set (see ``generate``)."""
    written = []
    for task, sizes in recipe["datasets"].items():
        n_train, n_test = int(sizes["train"]), int(sizes["test"])
        records = datasets.generate(task, n_train + n_test, seed=int(recipe["seed"]))
        for name, part in (("train", records[:n_train]), ("test", records[n_train:])):
            path = out / f"{task}-{name}.json"
            datasets.dump_dataset(part, path)
            written.append(path)
    return written


def build_fixtures(fixtures: Path = DEFAULT_FIXTURES, recipe_path: Path = DEFAULT_RECIPE,
                   *, data: bool = True, backbone: bool = True, progress: bool = True) -> FixtureReport | None:
    recipe = load_recipe(recipe_path)
    files = build_data(fixtures / DATA_DIR, recipe) if data else []
    if not backbone:
        return None
    report = build_tiny_backbone(fixtures / TINY_DIR, recipe, progress=progress)
    return FixtureReport(**{**report.__dict__, "data_files": files})


def compare_fixtures(rebuilt: Path, committed: Path, *, backbone: bool = True) -> list[str]:
    """Names of fixture files whose rebuild differs from the committed copy (data byte for byte,
    the backbone by its id over all tensors)."""
    diffs = []
    for f in sorted((rebuilt / DATA_DIR).glob("*.json")):
        other = committed / DATA_DIR / f.name
        if not other.is_file() or other.read_bytes() != f.read_bytes():
            diffs.append(f"{DATA_DIR}/{f.name}")
    if backbone:
        try:
            same = backbone_id(rebuilt / TINY_DIR) == backbone_id(committed / TINY_DIR)
        except ValueError:
            same = False
        if not same:
            diffs.append(f"{TINY_DIR} (backbone id)")
    return diffs
