"""LoRA fine-tuning with peft from a recipe (YAML, or the CLI's options): fixed seed,
deterministic on CPU, progress bar, and the held-out scores of the bare and the adapted backbone.

A plain torch loop (no ``Trainer``) keeps each step visible and reproducible: the seed fixes
peft's initialisation of A, the batch order and nothing else is random (dropout defaults to 0).
The loss covers the answer tokens only, so the prompt is context, not a target; the output layer
is computed only where it predicts an answer token (:func:`answer_loss`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from emshield.model.adapter import read_peft_adapter, save_core
from emshield.model.backbones import is_backbone_name, resolve_backbone
from emshield.model.batches import answer_loss, collate, encode
from emshield.model.datasets import holdout_split, load_dataset
from emshield.model.evaluate import EvalResult, candidate_answers, evaluate
from emshield.model.heldout import TRAIN_LOG_FILE, write_heldout
from emshield.model.hf import load_causal_lm, load_tokenizer, peft_quiet
from emshield.model.io import backbone_id
from emshield.model.prompt import PLAIN, PROMPT_FORMATS

ADAPTER_DIR = "adapter"
CORE_FILE = "core.safetensors"
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """The YAML keys (all others are refused). Relative paths are relative to the YAML file;
    ``backbone`` is a path or a backbone name (emshield.model.backbones, e.g. ``smollm2``)."""

    backbone: str
    dataset: str
    output_dir: str
    lr: float = 2e-3
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    rslora: bool = False
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    max_length: int = 512
    seed: int = 0
    limit: int | None = None  # use only the first N records
    warmup_steps: int = 0  # linear warm-up of the learning rate from lr/warmup_steps to lr
    schedule: str = "constant"  # after warm-up: "constant" or "cosine" (to 0 at the last step)
    max_grad_norm: float | None = None  # clip the LoRA gradients' global L2 norm (None: no clipping)
    # Held out for evaluation, never trained on: the last N records (int) or that share of them (float in (0, 1)).
    holdout: int | float | None = None
    prompt_format: str = PLAIN  # "plain" (emshield.model.prompt's template) or "chat" (the backbone's chat template)
    eval_bare: bool = True  # also score the bare backbone on the held-out records (False: skip it)
    max_new_tokens: int | None = None  # generation cap when scoring generative tasks (None: evaluate.default_cap)

    def __post_init__(self) -> None:
        checks = [
            (self.lr > 0, "lr must be > 0"), (self.epochs >= 1, "epochs must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"), (self.rank >= 1, "rank must be >= 1"),
            (self.alpha > 0, "alpha must be > 0"), (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (bool(self.target_modules), "target_modules must not be empty"),
            (self.max_length >= 8, "max_length must be >= 8"),
            (self.limit is None or self.limit >= 1, "limit must be >= 1"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm must be > 0"),
            (self.holdout is None or (isinstance(self.holdout, int) and self.holdout >= 1)
             or (isinstance(self.holdout, float) and 0 < self.holdout < 1),
             "holdout must be a number of records >= 1 or a fraction in (0, 1)"),
            (self.prompt_format in PROMPT_FORMATS, f"prompt_format must be one of {PROMPT_FORMATS}"),
            (self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"train config: {msg}")

    @classmethod
    def from_dict(cls, raw: object, base: Path = Path(".")) -> TrainConfig:
        if not isinstance(raw, dict):
            raise ValueError("train config must be a mapping")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"train config: unknown keys {unknown}; known: {sorted(known)}")
        missing = [k for k in ("backbone", "dataset", "output_dir") if k not in raw]
        if missing:
            raise ValueError(f"train config: missing keys {missing}")
        types = {"lr": float, "alpha": float, "dropout": float, "epochs": int, "max_steps": int,
                 "batch_size": int, "rank": int, "max_length": int, "seed": int, "limit": int,
                 "rslora": bool, "backbone": str, "dataset": str, "output_dir": str,
                 "warmup_steps": int, "schedule": str, "max_grad_norm": float, "prompt_format": str,
                 "eval_bare": bool, "max_new_tokens": int}
        vals = dict(raw)
        for k, v in vals.items():
            if k == "target_modules":
                if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                    raise ValueError("train config: target_modules must be a list of strings")
            elif k == "holdout":
                if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                    raise ValueError(f"train config: holdout must be a number, got {v!r}")
            elif v is None and k in ("max_steps", "limit", "max_grad_norm", "max_new_tokens"):
                continue
            elif types[k] is float and isinstance(v, int | float) and not isinstance(v, bool):
                vals[k] = float(v)
            elif not isinstance(v, types[k]) or (types[k] is int and isinstance(v, bool)):
                raise ValueError(f"train config: {k} must be {types[k].__name__}, got {v!r}")
        for k in ("backbone", "dataset", "output_dir"):
            if k == "backbone" and is_backbone_name(vals[k]):
                continue
            vals[k] = os.path.normpath(base / vals[k]) if not Path(vals[k]).is_absolute() else vals[k]
        return cls(**vals)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"train config not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML ({e})") from e
        return cls.from_dict(raw, base=p.parent)


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    adapter_dir: Path
    core_path: Path
    backbone_id: str
    steps: int
    first_loss: float
    final_loss: float
    seconds: float
    seconds_per_step: float
    backbone: str = ""  # the backbone folder trained on (a name resolved to its folder)
    train_records: int = 0
    heldout_records: int = 0
    # Held-out scores: "adapted" (backbone + the trained core) and "bare" (unless eval_bare is off).
    evaluation: dict[str, EvalResult] | None = None


def lora_model(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)  # peft draws lora_A from torch's generator
    lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_rslora=cfg.rslora,
                      target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    with peft_quiet():
        return get_peft_model(model, lcfg)


def lr_factor(cfg: TrainConfig, step: int, steps: int) -> float:
    """Multiplier of ``cfg.lr`` at 0-based ``step`` of ``steps``: linear warm-up, then constant or
    cosine decay. A tiny backbone's LoRA diverges at a constant high rate (loss spikes after a few
    hundred steps); warm-up, decay and clipping keep it learning the rule (spec/decouple.md §5)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule == "constant":
        return warm
    done = max(0, step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps)
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))


