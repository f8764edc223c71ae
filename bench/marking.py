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
4. With --fidelity: the fixture task (fixtures/tiny-llama, financial). Trains a LoRA core (or takes
   --fidelity-core), then runs the marking policy with the task evaluation (accuracy by answer
   likelihood and mean answer loss on the test split) at several code sizes and margins.
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
sys.path.insert(0, str(ROOT / "tests" / "marking"))
from marking_helpers import (  # noqa: E402
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

from _util import timed  # noqa: E402

from emshield.marking import fingerprint, watermark  # noqa: E402
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


def fidelity(core_path: str | None, steps: int) -> None:
    """Marked vs unmarked accuracy and loss on the fixture task (needs the fixture backbone)."""
    from emshield.marking import policy
    from emshield.marking.params import LayerSpec, MarkingParams, verification_key
    from emshield.model.adapter import load_core
    from emshield.model.datasets import load_dataset
    from emshield.model.evaluate import evaluate
    from emshield.model.hf import load_causal_lm, load_tokenizer
    from emshield.model.io import backbone_id
    from emshield.model.train import TrainConfig, collate, encode, train

    backbone = str(ROOT / "fixtures" / "tiny-llama")
    if core_path is None:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(backbone=backbone, dataset=str(ROOT / "fixtures/data/financial-train.json"),
                              output_dir=tmp, max_steps=steps)
            t_train, res = timed(lambda: train(cfg, progress=False))
            core = load_core(res.core_path)
        print(f"trained {res.steps} steps in {t_train:.0f} s, loss {res.first_loss:.3f} -> {res.final_loss:.3f}")
    else:
        core = load_core(core_path)
    tok, model = load_tokenizer(backbone), load_causal_lm(backbone)
    test = load_dataset(ROOT / "fixtures/data/financial-test.json")
    original = {k: v.clone() for k, v in model.state_dict().items()}

    def task_eval(c: dict) -> tuple[float, float]:
        state = model.state_dict()
        with torch.no_grad():
            for k, v in original.items():
                state[k].copy_(v)
            for k, f in c.items():
                state[k].add_(torch.from_numpy(f.delta()).to(state[k].dtype))
            enc = [encode(tok, r, 512) for r in test]
            loss = sum(model(**collate(enc[i : i + 32], tok.pad_token_id)).loss.item() * len(enc[i : i + 32])
                       for i in range(0, len(enc), 32)) / len(enc)
        return evaluate(model, tok, test).accuracy, loss

    bid = backbone_id(backbone)
    layers = tuple(LayerSpec(n, *core[n].shape) for n in sorted(core))
    moments = input_moments(model, tok, core, load_dataset(ROOT / "fixtures/data/financial-train.json")[:200],
                            task_eval, encode, collate)
    print(f"== fidelity on the fixture task: {len(layers)} layers, rank {next(iter(core.values())).rank}, "
          f"{len(test)} test records; tolerance 0.5 pp accuracy, 1 % loss; input moments from 200 train records")
    print(f"{'mode':>12}{'bits':>5}{'tau':>5}{'policy':>12}{'ΔW chg':>8}{'out chg':>8}{'acc':>8}{'acc mark':>9}"
          f"{'loss':>8}{'loss mark':>10}")
    kept, params_kept = None, None
    for aware, nsym, tau in ((False, 10, 3000), (False, 4, 1000), (True, 10, 3000), (True, 10, 2000)):
        params = MarkingParams(bid, verification_key(bytes(32), bid), layers, rs_nsym=nsym, tau_milli=tau)
        res = policy.mark(core, PAYLOAD, params, policy.Tolerance(), task_eval, input_moments=moments if aware else None)
        if aware and tau == 3000:
            params_kept = params
        rec = res.record
        out_chg = None
        if aware and rec.mode == policy.MODE_BOTH:
            out_chg = max(watermark.embed(core, PAYLOAD, params, moments)[1].relative_output_change.values())
        fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        print(f"{'input-aware' if aware else 'plain':>12}{params.code_bits:>5}{tau / 1000:>5}{rec.mode:>12}"
              f"{fmt(rec.relative_delta_change):>8}{fmt(out_chg):>8}{fmt(rec.accuracy_unmarked):>8}"
              f"{fmt(rec.accuracy_marked):>9}{fmt(rec.loss_unmarked):>8}{fmt(rec.loss_marked):>10}  {rec.reason[:50]}")
        if aware and tau == 3000 and rec.mode == policy.MODE_BOTH:
            kept = res.core
    if kept is None or params_kept is None:
        print("input-aware mark did not fit the fixture core: no robustness run")
        return
    print("== robustness of the input-aware mark on the trained fixture core (128 bits, τ = 3)")
    rng = np.random.default_rng(3)
    back = {k: model.state_dict()[k].detach().double().numpy() for k in kept}
    merged = {k: (back[k] + kept[k].delta()).astype(np.float32) for k in kept}
    attacks = {
        "merged bf16": {k: bf16(w).astype(np.float64) - bf16(back[k].astype(np.float32)) for k, w in merged.items()},
        "merged int8 (per row)": {k: int_rows(w, 8).astype(np.float64) - back[k] for k, w in merged.items()},
        "prune 50% of ΔW": {k: prune(f.delta(), 0.5) for k, f in kept.items()},
        "noise 10% of ΔW std": {k: noise(f.delta(), 0.1, rng) for k, f in kept.items()},
    }
    for name, deltas in attacks.items():
        ex = watermark.extract_from_deltas(deltas, params_kept)
        print(f"{name:<34} payload ok {ex.accepted and ex.payload == PAYLOAD}  raw bit errors {ex.bit_errors}")
    for lr in (2e-4, 2e-3):
        t_ft, tuned = timed(lambda lr=lr: finetune_fixture(kept, 100, lr, backbone))
        ex = watermark.extract_from_factors(tuned, params_kept)
        acc, loss = task_eval(tuned)
        print(f"fine-tune 100 steps AdamW lr {lr:g} ({t_ft:.0f} s): payload ok {ex.accepted and ex.payload == PAYLOAD}, "
              f"raw bit errors {ex.bit_errors}, min |z| {np.min(np.abs(ex.z)):.2f}, task acc {acc:.4f} loss {loss:.4f}")


def finetune_fixture(core: dict, steps: int, lr: float, backbone: str) -> dict:
    """Real further fine-tuning on the fixture task: peft LoRA initialised with the core, AdamW."""
    from emshield.core import LoraFactors
    from emshield.model.datasets import load_dataset
    from emshield.model.hf import load_causal_lm, load_tokenizer
    from emshield.model.train import TrainConfig, collate, encode, lora_model

    cfg = TrainConfig(backbone=backbone, dataset=str(ROOT / "fixtures/data/financial-train.json"), output_dir="-", lr=lr)
    tok = load_tokenizer(backbone)
    model = lora_model(load_causal_lm(backbone), cfg)
    state = model.state_dict()
    keys = {}
    for name, f in core.items():
        assert abs(f.scale - cfg.alpha / cfg.rank) < 1e-9 and f.rank == cfg.rank
        stem = "base_model.model." + name.removesuffix(".weight")
        keys[name] = (f"{stem}.lora_A.default.weight", f"{stem}.lora_B.default.weight")
        with torch.no_grad():
            state[keys[name][0]].copy_(torch.from_numpy(np.asarray(f.a, dtype=np.float32)))
            state[keys[name][1]].copy_(torch.from_numpy(np.asarray(f.b, dtype=np.float32)))
    records = load_dataset(cfg.dataset)
    rng = np.random.default_rng(7)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        batch = [encode(tok, records[i], 512) for i in rng.choice(len(records), cfg.batch_size, replace=False)]
        model(**collate(batch, tok.pad_token_id)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    state = model.state_dict()
    return {n: LoraFactors(state[a].detach().numpy().copy(), state[b].detach().numpy().copy(), core[n].scale)
            for n, (a, b) in keys.items()}


def input_moments(model, tok, core: dict, records: list, load_core_into, encode, batch) -> dict[str, np.ndarray]:  # noqa: ANN001
    """E[x·xᵀ] of each marked layer's inputs over prompt+answer tokens, with the unmarked core merged."""
    load_core_into(core)  # task_eval leaves the model holding this core; its scores are not needed
    modules = dict(model.named_modules())
    sums: dict[str, list] = {}
    hooks = []
    for name in core:
        def hook(_m, inp, _out, name=name) -> None:  # noqa: ANN001
            x = inp[0].detach().double().reshape(-1, inp[0].shape[-1])
            acc = sums.setdefault(name, [0.0, 0])
            acc[0] = acc[0] + (x.T @ x).numpy()
            acc[1] += x.shape[0]
        hooks.append(modules[name.removesuffix(".weight")].register_forward_hook(hook))
    enc = [encode(tok, r, 512) for r in records]
    with torch.no_grad():
        for i in range(0, len(enc), 32):
            model(**batch(enc[i : i + 32], tok.pad_token_id))
    for h in hooks:
        h.remove()
    return {k: v[0] / v[1] for k, v in sums.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-layers", type=int, default=16, help="decoder layers of the ~1B config")
    ap.add_argument("--skip-big", action="store_true", help="skip the ~1B config (needs ~6 GB disk, ~8 GB RAM)")
    ap.add_argument("--seeds", type=int, default=5, help="random cores per attack sweep (0: no sweep)")
    ap.add_argument("--fidelity", action="store_true", help="fixture-task fidelity (trains a core: minutes)")
    ap.add_argument("--fidelity-core", help="use this trained core file instead of training one")
    ap.add_argument("--fidelity-steps", type=int, default=250)
    args = ap.parse_args()
    torch.set_num_threads(2)
    chaos_throughput()
    names = [f"model.layers.{i // 2}.self_attn.{'qv'[i % 2]}_proj.weight" for i in range(len(FIXTURE_DIMS))]
    core_timings("fixture-shaped config", FIXTURE_DIMS, names, 16)
    if not args.skip_big:
        big_model(args.big_layers)
    if args.seeds:
        sweep(args.seeds)
    if args.fidelity or args.fidelity_core:
        fidelity(args.fidelity_core, args.fidelity_steps)


if __name__ == "__main__":
    main()
