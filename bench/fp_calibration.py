"""Fingerprint calibration against the hardest negatives (spec/fingerprint.md, "Similarity").

`./run bench fp_calibration [-- --seeds 5 --steps 150 --payloads 8]`

On the tiny fixture backbone and the financial task: ``--seeds`` cores trained with the same recipe
and different seeds (the same task), each marked for ``--payloads`` devices with the watermark
(plain embedding, τ = 3, as `emshield issue` without task data). Prints the distance distributions:

- same core: its issuances against each other and against the unmarked core (what the fingerprint
  cannot separate, so it never names a device);
- same core, attacked (bf16 merge, int8, 50 % noise, further fine-tuning by the simulated Adam
  attack) against its issuance: what the threshold must accept;
- other cores of the same task (other seeds), issuances against issuances: what the threshold must
  refuse, with the empirical false-match rate at the threshold and the nearest-neighbour margin.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _kit.cores import bf16, finetune, int8_rows, noise  # noqa: E402
from emshield.marking import fingerprint, policy  # noqa: E402
from emshield.marking.params import LayerSpec, MarkingParams, verification_key  # noqa: E402

BACKBONE = ROOT / "fixtures" / "tiny-llama"
DATA = ROOT / "fixtures" / "data" / "financial-train.json"


def train_cores(seeds: int, steps: int, tmp: Path) -> list[dict]:
    from emshield.model.adapter import load_core
    from emshield.model.train import TrainConfig, train

    cores = []
    for seed in range(seeds):
        t0 = time.perf_counter()
        cfg = TrainConfig(backbone=str(BACKBONE), dataset=str(DATA), output_dir=str(tmp / f"s{seed}"), seed=seed,
                          lr=4e-3, warmup_steps=20, schedule="cosine", max_grad_norm=1.0, max_steps=steps,
                          batch_size=16, rank=8, alpha=16, target_modules=["q_proj", "v_proj"], max_length=256)
        res = train(cfg, progress=False)
        cores.append(load_core(res.core_path))
        print(f"  trained seed {seed}: {steps} steps, loss {res.first_loss:.2f} -> {res.final_loss:.2f} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return cores


def fp_of_deltas(deltas: dict[str, np.ndarray], params: MarkingParams) -> fingerprint.Fingerprint:
    return fingerprint.fingerprint_deltas(deltas, params)


def dist(a: fingerprint.Fingerprint, b: fingerprint.Fingerprint, params: MarkingParams) -> float:
    return fingerprint.compare(a, b, params).distance


def summary(name: str, xs: list[float]) -> None:
    xs = sorted(xs)
    print(f"{name:58s} n={len(xs):4d}  min {xs[0]:.3f}  median {xs[len(xs) // 2]:.3f}  max {xs[-1]:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--payloads", type=int, default=8)
    ap.add_argument("--threshold", type=float, default=0.15)
    args = ap.parse_args(argv)
    from emshield.model.io import backbone_id, open_tensors

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="emshield-fpcal-") as tmp:
        cores = train_cores(args.seeds, args.steps, Path(tmp))
    bid = backbone_id(BACKBONE)
    params = MarkingParams(bid, verification_key(bytes(range(32)), bid),
                           tuple(LayerSpec(n, *cores[0][n].shape) for n in sorted(cores[0])))
    with open_tensors(BACKBONE) as bb:
        weights = {n: bb.get(n).double().numpy() for n in cores[0]}
    rng = np.random.default_rng(0)
    payloads = [int(p) for p in rng.integers(0, 1 << 48, args.payloads)]
    issued: list[list[tuple[dict, fingerprint.Fingerprint]]] = []
    unmarked = []
    for core in cores:
        unmarked.append(fingerprint.fingerprint_factors(core, params))
        row = []
        for p in payloads:
            res = policy.mark(core, p, params, policy.Tolerance(max_perturbation=10.0))
            row.append((res.core, res.fingerprint))
        issued.append(row)
    siblings = [dist(a[1], b[1], params) for row in issued for a, b in itertools.combinations(row, 2)]
    to_unmarked = [dist(u, fp, params) for u, row in zip(unmarked, issued) for _, fp in row]
    attacked: dict[str, list[float]] = {k: [] for k in ("bf16 merge", "int8 rows", "noise 50 %", "fine-tune 100 steps")}
    for row in issued:
        for core, fp in row[:3]:
            d = {n: f.delta() for n, f in core.items()}
            attacked["bf16 merge"].append(dist(fp, fp_of_deltas({n: bf16(weights[n] + d[n]) - weights[n] for n in d},
                                                                params), params))
            attacked["int8 rows"].append(dist(fp, fp_of_deltas(
                {n: int8_rows((weights[n] + d[n]).astype(np.float32)) - weights[n] for n in d}, params), params))
            attacked["noise 50 %"].append(dist(fp, fp_of_deltas({n: noise(v, 0.5, rng) for n, v in d.items()}, params),
                                               params))
            tuned = finetune(core, d, 100, 1e-4, rng, decay=1.0)
            attacked["fine-tune 100 steps"].append(dist(fp, fingerprint.fingerprint_factors(tuned, params), params))
    other = [dist(a[1], b[1], params) for (i, ra), (j, rb) in itertools.combinations(enumerate(issued), 2)
             for a in ra for b in rb]
    other_unmarked = [dist(a, b, params) for a, b in itertools.combinations(unmarked, 2)]
    print(f"\nfingerprint distances, tiny fixture, financial task, {args.seeds} seeds × {args.steps} steps, "
          f"{args.payloads} issuances each (plain τ = 3)")
    summary("same core: issuance vs issuance", siblings)
    summary("same core: issuance vs the unmarked core", to_unmarked)
    for k, v in attacked.items():
        summary(f"same core, attacked ({k}) vs its issuance", v)
    summary("same task, other seed: issuance vs issuance", other)
    summary("same task, other seed: unmarked vs unmarked", other_unmarked)
    t = args.threshold
    fm = sum(d <= t for d in other) / len(other)
    print(f"threshold {t}: false-match rate on other-seed issuances {fm:.4f} ({sum(d <= t for d in other)} of "
          f"{len(other)}); attacked copies accepted "
          + ", ".join(f"{k} {sum(d <= t for d in v)}/{len(v)}" for k, v in attacked.items()))
    near_other = min(other)
    print(f"lineage link: max same-core distance {max(siblings):.3f}, min other-seed distance {near_other:.3f}")
    print(f"{time.perf_counter() - t_start:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
