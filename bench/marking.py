"""Marking benchmarks: embed/extract times, lazy read-out vs full load, chaos throughput, attack sweeps.

`./run bench marking [--big-layers 16] [--skip-big] [--seeds 5]`

1. Chaos FSM throughput against plain ChaCha20 (cryptography), same run.
2. A rank-16 core on the fixture-shaped config (q/v of 4 layers, hidden 128) and on a ~1.2B-parameter
   Llama-shaped config (hidden 2048, 16 layers, GQA 32/8 heads, intermediate 8192, vocab 128256,
   random bf16 weights): embed time, extraction from factors, and extraction from a merged model
   that reads only the marked tensors lazily from safetensors (suspect + backbone), against loading
   the whole suspect file (safetensors.torch.load_file) in the same run; both warm (page cache).
3. Attack sweeps on fixture-shaped random cores (several seeds): where each attack starts breaking
   the watermark (payload decoded and accepted) and the fingerprint (match).
4. With --fidelity: the fixture task (fixtures/tiny-llama, financial) on the committed recipe core
   (fixtures/cores/financial-lora.safetensors, or `--fidelity-core train`): accuracy by answer
   likelihood and mean answer loss on the test split, marked (plain and input-aware, several τ) vs
   unmarked, attacks on the merged weights, and real further fine-tuning at several learning rates.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from safetensors.torch import load as st_load_torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the test kit: cores and attacks shared with tests/marking
from _util import timed  # noqa: E402

from _kit.cores import (  # noqa: E402
    DELTA_RMS,
    FIXTURE_DIMS,
    W_RMS,
    bf16,
    finetune,
    fp16,
    int_rows,
    make_params,
    noise,
    prune,
    random_core,
    refactorise,
)
from emshield.marking import ecc, fingerprint, watermark  # noqa: E402
from emshield.marking.chaos import ChaosStream  # noqa: E402
from emshield.marking.cli import LazyTensors  # noqa: E402

PAYLOAD = 0x5EED0000BEEF


def chaos_throughput() -> None:
    n = 2_000_000
    t_chaos, _ = timed(lambda: ChaosStream(bytes(32), "bench", "layer", "throughput").words(n), 3)
    enc = Cipher(algorithms.ChaCha20(bytes(32), bytes(16)), mode=None).encryptor()
    t_chacha, _ = timed(lambda: np.frombuffer(enc.update(bytes(8 * n)), dtype="<u8"), 3)
    print("== chaos FSM throughput (64-bit words)")
    print(f"chaos FSM : {n / t_chaos / 1e6:8.2f} Mwords/s  {8 * n / t_chaos / 1e6:8.1f} MB/s")
    print(f"ChaCha20  : {n / t_chacha / 1e6:8.2f} Mwords/s  {8 * n / t_chacha / 1e6:8.1f} MB/s")
    print(f"ratio chaos/ChaCha20: {t_chacha / t_chaos:.4f}x")


def core_timings(name: str, dims: list[tuple[int, int]], names: list[str], rank: int) -> tuple:
    rng = np.random.default_rng(1)
    params = make_params(dims, names)
    core = dict(zip(names, random_core(rng, dims, rank, DELTA_RMS).values()))
    watermark.directions.cache_clear()
    t_dirs, _ = timed(lambda: [watermark.directions(params, lay) for lay in params.layers])
    t_embed, (marked, report) = timed(lambda: watermark.embed(core, PAYLOAD, params))
    t_ex, ex = timed(lambda: watermark.extract_from_factors(marked, params), 3)
    t_fp, _ = timed(lambda: fingerprint.fingerprint_factors(marked, params), 3)
    assert ex.payload == PAYLOAD and ex.accepted
    print(f"== {name}: {len(dims)} marked layers, rank {rank}, {params.code_bits} code bits")
    print(f"directions (chaos FSM, cold)   {t_dirs:8.3f} s")
    print(f"embed (directions warm)        {t_embed:8.3f} s  ({report.iterations} Gauss-Newton steps, "
          f"max ΔW change {max(report.relative_change.values()):.3f}, margin {report.min_margin:.2f})")
    print(f"extract from factors           {t_ex * 1000:8.1f} ms")
    print(f"fingerprint from factors       {t_fp * 1000:8.1f} ms")
    return params, marked


def llama_1b(layers: int) -> dict[str, tuple[int, ...]]:
    h, kv, inter, vocab = 2048, 512, 8192, 128256
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        }
    return shapes


def big_model(layers: int) -> None:
    shapes = llama_1b(layers)
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    names = [n for n in shapes if n.endswith(("q_proj.weight", "v_proj.weight"))]
    dims = [shapes[n] for n in names]
    params, marked = core_timings(f"~{n_params / 1e9:.2f}B-parameter Llama-shaped config", dims, names, 16)
    with tempfile.TemporaryDirectory() as tmp:
        g = torch.Generator().manual_seed(0)
        backbone = {n: (torch.randn(s, generator=g) * W_RMS).to(torch.bfloat16) for n, s in shapes.items()}
        save_file(backbone, f"{tmp}/backbone.safetensors")
        for n in names:
            backbone[n] = (backbone[n].double() + torch.from_numpy(marked[n].delta())).to(torch.bfloat16)
        save_file(backbone, f"{tmp}/suspect.safetensors")
        size = Path(f"{tmp}/suspect.safetensors").stat().st_size
        del backbone
        for f in ("suspect", "backbone"):  # warm the page cache for both files
            Path(f"{tmp}/{f}.safetensors").read_bytes()

        suspect_path, backbone_path = Path(f"{tmp}/suspect.safetensors"), Path(f"{tmp}/backbone.safetensors")
        t_bytes, _ = timed(lambda: len(suspect_path.read_bytes()), 3)
        t_full, _ = timed(lambda: st_load_torch(suspect_path.read_bytes()), 3)
        t_mmap, _ = timed(lambda: load_file(str(suspect_path)), 3)

        def lazy_read() -> None:
            with LazyTensors(suspect_path) as s, LazyTensors(backbone_path) as b:
                for n in names:
                    s.get(n), b.get(n)

        def lazy_extract() -> watermark.Extraction:
            with LazyTensors(suspect_path) as s, LazyTensors(backbone_path) as b:
                return watermark.extract_from_deltas(lambda n: s.get(n) - b.get(n), params)

        t_read, _ = timed(lazy_read, 3)
        t_lazy, ex = timed(lazy_extract, 3)
        assert ex.accepted and ex.payload == PAYLOAD, ex.reason
        read_bytes = sum(2 * int(np.prod(d)) for d in dims) * 2
        print(f"suspect file {size / 1e9:.2f} GB bf16; extraction reads {read_bytes / 1e9:.3f} GB (suspect + backbone)")
        print(f"read whole suspect file (warm)        {t_bytes:8.3f} s   (I/O floor of a full load)")
        print(f"load whole suspect, materialised      {t_full:8.3f} s   (safetensors.torch.load of the bytes) <- baseline")
        print(f"safetensors.torch.load_file (mmap)    {t_mmap:8.3f} s   (lazy: pages are read on first touch)")
        print(f"lazy read of marked tensors only      {t_read:8.3f} s")
        print(f"lazy extract from merged (warm)       {t_lazy:8.3f} s   bit errors {ex.bit_errors}")
        print(f"ratio lazy extract / full load: {t_lazy / t_full:.3f}x (target <= 0.5x); "
              f"vs raw read of the file {t_lazy / t_bytes:.3f}x")


def sweep(seeds: int) -> None:
    print(f"== attack sweeps, fixture-shaped random cores (rank 8, {seeds} seeds): "
          "watermark ok = payload accepted; fp ok = fingerprint match")
    params = make_params(FIXTURE_DIMS)
    rows: dict[str, list[tuple[bool, int, float, bool]]] = {}
    for seed in range(seeds):
        rng = np.random.default_rng(100 + seed)
        core = random_core(rng, FIXTURE_DIMS, 8, DELTA_RMS)
        marked, report = watermark.embed(core, PAYLOAD, params)
        published = fingerprint.fingerprint_factors(marked, params)
        back = {k: (rng.standard_normal(f.shape) * W_RMS).astype(np.float32) for k, f in core.items()}
        merged = {k: back[k] + marked[k].delta().astype(np.float32) for k in marked}
        attacks: dict[str, object] = {
            "re-factorised": {k: refactorise(f, rng) for k, f in marked.items()},
            "merged bf16": {k: bf16(w).astype(np.float64) - bf16(back[k]) for k, w in merged.items()},
            "merged fp16": {k: fp16(w).astype(np.float64) - fp16(back[k]) for k, w in merged.items()},
        }
        for bits in (8, 6, 5, 4):
            attacks[f"merged int{bits}"] = {k: int_rows(w, bits).astype(np.float64) - back[k] for k, w in merged.items()}
        for frac in (0.5, 0.7, 0.8, 0.9, 0.95, 0.98):
            attacks[f"prune {frac:.0%}"] = {k: prune(f.delta(), frac) for k, f in marked.items()}
        for level in (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0):
            attacks[f"noise {level:.0%} std"] = {k: noise(f.delta(), level, rng) for k, f in marked.items()}
        task = {k: f.delta() for k, f in core.items()}
        for decay in (0.0, 1.0):
            for lr in (1e-5, 1e-4, 3e-4, 1e-3):
                attacks[f"finetune 100 lr {lr:g} decay {decay:g}"] = finetune(marked, task, 100, lr, rng, decay=decay)
        for name, attacked in attacks.items():
            first = next(iter(attacked.values()))
            if isinstance(first, np.ndarray):
                ex = watermark.extract_from_deltas(attacked, params)
                fp = fingerprint.fingerprint_deltas(attacked, params)
            else:
                ex = watermark.extract_from_factors(attacked, params)
                fp = fingerprint.fingerprint_factors(attacked, params)
            ok = ex.accepted and ex.payload == PAYLOAD
            errors = int(np.sum(ex.bits != (report.signs > 0)))
            cmp = fingerprint.compare(published, fp, params)
            rows.setdefault(name, []).append((ok, errors, float(np.min(ex.z * report.signs)), cmp.match, cmp.distance))
    print(f"{'attack':<34}{'wm ok':>7}{'raw bit err':>12}{'min margin':>12}{'fp ok':>7}{'fp dist':>9}")
    for name, vals in rows.items():
        ok = sum(v[0] for v in vals)
        print(f"{name:<34}{ok:>4}/{len(vals):<2}{np.mean([v[1] for v in vals]):>12.1f}"
              f"{np.min([v[2] for v in vals]):>12.2f}{sum(v[3] for v in vals):>4}/{len(vals):<2}"
              f"{np.max([v[4] for v in vals]):>9.4f}")


# The 10 key/payload pairs of spec/watermark.md's fidelity tables: zero secret with PAYLOAD and the
# six rng(11) payloads, and the test secret 00…1f with the fixture test's three payloads.
POLICY_PAIRS = [(bytes(32), p) for p in (PAYLOAD, 0x20E9FA102240, 0x7FD0AC8ACC0D, 0x99FBCBDE970C, 0x075829B0B650,
                                         0x25DE7BDF7C49, 0xED9F3CD366C8)] + \
    [(bytes(range(32)), p) for p in (PAYLOAD, 0x99FBCBDE970C, 0x123456789ABC)]


def policy_table(core: dict, bid: str, layers: tuple, task_eval, moments: dict, backbone: str,
                 train_records: list, ft_lr: float, ft_steps: int, both_tiers: bool = False) -> None:
    """policy.mark with its embedding candidates over POLICY_PAIRS; the kept marks fine-tuned at ft_lr.

    ``both_tiers``: every issuance also carries the secret tier (detection key of the pair's secret,
    the payload's 6 bytes padded as device UUID, salt zero), embedded jointly."""
    from emshield.marking import policy
    from emshield.marking import secret as secret_tier
    from emshield.marking.params import MarkingParams, verification_key
    from emshield.model.taskeval import delta_drift, finetune_core

    print(f"== policy over {len(POLICY_PAIRS)} key/payload pairs{' with the secret tier' if both_tiers else ''}, "
          f"candidates in order: {', '.join(c.name for c in policy.CANDIDATES)}; kept marks fine-tuned "
          f"{ft_steps} steps at lr {ft_lr:g}")
    met, baseline_met = 0, 0
    for secret, payload in POLICY_PAIRS:
        params = MarkingParams(bid, verification_key(secret, bid), layers)
        dk = secret_tier.detection_key(secret, bid, payload.to_bytes(16, "big"), bytes(16)) if both_tiers else None
        t_mark, res = timed(lambda: policy.mark(core, payload, params, policy.Tolerance(), task_eval=task_eval,
                                                input_moments=moments, detection=dk))
        r = res.record
        key = "zero" if secret == bytes(32) else "test"
        baseline_met += r.embedding == policy.CANDIDATES[0].name  # the first candidate alone met it
        print(f"{key} {payload:012x}: {r.mode:<11} {r.embedding or '-':<22} ({t_mark:.0f} s) "
              + (f"secret tau {r.secret_tau:g} score {r.secret_score:.2f} " if r.secret_score is not None else "")
              + "tried: " + "; ".join(r.candidates_tried))
        if r.mode != policy.MODE_BOTH:
            continue
        met += 1
        if not ft_steps:
            continue
        signs = ecc.encode(payload, params.rs_nsym).astype(np.float64) * 2 - 1
        tuned = finetune_core(backbone, res.core, train_records, ft_steps, ft_lr)
        ex = watermark.extract_from_factors(tuned, params)
        acc, loss = task_eval(tuned)
        held = f", secret score {secret_tier.presence_from_factors(tuned, dk.key, params).score:.2f}" if dk else ""
        print(f"    fine-tuned: payload {'decoded' if ex.accepted and ex.payload == payload else 'LOST'}, raw bit "
              f"errors {int(np.sum((ex.z > 0) != (signs > 0)))}, min b·z {float(np.min(signs * ex.z)):.2f}{held}, "
              f"ΔW drift {delta_drift(res.core, tuned):.3f}, accuracy {acc:.4f} loss {loss:.4f}", flush=True)
    print(f"within both targets: {met}/{len(POLICY_PAIRS)} with the candidate list, "
          f"{baseline_met}/{len(POLICY_PAIRS)} with the first candidate alone")


def fidelity(core_path: str | None, steps: int, variants: list[tuple[bool, float]], lrs: list[float],
             ft_steps: int, payloads: list[int], policy_ft_lr: float | None = None, both_tiers: bool = False) -> None:
    """Marked vs unmarked accuracy and loss on the fixture task, and real further fine-tuning."""
    from emshield.marking import policy
    from emshield.marking.params import LayerSpec, MarkingParams, verification_key
    from emshield.model.adapter import load_core
    from emshield.model.datasets import load_dataset
    from emshield.model.io import backbone_id
    from emshield.model.taskeval import TaskModel, delta_drift, finetune_core
    from emshield.model.train import TrainConfig, train

    backbone = str(ROOT / "fixtures" / "tiny-llama")
    recipe = TrainConfig.from_yaml(ROOT / "fixtures/recipes/financial-lora.yaml")
    train_records = load_dataset(ROOT / "fixtures/data/financial-train.json")
    if core_path is None:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(**{**recipe.__dict__, "output_dir": tmp, "max_steps": steps})
            t_train, res = timed(lambda: train(cfg, progress=False))
            core = load_core(res.core_path)
        print(f"trained {res.steps} steps in {t_train:.0f} s, loss {res.first_loss:.3f} -> {res.final_loss:.3f}")
    else:
        core = load_core(core_path)
    tm = TaskModel.load(backbone)
    test = load_dataset(ROOT / "fixtures/data/financial-test.json")
    task_eval = tm.evaluator(test)
    tm.use(None)
    bare = task_eval({})
    acc0, loss0 = task_eval(core)
    bid = backbone_id(backbone)
    layers = tuple(LayerSpec(n, *core[n].shape) for n in sorted(core))
    moments = tm.input_moments(core, train_records[:200])
    rank = next(iter(core.values())).rank
    if policy_ft_lr is not None:
        print(f"unmarked core: accuracy {acc0:.4f}, loss {loss0:.4f}")
        policy_table(core, bid, layers, task_eval, moments, backbone, train_records, policy_ft_lr, ft_steps, both_tiers)
        return
    print(f"== fidelity on the fixture task: {len(layers)} layers, rank {rank}, {len(test)} test records "
          f"(balanced); bare backbone {bare[0]:.4f}, unmarked core {acc0:.4f} (loss {loss0:.4f}); tolerance "
          f"0.5 pp accuracy, 1 % loss; input moments from 200 train records")
    print(f"{'mode':>12}{'bits':>5}{'tau':>5}{'policy':>12}{'ΔW chg':>8}{'out chg':>8}{'acc mark':>9}"
          f"{'Δacc pp':>8}{'loss mark':>10}{'Δloss %':>8}")
    marked_cores = []
    for aware, tau in variants:
        params = MarkingParams(bid, verification_key(bytes(32), bid), layers, tau_milli=round(tau * 1000))
        mom = moments if aware else None
        try:
            marked, report = watermark.embed(core, PAYLOAD, params, mom)
        except watermark.CapacityError as exc:
            print(f"{'input-aware' if aware else 'plain':>12}{params.code_bits:>5}{tau:>5} refused: {exc}")
            continue
        acc1, loss1 = task_eval(marked)
        verdict = policy.MODE_BOTH if 100 * (acc0 - acc1) <= 0.5 and (loss1 - loss0) / loss0 <= 0.01 else policy.MODE_FINGERPRINT
        out_chg = max(report.relative_output_change.values()) if report.relative_output_change else float("nan")
        print(f"{'input-aware' if aware else 'plain':>12}{params.code_bits:>5}{tau:>5}{verdict:>12}"
              f"{max(report.relative_change.values()):>8.3f}{out_chg:>8.3f}{acc1:>9.4f}{100 * (acc1 - acc0):>8.2f}"
              f"{loss1:>10.4f}{100 * (loss1 - loss0) / loss0:>8.2f}")
        if verdict == policy.MODE_BOTH:
            marked_cores.append((aware, tau, params, marked))
    if not marked_cores:
        print("no variant met the fidelity target: no robustness run")
        return
    aware, tau, params, kept = marked_cores[0]
    print(f"== the {'input-aware' if aware else 'plain'} τ={tau} mark with other payloads (fidelity spread)")
    for payload in payloads:
        other = watermark.embed(core, payload, params, moments if aware else None)[0]
        acc1, loss1 = task_eval(other)
        print(f"payload {payload:012x}: accuracy {acc1:.4f} ({100 * (acc1 - acc0):+.2f} pp), "
              f"loss {loss1:.4f} ({100 * (loss1 - loss0) / loss0:+.2f} %)")
    print(f"== robustness of the {'input-aware' if aware else 'plain'} τ={tau} mark on the fixture core")
    rng = np.random.default_rng(3)
    back = {k: tm.original[k].double().numpy() for k in kept}
    merged = {k: (back[k] + kept[k].delta()).astype(np.float32) for k in kept}
    attacks = {
        "merged bf16": {k: bf16(w).astype(np.float64) - bf16(back[k].astype(np.float32)) for k, w in merged.items()},
        "merged int8 (per row)": {k: int_rows(w, 8).astype(np.float64) - back[k] for k, w in merged.items()},
        "prune 50% of ΔW": {k: prune(f.delta(), 0.5) for k, f in kept.items()},
        "noise 10% of ΔW std": {k: noise(f.delta(), 0.1, rng) for k, f in kept.items()},
    }
    for name, deltas in attacks.items():
        ex = watermark.extract_from_deltas(deltas, params)
        print(f"{name:<34} payload ok {ex.accepted and ex.payload == PAYLOAD}  raw bit errors {ex.bit_errors}")
    print(f"== {ft_steps} further fine-tuning steps (peft LoRA from the marked core, fresh AdamW, constant lr, "
          f"batch 8); the core was trained at peak lr {recipe.lr:g} ({recipe.schedule}, {recipe.warmup_steps} warm-up)")
    print(f"{'mark':>16}{'lr':>8}{'lr/train':>9}{'payload':>9}{'bit err':>8}{'min b·z':>8}{'ΔW drift':>9}"
          f"{'acc':>8}{'loss':>8}{'s':>6}")
    for aware, tau, params, marked in marked_cores:
        for lr in lrs:
            t_ft, tuned = timed(lambda lr=lr, marked=marked: finetune_core(backbone, marked, train_records, ft_steps, lr))
            ex = watermark.extract_from_factors(tuned, params)
            signs = ecc.encode(PAYLOAD, params.rs_nsym).astype(np.float64) * 2 - 1
            acc, loss = task_eval(tuned)
            print(f"{('ia' if aware else 'plain') + f' τ={tau:g}':>16}{lr:>8.0e}{lr / recipe.lr:>9.2f}"
                  f"{str(ex.accepted and ex.payload == PAYLOAD):>9}{int(np.sum((ex.z > 0) != (signs > 0))):>8}"
                  f"{float(np.min(signs * ex.z)):>8.2f}{delta_drift(marked, tuned):>9.3f}{acc:>8.4f}{loss:>8.4f}"
                  f"{t_ft:>6.0f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-layers", type=int, default=16, help="decoder layers of the ~1B config")
    ap.add_argument("--skip-big", action="store_true", help="skip the ~1B config (needs ~6 GB disk, ~8 GB RAM)")
    ap.add_argument("--seeds", type=int, default=5, help="random cores per attack sweep (0: no sweep)")
    ap.add_argument("--fidelity", action="store_true", help="fixture-task fidelity (trains a core: minutes)")
    ap.add_argument("--fidelity-core", default=str(ROOT / "fixtures/cores/financial-lora.safetensors"),
                    help="trained core file (default: the committed recipe core); 'train' trains one")
    ap.add_argument("--fidelity-steps", type=int, default=625, help="training steps with --fidelity-core train")
    ap.add_argument("--variants", default="plain:2,plain:3,plain:4,ia:3",
                    help="embeddings to measure, mode:τ (plain or ia = input-aware); those meeting the "
                         "fidelity target are fine-tuned")
    ap.add_argument("--lrs", default="2e-4,6e-4,2e-3", help="fine-tuning learning rates")
    ap.add_argument("--ft-steps", type=int, default=100, help="further fine-tuning steps")
    ap.add_argument("--payloads", type=int, default=4, help="other random payloads for the fidelity spread")
    ap.add_argument("--policy", action="store_true",
                    help="with --fidelity: only the policy (embedding candidates) over the 10 key/payload pairs, "
                         "kept marks fine-tuned --ft-steps at --policy-lr (0 steps: no fine-tuning)")
    ap.add_argument("--policy-lr", type=float, default=2e-3, help="fine-tuning rate for --policy (the training lr)")
    ap.add_argument("--secret-tier", action="store_true",
                    help="with --policy: every issuance also carries the secret tier (spec/watermark.md)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    chaos_throughput()
    names = [f"model.layers.{i // 2}.self_attn.{'qv'[i % 2]}_proj.weight" for i in range(len(FIXTURE_DIMS))]
    core_timings("fixture-shaped config", FIXTURE_DIMS, names, 16)
    if not args.skip_big:
        big_model(args.big_layers)
    if args.seeds:
        sweep(args.seeds)
    if args.fidelity:
        fidelity(None if args.fidelity_core == "train" else args.fidelity_core, args.fidelity_steps,
                 [(v.split(":")[0] == "ia", float(v.split(":")[1])) for v in args.variants.split(",")],
                 [float(x) for x in args.lrs.split(",") if x], args.ft_steps,
                 [int(x) for x in np.random.default_rng(11).integers(0, 1 << 48, args.payloads)],
                 args.policy_lr if args.policy else None, args.secret_tier)


if __name__ == "__main__":
    main()
