"""Secret tier: vectors, joint embedding with the public tier, batched scores, calibration of the
presence p-value, collusion at small size, and the public-mark stripping attack."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _kit.cores import DELTA_RMS, factors_from_hex, make_params, noise, random_core, strip_public
from emshield.core import LoraFactors
from emshield.marking import batched, secret, watermark
from emshield.marking.params import LayerSpec, MarkingParams

VECTORS = json.loads((Path(__file__).parents[2] / "spec/vectors/marking/secret.json").read_text())
WM_VECTORS = json.loads((Path(__file__).parents[2] / "spec/vectors/marking/watermark.json").read_text())
ISSUER = bytes(range(32))
DIMS = [(128, 128), (64, 128)] * 6  # 12 layers of the fixture's q/v shapes


def _factors(obj: dict, params: MarkingParams) -> dict[str, LoraFactors]:
    return factors_from_hex(obj, {lay.name: (lay.out_features, lay.in_features) for lay in params.layers})


def _key(j: int, salt: int = 0) -> secret.DetectionKey:
    return secret.detection_key(ISSUER, "test-backbone", j.to_bytes(16, "big"), salt.to_bytes(16, "big"))


def test_vectors() -> None:
    params = MarkingParams.from_cbor(bytes.fromhex(WM_VECTORS["params_cbor"]))
    v = VECTORS
    dk = secret.detection_key(bytes.fromhex(v["issuer_secret"]), v["backbone_id"], bytes.fromhex(v["device_uuid"]),
                              bytes.fromhex(v["salt"]))
    assert (dk.key.hex(), dk.nonce.hex(), dk.commitment.hex()) == (v["detection_key"], v["nonce"], v["commitment"])
    assert secret.commitment(bytes.fromhex(v["nonce"]), bytes.fromhex(v["detection_key"])).hex() == v["commitment"]
    assert (secret.STATISTICS, secret.TAU) == (v["statistics"], v["tau"])
    extra = secret.directions(dk.key, params)
    assert list(extra.layers) == v["keyed_layers"]
    wide = MarkingParams(params.backbone_id, params.verification_key,
                         tuple(type(params.layers[0])(f"layers.{i}.weight", 4, 4) for i in range(40)))
    assert [int(lay.name.split(".")[1]) for lay in secret.keyed_layers(dk.key, wide)] == v["keyed_layers_of_40"]
    assert len(v["keyed_layers_of_40"]) == secret.MAX_LAYERS
    first = extra.layers[params.layers[0].name]
    assert "".join("1" if x > 0 else "0" for x in first.u[0]) == v["direction_u0_signs_layer0"]
    assert "".join("1" if x > 0 else "0" for x in first.v[0]) == v["direction_v0_signs_layer0"]
    core = _factors(WM_VECTORS["unmarked_core"], params)
    stored = _factors(v["marked_core"], params)
    marked, report = watermark.embed(core, WM_VECTORS["payload"], params, extra=extra)
    for name in core:
        assert np.linalg.norm(marked[name].delta() - stored[name].delta()) <= 1e-5 * np.linalg.norm(stored[name].delta())
    tol = v["float_tolerance"]
    terms = watermark.extra_terms_from_factors(stored, extra)
    np.testing.assert_allclose(terms, [[float(x) for x in row] for row in v["marked_terms"]], atol=tol)
    np.testing.assert_allclose(terms.sum(axis=0) / np.sqrt(len(extra.layers)),
                               [float(x) for x in v["marked_statistics"]], atol=tol)
    assert secret.presence(terms).score == pytest.approx(float(v["marked_score"]), abs=tol)
    assert secret.presence_from_factors(core, dk.key, params).score == pytest.approx(v["unmarked_score"], abs=tol)
    assert watermark.extract_from_factors(stored, params).payload == v["marked_payload"] == WM_VECTORS["payload"]


def test_keys_are_per_issuance_and_inputs_are_checked() -> None:
    keys = {_key(j, s).key for j in range(3) for s in range(3)}
    assert len(keys) == 9  # device and salt each change the key
    a = _key(1)
    assert a.commitment != secret.commitment(bytes(32), a.key)  # the nonce is committed to
    for bad in (lambda: secret.detection_key(bytes(31), "b", bytes(16), bytes(16)),
                lambda: secret.detection_key(ISSUER, "b", bytes(15), bytes(16)),
                lambda: secret.detection_key(ISSUER, "b", bytes(16), bytes(15)),
                lambda: secret.commitment(bytes(31), bytes(32)),
                lambda: secret.directions(bytes(16), make_params(DIMS))):
        with pytest.raises(ValueError):
            bad()


def test_both_tiers_embedded_jointly() -> None:
    params = make_params(DIMS)
    core = random_core(np.random.default_rng(5), DIMS, 8, DELTA_RMS)
    key = _key(7).key
    public_only, r0 = watermark.embed(core, 0x123456789ABC, params)
    both, r1 = watermark.embed(core, 0x123456789ABC, params, extra=secret.directions(key, params))
    assert watermark.extract_from_factors(both, params).payload == 0x123456789ABC
    assert r1.min_margin >= 0.95 * params.tau and float(np.min(r1.extra_z_after)) >= 0.95 * secret.TAU
    named = secret.presence_from_factors(both, key, params)
    assert named.named and named.score > 8  # ≈ 10.8 for this core (12 keyed layers)
    assert not secret.presence_from_factors(public_only, key, params).named
    # the secret tier costs less than half again the public tier's change (energy 576 vs 1152)
    assert max(r1.relative_change.values()) < 1.5 * max(r0.relative_change.values())


# 40 layers (> MAX_LAYERS: a keyed choice), shapes whose STATISTICS·m is not a whole number of words
ODD_DIMS = [(5, 7), (12, 3), (9, 16), (64, 33)] * 10


def test_stacked_directions_are_the_single_key_directions() -> None:
    """What the lanes draw for each key, layer by layer, is exactly directions(key) (the embedding's)."""
    params = make_params(ODD_DIMS)
    keys = [_key(j).key for j in range(13)]
    seen = {j: {} for j in range(len(keys))}
    for layer, rows, u, v in batched.stacked_directions(keys, params):
        assert u.dtype == v.dtype == np.float32
        for b, j in enumerate(rows.tolist()):
            block = slice(b * secret.STATISTICS, (b + 1) * secret.STATISTICS)
            seen[j][layer.name] = (u[block], v[block])
    for j, key in enumerate(keys):
        extra = secret.directions(key, params)
        assert list(seen[j]) == list(extra.layers) == [lay.name for lay in secret.keyed_layers(key, params)]
        assert len(extra.layers) == secret.MAX_LAYERS
        for name, d in extra.layers.items():
            np.testing.assert_array_equal(seen[j][name][0], d.u32)
            np.testing.assert_array_equal(seen[j][name][1], d.v32)


def test_scores_equal_single_reads_on_odd_shapes_and_keyed_layer_choice() -> None:
    params = make_params(ODD_DIMS)
    rng = np.random.default_rng(12)
    suspect = {lay.name: rng.standard_normal((lay.out_features, lay.in_features)) for lay in params.layers}
    keys = [_key(j, salt=2).key for j in range(30)]
    profile: dict[str, float] = {}
    got = batched.scores(suspect, keys, params, profile=profile)
    single = [secret.presence_from_deltas(suspect, k, params).score for k in keys]
    np.testing.assert_allclose(got, single, rtol=1e-5, atol=1e-5)
    assert set(profile) == {"keys", "words", "products"}
    with pytest.raises(ValueError):
        batched.scores(suspect, keys[:2] + [bytes(31)], params)
    with pytest.raises(ValueError):
        batched.scores({**suspect, params.layers[0].name: np.zeros((5, 7))}, keys, params)


@pytest.fixture(scope="module")
def issued() -> tuple[MarkingParams, dict, list[bytes], list[dict[str, np.ndarray]]]:
    """One core issued to 8 devices with both tiers (shared by the tests below: embedding is the cost)."""
    params = make_params(DIMS)
    rng = np.random.default_rng(3)
    core = random_core(rng, DIMS, 8, DELTA_RMS)
    keys, deltas = [], []
    for j in range(8):
        key = _key(j).key
        marked, _ = watermark.embed(core, int(rng.integers(0, 1 << 48)), params, extra=secret.directions(key, params))
        keys.append(key)
        deltas.append({name: f.delta() for name, f in marked.items()})
    return params, core, keys, deltas


def test_batched_scores_equal_single_reads_and_name_the_device(issued) -> None:
    params, _, keys, deltas = issued
    others = [_key(100 + j).key for j in range(20)]
    got = batched.scores(deltas[2], keys + others, params)
    single = [secret.presence_from_deltas(deltas[2], k, params).score for k in keys + others]
    np.testing.assert_allclose(got, single, rtol=1e-5, atol=1e-5)
    assert [j for j, t in enumerate(got) if t >= secret.NAME_THRESHOLD] == [2]


def test_presence_p_value_is_calibrated_on_cores_without_the_key(issued) -> None:
    """1,000 keys against unmarked and other-issuance cores: nobody named, and P(p ≤ α) ≤ α (+4σ)."""
    params, core, _, deltas = issued
    unmarked = {name: f.delta() for name, f in core.items()}
    foreign = [_key(10_000 + j, salt=1).key for j in range(500)]
    t = np.concatenate([batched.scores(unmarked, foreign, params), batched.scores(deltas[0], foreign, params)])
    p = np.array([secret.p_value(x) for x in t])
    assert not np.any(p <= secret.NAME_ALPHA)
    for alpha in (0.5, 0.2, 0.1, 0.05, 0.01):
        assert np.mean(p <= alpha) <= alpha + 4 * np.sqrt(alpha * (1 - alpha) / len(p))
    assert abs(float(np.mean(t))) < 0.15 and 0.8 < float(np.std(t)) < 1.2  # T ≈ N(0, 1) for innocents


@pytest.mark.parametrize("size", [2, 3])
def test_collusion_names_a_colluder_and_no_innocent(issued, size: int) -> None:
    """Small-size version of the collusion measurement (bench/secret_tier.py: 200 coalitions of 50)."""
    params, _, keys, deltas = issued
    rng = np.random.default_rng(size)
    names = [lay.name for lay in params.layers]
    for _ in range(6):
        coalition = rng.choice(len(keys), size, replace=False)
        weights = rng.dirichlet(np.ones(size))
        pick = rng.integers(0, size, len(names))
        for suspect in ({n: sum(deltas[c][n] for c in coalition) / size for n in names},
                        {n: sum(w * deltas[c][n] for w, c in zip(weights, coalition)) for n in names},
                        {n: deltas[coalition[pick[i]]][n] for i, n in enumerate(names)}):
            t = batched.scores(suspect, keys, params)
            named = set(np.flatnonzero(t >= secret.NAME_THRESHOLD).tolist())
            assert named and named <= set(coalition.tolist())


def test_stripping_the_public_mark_leaves_the_secret_tier(issued) -> None:
    """An adversary with the published parameters zeroes every public statistic; then adds noise."""
    params, _, keys, deltas = issued
    stripped = {lay.name: strip_public(deltas[1][lay.name], params, i) for i, lay in enumerate(params.layers)}
    assert np.max(np.abs(watermark.extract_from_deltas(stripped, params).z)) < 1e-6
    rng = np.random.default_rng(9)
    noisy = {n: noise(d, 0.5, rng) for n, d in stripped.items()}
    for suspect in (stripped, noisy):
        t = batched.scores(suspect, keys, params)
        assert [j for j, x in enumerate(t) if x >= secret.NAME_THRESHOLD] == [1]


def test_policy_measures_and_records_both_tiers() -> None:
    """policy.mark with a detection key: both tiers in the issued core, the commitment in the record."""
    from emshield.marking import policy

    params = make_params(DIMS)
    core = random_core(np.random.default_rng(8), DIMS, 8, DELTA_RMS)
    dk = _key(3)
    res = policy.mark(core, 0x0A0B0C0D0E0F, params, policy.Tolerance(max_perturbation=1.0), detection=dk)
    assert res.record.mode == policy.MODE_BOTH
    assert res.record.secret_commitment == dk.commitment.hex()
    assert res.record.secret_score == pytest.approx(secret.presence_from_factors(res.core, dk.key, params).score)
    assert secret.presence_from_factors(res.core, dk.key, params).named
    plain = policy.mark(core, 0x0A0B0C0D0E0F, params, policy.Tolerance(max_perturbation=1.0))
    assert plain.record.secret_commitment is None and not secret.presence_from_factors(plain.core, dk.key, params).named


# Batched products (batched.scores) against the statistic of record (presence_from_deltas).
QV_DIMS = [(48, 48), (16, 48), (40, 24)] * 3  # q/v-like shapes; m < n and m > n: either side contracted


def _hostile_suspects(params: MarkingParams, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Random ΔW, and ΔW whose dynamic range defeats a single shared scale."""
    shapes = {lay.name: (lay.out_features, lay.in_features) for lay in params.layers}
    base = {n: DELTA_RMS * rng.standard_normal(s) for n, s in shapes.items()}
    huge = {n: d.copy() for n, d in base.items()}
    columns = {n: d.copy() for n, d in base.items()}
    for n, (m, k) in shapes.items():
        huge[n][1, 2] = 1e4 * DELTA_RMS  # one entry carries nearly all of σ
        columns[n][rng.integers(0, m, k), np.arange(k)] = 100 * DELTA_RMS  # one outlier in every column
    names = list(shapes)
    zeroish = dict(base)
    zeroish[names[0]] = 1e-30 * base[names[0]]
    zeroish[names[1]] = np.zeros(shapes[names[1]])
    zeroish[names[1]][-1, -1] = 1e-20  # a single nonzero entry
    return {"gaussian": base, "one huge entry": huge, "an outlier per column": columns, "zero-ish layers": zeroish,
            "heavy tails": {n: DELTA_RMS * rng.standard_t(1.2, s) for n, s in shapes.items()},
            "constant offset": {n: d + 30 * DELTA_RMS for n, d in base.items()},
            "sparse": {n: np.where(rng.random(d.shape) < 0.02, d, 0.0) + np.eye(*d.shape) * DELTA_RMS
                       for n, d in base.items()}}


@pytest.mark.parametrize("dims", [QV_DIMS, ODD_DIMS], ids=["qv", "odd-40-layers"])
def test_batched_scores_are_within_the_stated_bound_of_the_single_read(dims) -> None:
    params = make_params(dims)
    keys = [_key(j, salt=5).key for j in range(24)]
    for name, suspect in _hostile_suspects(params, np.random.default_rng(21)).items():
        got = batched.scores(suspect, keys, params)
        single = np.array([secret.presence_from_deltas(suspect, k, params).score for k in keys])
        assert np.max(np.abs(got - single)) <= batched.SCORE_ERROR, name


def test_batched_scores_do_not_depend_on_key_order_blocks_or_chunks(monkeypatch) -> None:
    params = make_params(ODD_DIMS)
    rng = np.random.default_rng(22)
    suspect = {lay.name: rng.standard_normal((lay.out_features, lay.in_features)) for lay in params.layers}
    keys = [_key(j, salt=6).key for j in range(23)]
    reference = batched.scores(suspect, keys, params)
    np.testing.assert_allclose(batched.scores(suspect, keys[::-1], params)[::-1], reference, rtol=0, atol=1e-9)
    np.testing.assert_allclose(batched.scores(suspect, keys[:3] + keys[:3], params), np.tile(reference[:3], 2),
                               rtol=0, atol=1e-9)
    monkeypatch.setattr(batched, "BLOCK_KEYS", 4)
    monkeypatch.setattr(batched, "WORDS_BYTES", 1)  # chunks of BLOCK_KEYS keys, each with its own lanes
    np.testing.assert_allclose(batched.scores(suspect, keys, params), reference, rtol=0, atol=1e-9)


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_integer_products_are_exact_up_to_the_stated_rounding(digits: int) -> None:
    """terms(u, v) against uᵀ·A·v in float64: off by at most Σ|A − s·N| ≤ k·Σ_c max|A_·c|/(2·127^d), the
    rounding of A alone (plus float32 slack), on both orientations. A wrong zero point, scale, digit
    or transposition, or a saturating int8 kernel, is off by far more."""
    rng = np.random.default_rng(23)
    for m, n in ((40, 24), (24, 40)):
        layer = LayerSpec("l", m, n)
        delta = rng.standard_t(2.0, (m, n))
        delta[0, 0] = 300.0
        op = batched._Operand.of(delta, layer, digits)
        u_bits = rng.integers(0, 2, (64, m), dtype=np.uint8)
        v_bits = rng.integers(0, 2, (64, n), dtype=np.uint8)
        a = delta.astype(np.float32).astype(np.float64)
        a /= np.sqrt(np.sum(a * a))  # ΔW / (σ·√(mn))
        exact = np.einsum("ia,ab,ib->i", 2.0 * u_bits - 1, a, 2.0 * v_bits - 1)
        contracted = a if m >= n else a.T  # columns: the product's outputs
        rounding = contracted.shape[0] * np.sum(np.abs(contracted).max(axis=0)) / (2 * batched.DIGIT ** digits)
        got = op.terms(u_bits, v_bits)
        assert np.max(np.abs(got - exact)) <= rounding + 1e-5 * (1 + np.max(np.abs(exact)))
        if digits == 3:
            assert np.max(np.abs(got - exact)) < 1e-4


def test_batched_scores_refuse_non_finite_and_restore_torch_threads() -> None:
    import torch

    params = make_params(QV_DIMS)
    rng = np.random.default_rng(24)
    suspect = {lay.name: rng.standard_normal((lay.out_features, lay.in_features)) for lay in params.layers}
    threads = torch.get_num_threads()
    bad = dict(suspect)
    bad[params.layers[2].name] = np.where(np.eye(40, 24) > 0, np.inf, bad[params.layers[2].name])
    with pytest.raises(ValueError, match="non-finite"):
        batched.scores(bad, [_key(0).key], params)
    assert torch.get_num_threads() == threads
