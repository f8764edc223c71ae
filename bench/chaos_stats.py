"""NIST SP 800-22 statistical tests on the chaos FSM's output beside plain ChaCha20.

`./run bench chaos_stats [--sequences 100 --bits 1000000]`

Implements (numpy only; scipy is not a dependency) the SP 800-22 rev 1a tests: frequency, block
frequency (M=128), cumulative sums (forward, backward), runs, longest run of ones (M=10^4), DFT
(spectral), approximate entropy (m=10) and serial (m=16, two p-values). Not implemented: binary
matrix rank, (non-)overlapping templates, Maurer's universal, linear complexity, random
excursions (variant). For each test it reports, per generator, the proportion of sequences with
p >= 0.01 (SP 800-22 §4.2.1: pass if within 0.99 ± 3·sqrt(0.99·0.01/m)) and the uniformity
P-value of the p-values over 10 bins (§4.2.2: pass if >= 1e-4).

Each chaos sequence i is the stream of key SHA-256("chaos-stats" ‖ i), context ("bench", "nist",
str(i)); each ChaCha20 sequence i uses key SHA-256("chacha-stats" ‖ i), nonce 0.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from emshield.marking.chaos import ChaosStream  # noqa: E402

ALPHA = 0.01


def igamc(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) (series / Lentz continued fraction)."""
    if x <= 0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(100000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 100000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(log_front) * h


def normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * np.vectorize(math.erfc)(-z / math.sqrt(2))


def frequency(bits: np.ndarray) -> float:
    s = np.sum(2 * bits.astype(np.int64) - 1)
    return math.erfc(abs(s) / math.sqrt(2 * len(bits)))


def block_frequency(bits: np.ndarray, m: int = 128) -> float:
    n = len(bits) // m
    pi = bits[: n * m].reshape(n, m).mean(axis=1)
    chi2 = 4 * m * float(np.sum((pi - 0.5) ** 2))
    return igamc(n / 2, chi2 / 2)


def cusum(bits: np.ndarray, reverse: bool) -> float:
    x = 2 * bits.astype(np.int64) - 1
    if reverse:
        x = x[::-1]
    z = float(np.max(np.abs(np.cumsum(x))))
    n = len(bits)
    k1 = np.arange(int((-n / z + 1) // 4), int((n / z - 1) // 4) + 1)
    k2 = np.arange(int((-n / z - 3) // 4), int((n / z - 1) // 4) + 1)
    sq = math.sqrt(n)
    p = 1.0
    p -= float(np.sum(normal_cdf((4 * k1 + 1) * z / sq) - normal_cdf((4 * k1 - 1) * z / sq)))
    p += float(np.sum(normal_cdf((4 * k2 + 3) * z / sq) - normal_cdf((4 * k2 + 1) * z / sq)))
    return p


def runs(bits: np.ndarray) -> float:
    n = len(bits)
    pi = float(bits.mean())
    if abs(pi - 0.5) >= 2 / math.sqrt(n):
        return 0.0
    v = 1 + int(np.sum(bits[1:] != bits[:-1]))
    return math.erfc(abs(v - 2 * n * pi * (1 - pi)) / (2 * math.sqrt(2 * n) * pi * (1 - pi)))


def longest_run(bits: np.ndarray) -> float:
    m, k = 10000, 6
    probs = np.array([0.0882, 0.2092, 0.2483, 0.1933, 0.1208, 0.0675, 0.0727])
    n = len(bits) // m
    counts = np.zeros(k + 1)
    for block in bits[: n * m].reshape(n, m):
        padded = np.concatenate([[0], block, [0]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        longest = int(np.max(edges[1::2] - edges[::2])) if len(edges) else 0
        counts[min(max(longest, 10), 16) - 10] += 1
    chi2 = float(np.sum((counts - n * probs) ** 2 / (n * probs)))
    return igamc(k / 2, chi2 / 2)


def dft(bits: np.ndarray) -> float:
    n = len(bits)
    mags = np.abs(np.fft.rfft(2.0 * bits - 1)[: n // 2])
    threshold = math.sqrt(math.log(1 / 0.05) * n)
    n0 = 0.95 * n / 2
    n1 = float(np.sum(mags < threshold))
    d = (n1 - n0) / math.sqrt(n * 0.95 * 0.05 / 4)
    return math.erfc(abs(d) / math.sqrt(2))


def _pattern_counts(bits: np.ndarray, m: int) -> np.ndarray:
    if m == 0:
        return np.array([len(bits)])
    ext = np.concatenate([bits, bits[: m - 1]]).astype(np.int64)
    vals = np.zeros(len(bits), dtype=np.int64)
    for j in range(m):
        vals = (vals << 1) | ext[j : j + len(bits)]
    return np.bincount(vals, minlength=1 << m)


def approximate_entropy(bits: np.ndarray, m: int = 10) -> float:
    n = len(bits)

    def phi(mm: int) -> float:
        c = _pattern_counts(bits, mm) / n
        c = c[c > 0]
        return float(np.sum(c * np.log(c)))

    apen = phi(m) - phi(m + 1)
    chi2 = 2 * n * (math.log(2) - apen)
    return igamc(2 ** (m - 1), chi2 / 2)


def serial(bits: np.ndarray, m: int = 16) -> tuple[float, float]:
    n = len(bits)

    def psi(mm: int) -> float:
        if mm <= 0:
            return 0.0
        c = _pattern_counts(bits, mm).astype(np.float64)
        return float(np.sum(c * c)) * (2**mm) / n - n

    p0, p1, p2 = psi(m), psi(m - 1), psi(m - 2)
    return igamc(2 ** (m - 2), (p0 - p1) / 2), igamc(2 ** (m - 3), (p0 - 2 * p1 + p2) / 2)


TESTS: list[tuple[str, Callable[[np.ndarray], list[float]]]] = [
    ("frequency", lambda b: [frequency(b)]),
    ("block_frequency", lambda b: [block_frequency(b)]),
    ("cusum_forward", lambda b: [cusum(b, False)]),
    ("cusum_backward", lambda b: [cusum(b, True)]),
    ("runs", lambda b: [runs(b)]),
    ("longest_run", lambda b: [longest_run(b)]),
    ("dft", lambda b: [dft(b)]),
    ("approximate_entropy", lambda b: [approximate_entropy(b)]),
    ("serial", lambda b: list(serial(b))),
]


def chaos_bits(i: int, n_bits: int) -> np.ndarray:
    key = hashlib.sha256(b"chaos-stats" + i.to_bytes(4, "big")).digest()
    return ChaosStream(key, "bench", "nist", str(i)).bits(n_bits)


def chacha_bits(i: int, n_bits: int) -> np.ndarray:
    key = hashlib.sha256(b"chacha-stats" + i.to_bytes(4, "big")).digest()
    raw = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(n_bits // 8))
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8))


def uniformity(pvalues: list[float]) -> float:
    counts = np.histogram(np.clip(pvalues, 0, 1 - 1e-12), bins=10, range=(0, 1))[0]
    expected = len(pvalues) / 10
    return igamc(9 / 2, float(np.sum((counts - expected) ** 2 / expected)) / 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=100)
    ap.add_argument("--bits", type=int, default=1_000_000)
    args = ap.parse_args()
    m = args.sequences
    low = 0.99 - 3 * math.sqrt(0.99 * 0.01 / m)
    results: dict[str, dict[str, list[float]]] = {}
    timing = {}
    for gen_name, gen in (("chaos-fsm", chaos_bits), ("chacha20", chacha_bits)):
        results[gen_name] = {}
        t_gen = 0.0
        for i in range(m):
            t0 = time.perf_counter()
            bits = gen(i, args.bits)
            t_gen += time.perf_counter() - t0
            for name, test in TESTS:
                for j, p in enumerate(test(bits)):
                    results[gen_name].setdefault(f"{name}{'_' + str(j + 1) if name == 'serial' else ''}", []).append(p)
        timing[gen_name] = t_gen
    print(f"NIST SP 800-22 subset: {m} sequences x {args.bits} bits per generator; "
          f"pass: proportion >= {low:.4f} and uniformity P >= 1e-4")
    print(f"{'test':<22}{'chaos-fsm prop':>16}{'unif P':>10}{'chacha20 prop':>16}{'unif P':>10}")
    passed = {g: 0 for g in results}
    names = list(results["chaos-fsm"])
    for name in names:
        row = f"{name:<22}"
        for g in results:
            ps = results[g][name]
            prop = float(np.mean(np.array(ps) >= ALPHA))
            unif = uniformity(ps)
            ok = prop >= low and unif >= 1e-4
            passed[g] += ok
            row += f"{prop:>16.3f}{unif:>10.4f}"
        print(row)
    for g in results:
        seqs = [all(results[g][n][i] >= ALPHA for n in names) for i in range(m)]
        print(f"{g}: {passed[g]}/{len(names)} tests pass; {sum(seqs)}/{m} sequences pass every test; "
              f"generation {timing[g]:.2f} s")
    print(f"ratio of pass counts chaos-fsm/chacha20: {passed['chaos-fsm']}/{passed['chacha20']}")


if __name__ == "__main__":
    main()
