"""Soft-decision reading of the payload (spec/watermark.md, "Soft-decision reading"): statistics'
magnitudes as reliabilities, ordered-statistics decoding of the code's binary image, a p-value that
counts every issuance that could be named, and a margin against a second mark."""

from __future__ import annotations

import math

import numpy as np

from emshield.marking import ecc, soft

NSYM = 10
PAYLOAD = 0x123456789ABC


def test_the_binary_generator_spans_the_reed_solomon_code() -> None:
    """RS over GF(2^8) is GF(2)-linear: XOR of payloads gives XOR of codewords, so the candidates
    re-encoded from the binary generator are real codewords."""
    g = soft.generator(NSYM)
    rng = np.random.default_rng(1)
    for _ in range(20):
        p = int(rng.integers(0, 1 << 48))
        bits = np.array([(p >> (47 - k)) & 1 for k in range(48)], dtype=np.uint8)
        assert np.array_equal((bits @ g) & 1, ecc.encode(p, NSYM))


def test_hoeffding_bound_is_the_p_value() -> None:
    assert soft.log10_chance(0.0, 10) == 0.0 and soft.log10_chance(-3.0, 10) == 0.0
    s = 8.0
    assert math.isclose(soft.log10_chance(s, 1000), 3 - s * s / 2 / math.log(10))
    assert soft.log10_chance(1.0, 1000) == 0.0  # min(1, …)


def _noisy(mu: float, rng: np.random.Generator, payload: int = PAYLOAD) -> np.ndarray:
    return mu * (ecc.encode(payload, NSYM) * 2.0 - 1.0) + rng.standard_normal(ecc.code_length_bits(NSYM))


def test_reads_through_20_raw_bit_errors_at_p_below_1e_9() -> None:
    """Per-bit SNR 1 (about 20 raw bit errors of 128; the hard decoder corrects at most 5 bytes):
    over 60 seeded draws the soft reading recovers the payload at p ≤ 1e-9 with 1,000 issuances
    counted in most draws with ≥ 20 errors, and never reads a wrong payload."""
    rng = np.random.default_rng(20)
    read20 = seen20 = 0
    for _ in range(60):
        z = _noisy(1.0, rng)
        errors = int(np.sum((z > 0) != ecc.encode(PAYLOAD, NSYM).astype(bool)))
        r = soft.read(z, NSYM, 1000, -9)
        assert not (r.accepted and r.payload != PAYLOAD), "a wrong payload was read"
        if errors >= 20:
            seen20 += 1
            read20 += bool(r.accepted and r.payload == PAYLOAD and r.p_value <= 1e-9)
    assert seen20 >= 10 and read20 >= seen20 // 2, (read20, seen20)


def test_pure_noise_reads_nothing_that_could_name_a_device_at_any_payload() -> None:
    """On statistics of an unmarked core the best of the candidates scores high against the search's
    own codewords, so 'some mark' is never claimed (p over all 2^48 payloads); over 300 draws no
    reading is decoded."""
    rng = np.random.default_rng(21)
    for _ in range(300):
        r = soft.read(rng.standard_normal(128), NSYM, 1000, -9)
        assert not r.decoded
        assert r.log10_p_any > -9


def test_two_marks_mixed_equally_read_as_nothing_and_a_dominant_one_as_itself() -> None:
    rng = np.random.default_rng(22)
    a, b = ecc.encode(1, NSYM) * 2.0 - 1.0, ecc.encode(0xABCDEF012345, NSYM) * 2.0 - 1.0
    z = 3 * (a + b) / 2 + 0.3 * rng.standard_normal(128)
    r = soft.read(z, NSYM, 1000, -9)
    assert not r.accepted and "another mark" in r.reason
    z = 3 * (0.7 * a + 0.3 * b) + 0.3 * rng.standard_normal(128)
    r = soft.read(z, NSYM, 1000, -9)
    assert r.accepted and r.payload == 1


def test_an_unattacked_mark_reads_with_a_tiny_p_value() -> None:
    """All signs agreeing gives the largest score, √n: p = count·e^{-n/2} (1e6 issuances: 10^-21.8;
    over every payload 10^-13.3, so 'some mark' is claimed at 1e-9 but not at 1e-20)."""
    z = 3.0 * (ecc.encode(PAYLOAD, NSYM) * 2.0 - 1.0)
    r = soft.read(z, NSYM, 10**6, -9)
    assert r.accepted and r.decoded and r.payload == PAYLOAD and r.best.bit_errors == 0
    assert math.isclose(r.best.score, math.sqrt(128)) and r.log10_p < -21.7
    strict = soft.read(z, NSYM, 10**6, -20)
    assert strict.accepted and strict.payload == PAYLOAD and not strict.decoded
