"""Secret tier (spec/watermark.md, "Secret tier"): collusion, false accusation, public-mark stripping
and tracing cost, on random cores of the fixture core's shapes (28 layers of 128×128 / 64×128, r 8).

`.venv/bin/python bench/secret_tier.py [--issuances 50] [--coalitions 200] [--foreign 1000]
[--trace 10000] [--subset 200] [--trace-only]`. Library level: the cores are random (no task model), so attack strengths are
stated as fractions of ΔW, not as task accuracy; the fixture-task fidelity of both tiers is
`bench/marking.py --fidelity --policy --secret-tier`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the test kit: cores and attacks shared with tests/marking

from _kit.cores import DELTA_RMS, int_rows, make_params, noise, prune, random_core, strip_public  # noqa: E402
from emshield.marking import batched, secret, watermark  # noqa: E402

DIMS = [(128, 128), (64, 128)] * 14
ISSUER = bytes(range(32))


def key(j: int, salt: int = 0) -> bytes:
    return secret.detection_key(ISSUER, "test-backbone", j.to_bytes(16, "big"), salt.to_bytes(16, "big")).key


def issue(n: int, params, rng) -> tuple[dict, list[bytes], list[dict]]:
    core = random_core(rng, DIMS, 8, DELTA_RMS)
    keys, deltas = [], []
    for j in range(n):
        k = key(j)
        marked, _ = watermark.embed(core, int(rng.integers(0, 1 << 48)), params, extra=secret.directions(k, params))
        keys.append(k)
        deltas.append({name: f.delta() for name, f in marked.items()})
    return core, keys, deltas


def collusion(params, keys, deltas, coalitions: int, rng) -> None:
    names = [lay.name for lay in params.layers]
    print(f"== collusion: {coalitions} random coalitions per size and attack among {len(keys)} issuances of one core; "
          f"named: T ≥ {secret.NAME_THRESHOLD:.3f} (p ≤ {secret.NAME_ALPHA:g} per innocent)")
    print(f"{'size':>4} {'attack':<22}{'caught':>8}{'innocents':>10}{'min best T':>11}{'max innocent T':>15}")
    for size in (2, 3):
        for attack in ("average", "weighted (Dirichlet)", "interleave layers"):
            caught, innocents, best, worst_innocent = 0, 0, [], -np.inf
            for _ in range(coalitions):
                c = rng.choice(len(keys), size, replace=False)
                if attack == "interleave layers":
                    pick = rng.integers(0, size, len(names))
                    suspect = {n: deltas[c[pick[i]]][n] for i, n in enumerate(names)}
                else:
                    w = np.ones(size) / size if attack == "average" else rng.dirichlet(np.ones(size))
                    suspect = {n: sum(wi * deltas[ci][n] for wi, ci in zip(w, c)) for n in names}
                t = batched.scores(suspect, keys, params)
                inn = np.ones(len(keys), bool)
                inn[c] = False
                caught += bool(np.any(t[c] >= secret.NAME_THRESHOLD))
                innocents += int(np.sum(t[inn] >= secret.NAME_THRESHOLD))
                best.append(float(np.max(t[c])))
                worst_innocent = max(worst_innocent, float(np.max(t[inn])))
            print(f"{size:>4} {attack:<22}{caught:>5}/{coalitions:<3}{innocents:>9}{min(best):>11.2f}{worst_innocent:>15.2f}",
                  flush=True)


def false_accusation(params, core, deltas, foreign: int) -> None:
    keys = [key(100_000 + j, salt=1) for j in range(foreign)]
    t0 = time.perf_counter()
    t = np.concatenate([batched.scores({n: f.delta() for n, f in core.items()}, keys, params),
                        batched.scores(deltas[0], keys, params)])
    p = np.array([secret.p_value(x) for x in t])
    print(f"== false accusation: {foreign} keys not used on the core × (unmarked core, another issuance's core) = "
          f"{len(t)} scores ({time.perf_counter() - t0:.1f} s)")
    print(f"named: {int(np.sum(p <= secret.NAME_ALPHA))}; max T {np.max(t):.2f}; mean T {np.mean(t):+.3f}, "
          f"std {np.std(t):.3f} (Hoeffding bound: P(T ≥ t) ≤ exp(−t²/2))")
    print("  α      P(p ≤ α) observed")
    for alpha in (0.5, 0.2, 0.1, 0.05, 0.01, 0.001):
        print(f"  {alpha:<6g} {np.mean(p <= alpha):.4f}")


def stripping(params, keys, deltas, rng) -> None:
    owner = 1
    d = deltas[owner]
    stripped = {lay.name: strip_public(d[lay.name], params, i) for i, lay in enumerate(params.layers)}
    change = np.sqrt(sum(np.sum((stripped[n] - d[n]) ** 2) for n in d) / sum(np.sum(d[n] ** 2) for n in d))
    print(f"== stripping (owner = issuance {owner}; the adversary knows the published parameters, not S): the public "
          f"statistics zeroed by the smallest change ({100 * change:.1f} % of ΔW), then blind attacks")
    print(f"{'attack':<40}{'public max |z|':>15}{'owner T':>9}{'named':>7}{'max innocent T':>15}")
    attacks = {"public mark stripped": stripped}
    for level in (0.5, 1.0, 2.0):
        attacks[f"stripped + noise {level:g}× ΔW std"] = {n: noise(x, level, rng) for n, x in stripped.items()}
    for frac in (0.5, 0.8, 0.9):
        attacks[f"stripped + prune {int(100 * frac)} %"] = {n: prune(x, frac) for n, x in stripped.items()}
    w = 0.02 * rng.standard_normal((128, 128))
    attacks["stripped + merged int8 rows"] = {
        n: int_rows((w[: x.shape[0]] + x).astype(np.float32), 8).astype(np.float64) - w[: x.shape[0]].astype(np.float32)
        for n, x in stripped.items()}
    for name, suspect in attacks.items():
        z = watermark.extract_from_deltas(suspect, params).z
        t = batched.scores(suspect, keys, params)
        others = np.delete(t, owner)
        print(f"{name:<40}{np.max(np.abs(z)):>15.2f}{t[owner]:>9.2f}{str(bool(t[owner] >= secret.NAME_THRESHOLD)):>7}"
              f"{np.max(others):>15.2f}", flush=True)


def numpy_products(suspect: dict, keys: list[bytes], params) -> tuple[np.ndarray, float]:
    """The baseline: the products batched.scores had before (float32 direction rows, numpy matrix
    products through OpenBLAS) on the same streams; the scores and the seconds of products alone."""
    spent = {"keys": 0.0, "words": 0.0}
    total, square = np.zeros(len(keys)), np.zeros(len(keys))
    t0 = time.perf_counter()
    for layer, rows, u, v in batched.stacked_directions(keys, params, spent):
        delta = np.asarray(suspect[layer.name], dtype=np.float32)
        sigma = float(np.linalg.norm(delta.astype(np.float64).ravel()) / np.sqrt(delta.size))
        z = (np.einsum("ij,ij->i", u @ delta, v).astype(np.float64) / sigma).reshape(rows.size, secret.STATISTICS)
        total[rows] += z.sum(axis=1)
        square[rows] += (z * z).sum(axis=1)
    return total / np.sqrt(square), time.perf_counter() - t0 - spent["keys"] - spent["words"]


def _parts(seconds_keys: float, setup: float, words: float, products: float) -> str:
    return (f"{seconds_keys + setup + words + products:.1f} s = detection keys {seconds_keys:.2f} s + stream set-up "
            f"{setup:.2f} s + words {words:.2f} s + signs and products {products:.2f} s")


def trace_cost(n: int, dims: list[tuple[int, int]], label: str, subset: int) -> None:
    params = make_params(dims)
    rng = np.random.default_rng(1)
    suspect = {lay.name: 1e-3 * rng.standard_normal((lay.out_features, lay.in_features)).astype(np.float32)
               for lay in params.layers}
    t0 = time.perf_counter()
    keys = [key(j, salt=7) for j in range(n)]
    t_keys = time.perf_counter() - t0
    keyed = min(len(dims), secret.MAX_LAYERS)
    flops = 2.0 * n * secret.STATISTICS * keyed * float(np.mean([m * k for m, k in dims]))  # u·ΔW, roughly
    print(f"trace {label}: {n} issuances × {keyed} keyed layers × {secret.STATISTICS} pairs (≈ {flops / 1e9:.0f} GFLOP "
          f"of products at float32; {batched.DIGITS}× that in int8 digits)", flush=True)
    prof: dict[str, float] = {}
    t0 = time.perf_counter()
    got = batched.scores(suspect, keys, params, profile=prof)
    t_after = t_keys + time.perf_counter() - t0
    print(f"  after (batched.scores: {batched.DIGITS} int8 digits on {batched.PRODUCT_WORKERS} product workers while "
          f"this thread draws words): {_parts(t_keys, prof['keys'], prof['words'], prof['products'])}", flush=True)
    # the baseline: the same streams alone (all keys), then numpy products on a subset, extrapolated linearly
    alone = {"keys": 0.0, "words": 0.0}
    for _ in batched._stacked_words(keys, params, alone):
        pass
    base = keys[:subset]
    before, t_numpy = numpy_products(suspect, base, params)
    t_before = t_keys + alone["keys"] + alone["words"] + t_numpy * n / len(base)
    print(f"  before (numpy float32 products on the same streams; streams drawn alone for all {n}, products timed on "
          f"{len(base)} and extrapolated): {_parts(t_keys, alone['keys'], alone['words'], t_numpy * n / len(base))} "
          f"→ after ×{t_before / t_after:.1f} faster", flush=True)
    prof2: dict[str, float] = {}
    t0 = time.perf_counter()
    got2 = batched.scores(suspect, keys, params, profile=prof2, digits=2)
    t_two = t_keys + time.perf_counter() - t0
    sub = keys[:max(subset // 4, 1)]
    secret.directions.cache_clear()
    t0 = time.perf_counter()
    single = np.array([secret.presence(watermark.extra_terms_from_deltas(suspect, secret.directions.__wrapped__(k, params))).score
                       for k in sub])
    t_single = (time.perf_counter() - t0) * n / len(sub)
    print(f"  one read-out per issuance (presence_from_deltas, the statistic of record; {len(sub)} timed, extrapolated): "
          f"{t_single:.1f} s → after ×{t_single / t_after:.1f} faster")
    print(f"  max |T − T_single| over those {len(sub)}: after {np.max(np.abs(got[:len(sub)] - single)):.1e} (stated bound "
          f"{batched.SCORE_ERROR:g}); numpy baseline {np.max(np.abs(before[:len(sub)] - single)):.1e}; 2 digits "
          f"{np.max(np.abs(got2[:len(sub)] - single)):.1e} in {t_two:.1f} s (words {prof2['words']:.2f} s + products "
          f"{prof2['products']:.2f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--issuances", type=int, default=50)
    ap.add_argument("--coalitions", type=int, default=200)
    ap.add_argument("--foreign", type=int, default=1000)
    ap.add_argument("--trace", type=int, default=10_000, help="issuances for the trace cost (0: skip)")
    ap.add_argument("--subset", type=int, default=200, help="issuances the numpy baseline is timed on (a quarter of "
                    "them: the single read-out)")
    ap.add_argument("--trace-only", action="store_true", help="skip collusion, false accusation and stripping")
    args = ap.parse_args()
    if not args.trace_only:
        rng = np.random.default_rng(17)
        params = make_params(DIMS)
        t0 = time.perf_counter()
        core, keys, deltas = issue(args.issuances, params, rng)
        print(f"issued one random core ({len(DIMS)} layers, r 8) to {args.issuances} devices with both tiers "
              f"({time.perf_counter() - t0:.0f} s)")
        collusion(params, keys, deltas, args.coalitions, rng)
        false_accusation(params, core, deltas, args.foreign)
        stripping(params, keys, deltas, rng)
    if args.trace:
        threads = os.environ.get("OPENBLAS_NUM_THREADS", f"unset (OpenBLAS default: {os.cpu_count()} cores)")
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"== trace cost (one suspect, dense ΔW; OPENBLAS_NUM_THREADS {threads}; load average {load})")
        trace_cost(args.trace, DIMS, "fixture shapes (28 layers)", args.subset)
        trace_cost(args.trace, [(576, 576), (192, 576)] * 30, "SmolLM2 q/v shapes (60 layers)", args.subset)

if __name__ == "__main__":
    main()