def evaluate_heldout(model, tokenizer, heldout: list[dict[str, str]], all_records: list[dict[str, str]],
                     cfg: TrainConfig, progress: bool) -> dict[str, EvalResult]:
    """Scores of the adapted model (peft-wrapped) and, with ``cfg.eval_bare``, of the bare backbone
    (the adapter switched off) on the held-out records; the answer set comes from the whole file."""
    opts = dict(choices=candidate_answers(all_records) or (), prompt_format=cfg.prompt_format,
                max_new_tokens=cfg.max_new_tokens, progress=progress)
    out = {}
    if cfg.eval_bare:
        with model.disable_adapter():
            out["bare"] = evaluate(model, tokenizer, heldout, desc="held-out: bare", **opts)
    out["adapted"] = evaluate(model, tokenizer, heldout, desc="held-out: adapted", **opts)
    return out


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    """Train, then write ``adapter/`` (peft), ``core.safetensors`` and ``train_log.json``; with
    ``holdout``, score the held-out records (bare and adapted), record the scores there too, and
    write the records to ``heldout.json``."""
    t0 = time.perf_counter()
    backbone = resolve_backbone(cfg.backbone, progress=progress)
    all_records = load_dataset(cfg.dataset)
    records, heldout = holdout_split(all_records, cfg.holdout)
    records = records[: cfg.limit]
    tokenizer = load_tokenizer(backbone)
    model = lora_model(load_causal_lm(backbone), cfg)
    encoded = [encode(tokenizer, r, cfg.max_length, cfg.prompt_format) for r in records]
    rng = np.random.default_rng(cfg.seed)
    batches: list[list[int]] = []
    for _ in range(cfg.epochs):
        perm = rng.permutation(len(encoded)).tolist()
        batches.extend(perm[i: i + cfg.batch_size] for i in range(0, len(perm), cfg.batch_size))
    steps = len(batches) if cfg.max_steps is None else min(cfg.max_steps, len(batches))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, steps))
    was_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    losses: list[float] = []
    model.train()
    t_loop = time.perf_counter()
    try:
        bar = tqdm(range(steps), desc="train LoRA", disable=not progress)
        for step in bar:
            loss = answer_loss(model, collate([encoded[i] for i in batches[step]], tokenizer.pad_token_id))
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        torch.use_deterministic_algorithms(was_det)
    loop_s = time.perf_counter() - t_loop
    model.eval()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapter_dir = out / ADAPTER_DIR
    model.save_pretrained(adapter_dir)
    core_path = save_core(read_peft_adapter(adapter_dir), out / CORE_FILE)
    if heldout:  # beside the core: `emshield issue` measures the mark's cost on them by default
        write_heldout(out, heldout)
    evaluation = evaluate_heldout(model, tokenizer, heldout, all_records, cfg, progress) if heldout else None
    bid = backbone_id(backbone)
    result = TrainResult(out, adapter_dir, core_path, bid, steps, losses[0], losses[-1],
                         time.perf_counter() - t0, loop_s / max(steps, 1), str(backbone), len(records),
                         len(heldout), evaluation)
    (out / TRAIN_LOG_FILE).write_text(json.dumps({
        "config": asdict(cfg), "backbone": str(backbone), "backbone_id": bid, "steps": steps,
        "train_records": len(records), "heldout_records": len(heldout),
        "evaluation": {k: asdict(v) for k, v in (evaluation or {}).items()} or None,
        "losses": [round(x, 6) for x in losses],
        "seconds": round(result.seconds, 3), "seconds_per_step": round(result.seconds_per_step, 5),
    }, indent=2) + "\n")
    return result
