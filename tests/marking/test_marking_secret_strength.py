"""The secret tier's strength: the policy embeds it at the strongest margin of secret.STRENGTHS the
tolerance allows (spec/watermark.md, "Strength"), and a stronger margin survives blind noise that
the floor margin does not."""

from __future__ import annotations

import numpy as np

from _kit.cores import DELTA_RMS, make_params, noise, random_core, strip_public
from emshield.marking import policy, secret, watermark

DIMS = [(128, 128), (64, 128)] * 6  # 12 layers of the fixture's q/v shapes
PAYLOAD = 0x0A0B0C0D0E0F


def _setup():
    params = make_params(DIMS)
    core = random_core(np.random.default_rng(8), DIMS, 8, DELTA_RMS)
    dk = secret.detection_key(bytes(range(32)), "test-backbone", (3).to_bytes(16, "big"), bytes(16))
    return params, core, dk


def _statistics(core, key: bytes, params) -> np.ndarray:
    terms = watermark.extra_terms_from_factors(core, secret.directions(key, params))
    return terms.sum(axis=0) / np.sqrt(terms.shape[0])  # Y_i = Σ_ℓ z_iℓ / √k


def test_attempts_try_stronger_margins_with_the_first_candidate_then_the_floor_with_all() -> None:
    cands = policy.CANDIDATES
    got = policy.attempts(cands, True)
    *stronger, floor = secret.STRENGTHS
    assert list(secret.STRENGTHS) == sorted(secret.STRENGTHS, reverse=True) and floor == secret.TAU
    assert got == [(cands[0], t) for t in stronger] + [(c, floor) for c in cands]
    assert policy.attempts(cands, False) == [(c, None) for c in cands]


def test_policy_keeps_the_strongest_margin_within_tolerance() -> None:
    """The 12-layer random core cannot carry τ = 16 (capacity), carries τ = 10 at a ΔW change of
    ~0.68 and τ = 6 at ~0.51: a tolerance of 1 keeps 10, 0.6 keeps the floor, 0.3 none."""
    params, core, dk = _setup()
    res = policy.mark(core, PAYLOAD, params, policy.Tolerance(max_perturbation=1.0), detection=dk)
    r = res.record
    assert r.mode == policy.MODE_BOTH and r.secret_tau == 10.0, r
    assert [t.split(":")[0] for t in r.candidates_tried] == ["plain, secret tau=16", "plain, secret tau=10"], r
    assert r.candidates_tried[0].endswith("does not fit"), r
    y = _statistics(res.core, dk.key, params)
    assert np.min(y) >= 0.95 * 10.0, y  # embedded at the kept margin, not the floor
    assert watermark.extract_from_factors(res.core, params).payload == PAYLOAD

    floor = policy.mark(core, PAYLOAD, params, policy.Tolerance(max_perturbation=0.6), detection=dk).record
    assert floor.mode == policy.MODE_BOTH and floor.secret_tau == secret.TAU, floor
    assert floor.candidates_tried[1].startswith("plain, secret tau=10: ") and \
        floor.candidates_tried[1].endswith("(over tolerance)"), floor

    none = policy.mark(core, PAYLOAD, params, policy.Tolerance(max_perturbation=0.3), detection=dk).record
    assert none.mode == policy.MODE_FINGERPRINT and none.secret_tau is None, none
    assert len(none.candidates_tried) == len(secret.STRENGTHS), none  # no task eval: the first candidate only

    public_only = policy.mark(core, PAYLOAD, params, policy.Tolerance(max_perturbation=1.0)).record
    assert public_only.secret_tau is None and public_only.candidates_tried[0].startswith("plain: "), public_only


def test_a_stronger_margin_names_the_owner_through_noise_the_floor_does_not_survive() -> None:
    """Public mark stripped, then Gaussian noise of 4× ΔW's std: the floor margin's score falls
    under the naming line, τ = 10's stays above it (why the policy prefers the strongest margin)."""
    params, core, dk = _setup()
    scores = {}
    for tau in (10.0, secret.TAU):
        marked, _ = watermark.embed(core, PAYLOAD, params, extra=secret.at_strength(secret.directions(dk.key, params), tau))
        d = {n: f.delta() for n, f in marked.items()}
        stripped = {lay.name: strip_public(d[lay.name], params, i) for i, lay in enumerate(params.layers)}
        rng = np.random.default_rng(9)
        suspect = {n: noise(x, 4.0, rng) for n, x in stripped.items()}
        scores[tau] = secret.presence_from_deltas(suspect, dk.key, params).score
    assert scores[10.0] >= secret.NAME_THRESHOLD > scores[secret.TAU], scores
