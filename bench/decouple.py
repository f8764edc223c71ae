"""Decoupling benchmark: LoRA step time, merge time and recovery time (randomized truncated SVD
against a plain full torch.linalg.svd baseline in the same run) on the fixture model, a ~100M
parameter Llama with random weights, and SmolLM2-135M-Instruct (converted once to the cache).

    ./run bench decouple            # all three models
    python bench/decouple.py --models tiny,100m --steps 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _util import timed  # noqa: E402

from emshield.core import LoraFactors  # noqa: E402
from emshield.model.datasets import generate  # noqa: E402
from emshield.model.hf import load_causal_lm, load_tokenizer  # noqa: E402
from emshield.model.io import backbone_id, open_tensors  # noqa: E402
from emshield.model.merge import write_merged  # noqa: E402
from emshield.model.recover import overall_error, recover_core  # noqa: E402
from emshield.model.batches import collate, encode  # noqa: E402
from emshield.model.train import TrainConfig, lora_model  # noqa: E402

TINY = ROOT / "fixtures" / "tiny-llama"
CONFIG_100M = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                   num_key_value_heads=12, vocab_size=32000, max_position_embeddings=1024,
                   tie_word_embeddings=True)


def make_100m(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG_100M))
    model.save_pretrained(folder, safe_serialization=True)
    load_tokenizer(TINY).save_pretrained(folder)  # any tokenizer: ids stay below the vocab
    return folder


def random_core(backbone: Path, rank: int, seed: int = 0) -> dict[str, LoraFactors]:
    rng = np.random.default_rng(seed)
    core = {}
    with open_tensors(backbone) as src:
        for name in src.keys():
            if name.endswith(("q_proj.weight", "v_proj.weight")):
                out, inp = src.get(name).shape
                core[name] = LoraFactors(a=(rng.standard_normal((rank, inp)) * 0.02).astype(np.float32),
                                         b=(rng.standard_normal((out, rank)) * 0.02).astype(np.float32), scale=2.0)
    return core


def step_time(backbone: Path, steps: int, batch: int, seq_len: int) -> float:
    cfg = TrainConfig(backbone=str(backbone), dataset="-", output_dir="-", rank=8, alpha=16,
                      target_modules=["q_proj", "v_proj"], max_length=seq_len)
    tok = load_tokenizer(backbone)
    model = lora_model(load_causal_lm(backbone), cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    data = collate([encode(tok, r, seq_len) for r in generate("financial", batch, seed=1)], tok.pad_token_id)
    times = []
    for _ in range(steps + 1):  # first step warms up
        t = time.perf_counter()
        model(**data).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def bench_model(label: str, backbone: Path, args, work: Path) -> dict:
    res: dict = {"model": label}
    with open_tensors(backbone) as src:
        res["parameters"] = sum(src.get(k).numel() for k in src.keys())
    res["backbone_id_s"], _ = timed(lambda: backbone_id(backbone))
    res["lora_step_s"] = step_time(backbone, args.steps, args.batch, args.seq_len)
    core = random_core(backbone, args.rank)
    res["merge_s"], merged = timed(lambda: write_merged(backbone, core, work / f"{label}-merged"), args.repeat)
    with open_tensors(merged) as m, open_tensors(backbone) as b:
        res["recover_sketch_s"], (_, rep) = timed(lambda: recover_core(m, b, args.rank), args.repeat)
        res["recover_full_svd_s"], (_, rep_full) = timed(lambda: recover_core(m, b, args.rank, full_svd=True),
                                                         args.repeat)
        res["recover_auto_rank_s"], (_, rep_auto) = timed(lambda: recover_core(m, b, None), args.repeat)
    res["recover_layers"] = len(rep)
    res["recover_rel_error"] = overall_error(rep)
    res["recover_full_rel_error"] = overall_error(rep_full)
    res["auto_ranks"] = sorted({r.rank for r in rep_auto})
    res["speedup_sketch_vs_full_svd"] = res["recover_full_svd_s"] / res["recover_sketch_s"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,100m,smollm2", help="comma list of tiny, 100m, smollm2")
    ap.add_argument("--steps", type=int, default=3, help="timed LoRA steps (median reported)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=192)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1, help="best of N for merge/recover timings")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label in args.models.split(","):
            if label == "tiny":
                backbone = TINY
            elif label == "100m":
                t, backbone = timed(lambda: make_100m(work / "llama-100m"))
                print(f"built random ~100M Llama in {t:.1f} s", file=sys.stderr)
            elif label == "smollm2":
                from emshield.model.smollm2 import ensure_smollm2

                t, backbone = timed(lambda: ensure_smollm2(progress=True))
                print(f"SmolLM2 ready in {t:.1f} s (conversion on first use, cached after)", file=sys.stderr)
            else:
                ap.error(f"unknown model {label}")
            results.append(bench_model(label, backbone, args, work))
            if not args.json:
                r = results[-1]
                print(f"{label:8s} {r['parameters'] / 1e6:7.2f}M params | LoRA step (r={args.rank}, q/v, "
                      f"batch {args.batch}x{args.seq_len}) {r['lora_step_s'] * 1000:8.1f} ms | merge {r['merge_s']:.2f} s"
                      f" | backbone id {r['backbone_id_s']:.2f} s")
                print(f"{'':8s} recover {r['recover_layers']} layers: sketch SVD {r['recover_sketch_s']:.3f} s "
                      f"(rel. err {r['recover_rel_error']:.1e}) vs full torch.linalg.svd baseline "
                      f"{r['recover_full_svd_s']:.3f} s (rel. err {r['recover_full_rel_error']:.1e}) -> "
                      f"{r['speedup_sketch_vs_full_svd']:.1f}x; auto rank {r['recover_auto_rank_s']:.3f} s, "
                      f"ranks {r['auto_ranks']}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
