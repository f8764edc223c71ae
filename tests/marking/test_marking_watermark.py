"""Watermark: vectors, robustness with numbers, false positives and p-value calibration."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from _kit.cores import (
    DELTA_RMS,
    FIXTURE_DIMS,
    W_RMS,
    bf16,
    factors_from_hex,
    finetune,
    fp16,
    int8_rows,
    make_params,
    noise,
    prune,
    random_core,
    refactorise,
)
from emshield.core import LoraFactors
from emshield.marking import ecc, watermark
from emshield.marking.params import MarkingParams

VECTORS = json.loads((Path(__file__).parents[2] / "spec/vectors/marking/watermark.json").read_text())
PAYLOAD = 0xC0FFEE123456


def test_vectors() -> None:
    params = MarkingParams.from_cbor(bytes.fromhex(VECTORS["params_cbor"]))
    shapes = {lay.name: (lay.out_features, lay.in_features) for lay in params.layers}
    d = watermark.directions(params, params.layers[0])
    assert "".join("1" if x > 0 else "0" for x in d.u[0]) == VECTORS["direction_u0_signs_layer0"]
    assert "".join("1" if x > 0 else "0" for x in d.v[0]) == VECTORS["direction_v0_signs_layer0"]
    core = factors_from_hex(VECTORS["unmarked_core"], shapes)
    stored = factors_from_hex(VECTORS["marked_core"], shapes)
    marked, report = watermark.embed(core, VECTORS["payload"], params)
    tol = VECTORS["float_tolerance"]
    np.testing.assert_allclose(report.z_before, [float(z) for z in VECTORS["unmarked_z"]], atol=tol)
    for name in core:
        diff = np.linalg.norm(marked[name].delta() - stored[name].delta())
        assert diff <= 1e-5 * np.linalg.norm(stored[name].delta())
    ex = watermark.extract_from_factors(stored, params)
    np.testing.assert_allclose(ex.z, [float(z) for z in VECTORS["marked_z"]], atol=tol)
    assert "".join(map(str, ex.bits)) == VECTORS["extracted_bits"] == VECTORS["code_bits"]
    assert (ex.payload, ex.bit_errors, ex.accepted) == (VECTORS["extracted_payload"], VECTORS["bit_errors"], True)


@pytest.fixture(scope="module")
def marked_setup() -> tuple:
    rng = np.random.default_rng(11)
    params = make_params(FIXTURE_DIMS)
    core = random_core(rng, FIXTURE_DIMS, 8, DELTA_RMS)
    marked, report = watermark.embed(core, PAYLOAD, params)
    backbone = {k: (rng.standard_normal(f.shape) * W_RMS).astype(np.float32) for k, f in core.items()}
    return params, core, marked, report, backbone


def test_embed_reaches_margin_and_keeps_rank(marked_setup: tuple) -> None:
    params, core, marked, report, _ = marked_setup
    assert report.min_margin >= 0.999 * params.tau
    for name, f in marked.items():
        assert f.rank == core[name].rank and f.scale == core[name].scale
        assert np.linalg.matrix_rank(f.delta()) == f.rank
        # returned in the input's gauge: factor magnitudes stay like the adapter's
        assert 0.5 < np.linalg.norm(f.b) / np.linalg.norm(core[name].b) < 2
    # cost of the mark on these small (fixture-sized) layers, for the record
    assert max(report.relative_change.values()) < 0.7
    assert watermark.extract_from_factors(core, params).payload is None


def _check(ex: watermark.Extraction, what: str) -> int:
    assert ex.accepted, (what, ex.reason)
    assert ex.payload == PAYLOAD, what
    assert ex.p_value < 1e-9
    return int(ex.bit_errors)


def test_survives_refactorisation_and_merges(marked_setup: tuple) -> None:
    params, _, marked, _, backbone = marked_setup
    rng = np.random.default_rng(12)
    _check(watermark.extract_from_factors(marked, params), "adapter")
    refac = {k: refactorise(f, rng) for k, f in marked.items()}
    _check(watermark.extract_from_factors(refac, params), "re-factorised")
    merged = {k: backbone[k] + marked[k].delta().astype(np.float32) for k in marked}
    for name, cast in (("fp32", lambda x: x), ("bf16", bf16), ("fp16", fp16)):
        deltas = {k: cast(w).astype(np.float64) - cast(backbone[k]).astype(np.float64) for k, w in merged.items()}
        assert _check(watermark.extract_from_deltas(deltas, params), f"merged {name}") == 0


def test_survives_required_attacks_with_zero_payload_errors(marked_setup: tuple) -> None:
    params, core, marked, report, backbone = marked_setup
    rng = np.random.default_rng(13)
    merged = {k: backbone[k] + marked[k].delta().astype(np.float32) for k in marked}
    attacks = {
        "int8 merged": {k: int8_rows(w).astype(np.float64) - backbone[k] for k, w in merged.items()},
        "prune 50%": {k: prune(f.delta(), 0.5) for k, f in marked.items()},
        "noise 10%": {k: noise(f.delta(), 0.1, rng) for k, f in marked.items()},
    }
    margins = {}
    for name, deltas in attacks.items():
        ex = watermark.extract_from_deltas(deltas, params)
        _check(ex, name)
        margins[name] = float(np.min(ex.z * report.signs))
    # the margin left (τ = 3 before the attack) shows how far each one is from breaking the mark
    assert margins["noise 10%"] > 2.0 and margins["prune 50%"] > 1.0 and margins["int8 merged"] > 1.0, margins


def test_survives_100_simulated_finetuning_steps(marked_setup: tuple) -> None:
    """Simulated on random cores (no fixture task here): Adam, lr 1e-4, pulled towards the unmarked core."""
    params, core, marked, _, _ = marked_setup
    task = {k: f.delta() for k, f in core.items()}
    tuned = finetune(marked, task, 100, 1e-4, np.random.default_rng(14), decay=0.0)
    moved = max(np.linalg.norm(tuned[k].delta() - marked[k].delta()) / np.linalg.norm(marked[k].delta()) for k in core)
    assert moved > 0.1  # the attack really moved the core
    _check(watermark.extract_from_factors(tuned, params), "fine-tuned")


def test_lazy_source_reads_only_marked_layers(marked_setup: tuple) -> None:
    params, _, marked, _, _ = marked_setup
    asked: list[str] = []

    def read(name: str) -> np.ndarray:
        asked.append(name)
        return marked[name].delta()

    _check(watermark.extract_from_deltas(read, params), "lazy")
    assert asked == [lay.name for lay in params.layers]
    bad = {k: np.zeros((3, 3)) for k in marked}
    with pytest.raises(ValueError, match="shape"):
        watermark.extract_from_deltas(bad, params)


def test_no_wrong_payload_over_1000_unmarked_and_other_payload_cores() -> None:
    """False positives, and calibration of the per-payload p-value against fair-coin bits."""
    rng = np.random.default_rng(21)
    params = make_params(FIXTURE_DIMS)
    probe_code = ecc.encode(PAYLOAD, params.rs_nsym)
    p_payload = []
    for _ in range(1000):
        ex = watermark.extract_from_factors(random_core(rng, FIXTURE_DIMS, 8, DELTA_RMS), params)
        assert not ex.accepted and ex.payload is None
        errors = int(np.sum(ex.bits != probe_code))
        p_payload.append(watermark.chance_p_values(errors, params.code_bits)[1])
    p_payload = np.array(p_payload)
    # P(p <= α) must not exceed α (binomial tail is exact for fair coins): check at several α with
    # a 4-sigma allowance for 1000 samples.
    for alpha in (0.5, 0.2, 0.1, 0.05, 0.01):
        frac = float(np.mean(p_payload <= alpha))
        assert frac <= alpha + 4 * math.sqrt(alpha * (1 - alpha) / 1000), (alpha, frac)
    assert float(np.mean(p_payload <= 0.5)) > 0.4  # and the p-values are not degenerate

    for i in range(12):
        payload = int(rng.integers(0, 2**48))
        core = random_core(rng, FIXTURE_DIMS, 8, DELTA_RMS)
        ex = watermark.extract_from_factors(watermark.embed(core, payload, params)[0], params)
        assert ex.accepted and ex.payload == payload, i


def test_too_small_or_empty_cores_are_refused() -> None:
    rng = np.random.default_rng(31)
    tiny = [(16, 24)] * 2
    params = make_params(tiny)
    with pytest.raises(watermark.CapacityError):
        watermark.embed(random_core(rng, tiny, 4, DELTA_RMS), PAYLOAD, params)
    params = make_params(FIXTURE_DIMS)
    zero = {k: LoraFactors(f.a, np.zeros_like(f.b), f.scale) for k, f in random_core(rng, FIXTURE_DIMS, 8, DELTA_RMS).items()}
    with pytest.raises(ValueError, match="zero"):
        watermark.embed(zero, PAYLOAD, params)
    with pytest.raises(ValueError, match="no layer"):
        watermark.embed({}, PAYLOAD, params)


def _anisotropic_moments(rng: np.random.Generator, dims: list[tuple[int, int]], names: list[str]) -> dict:
    """Input second moments like real activations: eigenvalues k^-2 in a random basis."""
    moments = {}
    for name, (_, n) in zip(names, dims):
        basis, _ = np.linalg.qr(rng.standard_normal((n, n)))
        moments[name] = (basis * np.arange(1, n + 1) ** -2.0) @ basis.T
    return moments


def test_input_aware_embedding_moves_outputs_far_less(marked_setup: tuple) -> None:
    """Same core and payload: input-aware mode puts the mark where the inputs have little energy."""
    params, core, _, plain, backbone = marked_setup
    moments = _anisotropic_moments(np.random.default_rng(61), FIXTURE_DIMS, list(core))
    marked, report = watermark.embed(core, PAYLOAD, params, moments)
    assert report.min_margin >= 0.999 * params.tau
    _check(watermark.extract_from_factors(marked, params), "input-aware")
    merged = {k: backbone[k] + marked[k].delta().astype(np.float32) for k in marked}
    deltas = {k: bf16(w).astype(np.float64) - bf16(backbone[k]).astype(np.float64) for k, w in merged.items()}
    _check(watermark.extract_from_deltas(deltas, params), "input-aware, merged bf16")

    def output_change(m: dict) -> float:
        worst = 0.0
        for k, f in m.items():
            d, d0 = f.delta() - core[k].delta(), core[k].delta()
            worst = max(worst, math.sqrt(np.trace(d @ moments[k] @ d.T) / np.trace(d0 @ moments[k] @ d0.T)))
        return worst

    plain_marked = watermark.embed(core, PAYLOAD, params)[0]
    assert report.relative_output_change is not None
    assert abs(max(report.relative_output_change.values()) - output_change(marked)) < 1e-6
    assert output_change(marked) < output_change(plain_marked) / 3, (output_change(marked), output_change(plain_marked))
    with pytest.raises(ValueError, match="second moment"):
        watermark.embed(core, PAYLOAD, params, {k: np.eye(3) for k in core})
    with pytest.raises(ValueError, match="no input second moment"):
        watermark.embed(core, PAYLOAD, params, {})
