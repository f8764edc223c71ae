"""Chaos FSM: spec re-implementation, test vectors, no short cycles, sampling helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from emshield.marking.chaos import MASK64, MAX_WORDS, ChaosLanes, ChaosStream, logistic_step

VECTORS = json.loads((Path(__file__).parents[2] / "spec/vectors/marking/chaos.json").read_text())
KEY = bytes(range(32))


def spec_words(key: bytes, context: tuple[str, str, str], n: int) -> tuple[list[int], list[int], list[int]]:
    """spec/chaos.md written out step by step in plain integers (independent of the module)."""
    info = b"emshield/chaos/v1\x00"
    for field in context:
        raw = field.encode()
        info += len(raw).to_bytes(2, "big") + raw
    okm = HKDF(hashes.SHA256(), 41, b"emshield/chaos/v1", info).derive(key)
    ks = Cipher(algorithms.ChaCha20(okm[:32], bytes(16)), mode=None).encryptor().update(bytes(16 * n))
    x, s = int.from_bytes(okm[32:40], "big"), okm[40] % 8
    rot = (7, 13, 19, 29, 31, 41, 53, 59)
    words, xs, ss = [], [], []
    for t in range(n):
        k = int.from_bytes(ks[16 * t : 16 * t + 8], "little")
        w = int.from_bytes(ks[16 * t + 8 : 16 * t + 16], "little")
        x = min(2**64 - 1, (x * (2**64 - x)) // 2**62) ^ (k & 0xFFFF)
        s = (5 * s + (x >> 61) + 1) % 8
        r = rot[s]
        words.append((((x << r) | (x >> (64 - r))) & (2**64 - 1)) ^ w)
        xs.append(x)
        ss.append(s)
    return words, xs, ss


def test_matches_spec_reimplementation_over_5000_words() -> None:
    ctx = ("bb", "model.layers.3.self_attn.v_proj.weight", "watermark-v")
    words, xs, ss = spec_words(KEY, ctx, 5000)
    assert [int(w) for w in ChaosStream(KEY, *ctx).words(5000)] == words
    got_x, got_s = ChaosStream(KEY, *ctx).states(5000)
    assert got_x.tolist() == xs and got_s.tolist() == ss


def test_vectors() -> None:
    assert VECTORS["alg"] == "emshield-chaos-fsm-v1" and len(VECTORS["cases"]) == 3
    for case in VECTORS["cases"]:
        key = bytes.fromhex(case["key"])
        ctx = (case["backbone_id"], case["layer"], case["purpose"])
        assert [f"{w:016x}" for w in spec_words(key, ctx, 16)[0]] == case["words"]
        assert [f"{int(w):016x}" for w in ChaosStream(key, *ctx).words(16)] == case["words"]
        xs, ss = ChaosStream(key, *ctx).states(16)
        assert [f"{int(x):016x}" for x in xs] == case["map_states"]
        assert ss.tolist() == case["machine_states"]
        g = ChaosStream(key, *ctx)
        assert "".join(map(str, g.bits(100))) == case["then_bits_100"]
        assert [repr(float(u)) for u in g.uniforms(4)] == case["then_uniforms_4"]
        bounds = (1, 2, 3, 10, 1000, 2**63 + 5)
        assert [g.below(b) for b in bounds] == case["then_below_1_2_3_10_1000_2p63p5"]
        assert g.permutation(20).tolist() == case["then_permutation_20"]


def _shortest_period(seq: np.ndarray, max_period: int) -> int | None:
    for p in range(1, max_period + 1):
        if np.array_equal(seq[p:], seq[:-p]):
            return p
    return None


def test_no_short_cycles_and_uniform_state_visits_over_200_seeds() -> None:
    """The reference design fell into one 7-step cycle from every seed; this one must not."""
    steps = 4000
    visits = np.zeros(8, dtype=np.int64)
    starts = set()
    for seed in range(200):
        xs, ss = ChaosStream(seed.to_bytes(2, "big") * 8, "bb", "layer", "cycle-test").states(steps)
        # No repeated map state (a repeat would be needed for any cycle of the map alone) ...
        assert len(set(xs.tolist())) == steps
        # ... and the machine-state sequence has no period up to 1000 over its last 2000 steps.
        assert _shortest_period(ss[-2000:], 1000) is None
        visits += np.bincount(ss, minlength=8)
        starts.add(tuple(ss[:32].tolist()))
    assert len(starts) == 200  # every seed starts its own trajectory
    expected = visits.sum() / 8
    chi2 = float(np.sum((visits - expected) ** 2 / expected))
    assert chi2 < 24.3, (visits, chi2)  # chi-square, 7 degrees of freedom, p = 0.001


def test_transition_table_is_doubly_stochastic_and_aperiodic() -> None:
    table = np.array([[(5 * s + y + 1) % 8 for y in range(8)] for s in range(8)])
    for s in range(8):
        assert sorted(table[s]) == list(range(8))  # every state reachable in one step from any
    for y in range(8):
        assert sorted(table[:, y]) == list(range(8))  # each symbol permutes the states


def test_contexts_and_keys_separate_streams() -> None:
    base = ChaosStream(KEY, "bb", "l", "p").words(8).tolist()
    for other in (
        ChaosStream(KEY, "bb", "l", "q"),
        ChaosStream(KEY, "bb", "m", "p"),
        ChaosStream(KEY, "bc", "l", "p"),
        ChaosStream(KEY[::-1], "bb", "l", "p"),
        ChaosStream(KEY, "b", "bl", "p"),  # length prefixes keep field boundaries apart
    ):
        assert other.words(8).tolist() != base


def test_rejects_short_keys_and_exhaustion() -> None:
    with pytest.raises(ValueError):
        ChaosStream(b"short", "bb", "l", "p")
    g = ChaosStream(KEY, "bb", "l", "p")
    with pytest.raises(ValueError):
        g.words(MAX_WORDS + 1)
    with pytest.raises(ValueError):
        g.below(0)


def test_bits_are_balanced_and_rademacher_signs_match_bits() -> None:
    bits = ChaosStream(KEY, "bb", "l", "bits").bits(200_000)
    assert abs(bits.mean() - 0.5) < 0.005
    signs = ChaosStream(KEY, "bb", "l", "bits").rademacher(1000)
    assert np.array_equal(signs, bits[:1000].astype(np.int8) * 2 - 1)


def test_permutations_are_uniform() -> None:
    g = ChaosStream(KEY, "bb", "l", "perm")
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(2400):
        p = tuple(g.permutation(4).tolist())
        counts[p] = counts.get(p, 0) + 1
    assert len(counts) == 24
    chi2 = sum((c - 100) ** 2 / 100 for c in counts.values())
    assert chi2 < 49.7  # 23 degrees of freedom, p = 0.001


def test_logistic_step_matches_integer_arithmetic_on_edges_and_random_values() -> None:
    """The limb-emulated 128-bit product, including x = 0 (2^64 − x wraps) and the clamp at x = 2^63."""
    edges = [0, 1, 2, 3, (1 << 62) - 1, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 63) + 1, 3 << 62,
             (1 << 64) - 2, (1 << 64) - 1, 0xFFFFFFFF, 1 << 32, (1 << 32) + 1]
    rng = np.random.default_rng(4)
    values = edges + [int(v) for v in rng.integers(0, MASK64, 5000, dtype=np.uint64, endpoint=True)]
    got = logistic_step(np.array(values, dtype=np.uint64))
    assert [int(g) for g in got] == [min(MASK64, (x * ((1 << 64) - x)) >> 62) for x in values]
    assert int(logistic_step(np.array([1 << 63], dtype=np.uint64))[0]) == MASK64


def test_lanes_equal_the_serial_stream_for_every_lane() -> None:
    """Random keys (16 to 64 bytes), contexts and call lengths, across the lanes' 256-step blocks."""
    rng = np.random.default_rng(11)
    for trial in range(4):
        keys = [bytes(rng.integers(0, 256, int(rng.integers(16, 65)), dtype=np.uint8)) for _ in range(int(rng.integers(1, 40)))]
        context = (f"bb-{trial}", ["", "layers.3.q_proj.weight", "é"][trial % 3], f"purpose-{trial}")
        lengths = [int(n) for n in rng.integers(0, 400, 3)]
        lanes = ChaosLanes(keys, *context)
        got = np.hstack([lanes.words(n) for n in lengths])
        assert got.shape == (len(keys), sum(lengths))
        for i, key in enumerate(keys):
            stream = ChaosStream(key, *context)
            np.testing.assert_array_equal(got[i], np.concatenate([stream.words(n) for n in lengths]))
    with pytest.raises(ValueError):
        ChaosLanes([KEY, bytes(15)], "b", "l", "p")
    with pytest.raises(ValueError):
        ChaosLanes([KEY], "b", "l", "p").words(-1)


def test_lanes_advanced_in_subsets_equal_the_serial_stream_for_every_lane() -> None:
    """Each call advances only the lanes it names; every lane's words are still its ChaosStream's."""
    rng = np.random.default_rng(12)
    keys = [bytes(rng.integers(0, 256, 32, dtype=np.uint8)) for _ in range(17)]
    lanes = ChaosLanes(keys, "bb", "", "purpose")
    drawn: list[list[np.ndarray]] = [[] for _ in keys]
    for _ in range(6):
        subset = np.flatnonzero(rng.random(len(keys)) < 0.5)
        n = int(rng.integers(0, 300))
        words = lanes.words(n, subset)
        assert words.shape == (subset.size, n)
        for row, i in enumerate(subset.tolist()):
            drawn[i].append(words[row])
    for i, key in enumerate(keys):
        total = sum(w.size for w in drawn[i])
        expect = ChaosStream(key, "bb", "", "purpose").words(total)
        np.testing.assert_array_equal(np.concatenate(drawn[i] or [np.empty(0, np.uint64)]), expect)
    with pytest.raises(ValueError):
        lanes.words(3, np.array([1, 1]))
