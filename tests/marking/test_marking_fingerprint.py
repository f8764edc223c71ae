"""Fingerprint: vectors, invariance under re-factorisation/merge/quantisation/noise, 1,000 other cores."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import numpy as np
import pytest

from _kit.cores import (
    DELTA_RMS,
    FIXTURE_DIMS,
    W_RMS,
    bf16,
    int8_rows,
    make_params,
    noise,
    random_core,
    refactorise,
)
from emshield.core import LoraFactors
from emshield.marking import fingerprint as fpm
from emshield.marking.params import MarkingParams

ROOT = Path(__file__).parents[2]
FP_VECTORS = json.loads((ROOT / "spec/vectors/marking/fingerprint.json").read_text())
WM_VECTORS = json.loads((ROOT / "spec/vectors/marking/watermark.json").read_text())


def test_vectors() -> None:
    params = MarkingParams.from_cbor(bytes.fromhex(WM_VECTORS["params_cbor"]))
    blob = bytes.fromhex(FP_VECTORS["fingerprint_cbor"])
    published = fpm.Fingerprint.from_cbor(blob, expected_hash=bytes.fromhex(FP_VECTORS["fingerprint_hash"]))
    assert published.hash().hex() == FP_VECTORS["fingerprint_hash"]
    core = {}
    for lay in params.layers:
        f = WM_VECTORS["unmarked_core"][lay.name]
        a = np.frombuffer(bytes.fromhex(f["a"]), dtype="<f4").reshape(-1, lay.in_features)
        b = np.frombuffer(bytes.fromhex(f["b"]), dtype="<f4").reshape(lay.out_features, -1)
        core[lay.name] = LoraFactors(a, b, f["scale"])
    ours = fpm.fingerprint_factors(core, params)
    tol = FP_VECTORS["feature_tolerance_quanta"]
    assert np.max(np.abs(ours.vector() - published.vector())) * fpm.QUANT <= tol
    assert fpm.compare(published, ours, params).distance < 1e-4


@pytest.fixture(scope="module")
def setup() -> tuple:
    rng = np.random.default_rng(41)
    params = make_params(FIXTURE_DIMS)
    core = random_core(rng, FIXTURE_DIMS, 8, DELTA_RMS)
    backbone = {k: (rng.standard_normal(f.shape) * W_RMS).astype(np.float32) for k, f in core.items()}
    return params, core, backbone, fpm.fingerprint_factors(core, params)


def test_matches_same_core_after_transformations(setup: tuple) -> None:
    params, core, backbone, published = setup
    rng = np.random.default_rng(42)
    merged = {k: backbone[k] + core[k].delta().astype(np.float32) for k in core}
    suspects = {
        "re-factorised": fpm.fingerprint_factors({k: refactorise(f, rng) for k, f in core.items()}, params),
        "merge + recover": fpm.fingerprint_deltas({k: merged[k].astype(np.float64) - backbone[k] for k in core}, params),
        "merged bf16": fpm.fingerprint_deltas(
            {k: bf16(w).astype(np.float64) - bf16(backbone[k]) for k, w in merged.items()}, params
        ),
        "int8 merged": fpm.fingerprint_deltas(
            {k: int8_rows(w).astype(np.float64) - backbone[k] for k, w in merged.items()}, params
        ),
        "noise 10%": fpm.fingerprint_deltas({k: noise(f.delta(), 0.1, rng) for k, f in core.items()}, params),
    }
    distances = {}
    for name, fp in suspects.items():
        cmp = fpm.compare(published, fp, params)
        assert cmp.match, (name, cmp)
        distances[name] = cmp.distance
    assert distances["re-factorised"] < 2e-4 and distances["merge + recover"] < 2e-4
    assert max(distances.values()) < 0.5 * params.fp_threshold_milli / 1000, distances


def test_no_match_among_1000_other_cores(setup: tuple) -> None:
    params, _, _, published = setup
    rng = np.random.default_rng(43)
    distances = []
    for i in range(1000):
        other = random_core(rng, FIXTURE_DIMS, (4, 8, 16)[i % 3], DELTA_RMS)
        cmp = fpm.compare(published, fpm.fingerprint_factors(other, params), params)
        assert not cmp.match
        distances.append(cmp.distance)
    # calibration: the threshold sits far below the closest other core
    assert min(distances) > 2.5 * params.fp_threshold_milli / 1000, min(distances)


def test_hash_binds_encoding_and_decoder_rejects_hostile_input(setup: tuple) -> None:
    params, core, _, published = setup
    blob = published.to_cbor()
    assert fpm.Fingerprint.from_cbor(blob, published.hash()) == published
    obj = cbor2.loads(blob)
    bad = [
        blob[:-1],
        blob + b"\x00",
        cbor2.dumps(dict(reversed(list(obj.items())))),
        cbor2.dumps({**obj, "v": 2}, canonical=True),
        cbor2.dumps({**obj, "params": b"\x00" * 31}, canonical=True),
        cbor2.dumps({**obj, "layers": [["x", [-1]]]}, canonical=True),
        cbor2.dumps({**obj, "layers": [["x", [1.5]]]}, canonical=True),
        cbor2.dumps({**obj, "extra": 0}, canonical=True),
        b"\x00" * (fpm.MAX_FINGERPRINT_BYTES + 1),
    ]
    for item in bad:
        with pytest.raises(fpm.FingerprintError):
            fpm.Fingerprint.from_cbor(item)
    with pytest.raises(fpm.FingerprintError, match="hash"):
        fpm.Fingerprint.from_cbor(blob, expected_hash=bytes(32))
    other_params = make_params(FIXTURE_DIMS, fp_threshold_milli=151)
    with pytest.raises(fpm.FingerprintError):
        fpm.compare(published, fpm.fingerprint_factors(core, other_params), params)
