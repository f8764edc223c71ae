"""The trace's re-read band against the batched read's stated error (spec/watermark.md, "Tracing
(issuer side)"): every batched score that could be a naming is re-read with the single-key read."""

from __future__ import annotations

import numpy as np

from _kit.cores import make_params
from emshield.issue import trace
from emshield.marking import batched, secret


def test_reread_band_is_a_thousand_stated_errors_wide_and_rarely_reread() -> None:
    assert trace.REREAD_BAND >= 1000 * batched.SCORE_ERROR
    assert secret.p_value(secret.NAME_THRESHOLD - trace.REREAD_BAND) < 2e-4  # ≈ 1 innocent re-read per 10^4


def test_a_score_at_the_naming_line_is_batched_to_within_the_band() -> None:
    """A suspect built to sit exactly at the naming line for one key: its batched score is inside the band."""
    params = make_params([(48, 48), (16, 48)] * 4)
    key = secret.detection_key(bytes(range(32)), "test-backbone", bytes(16), bytes(16)).key
    rng = np.random.default_rng(31)
    noise = {lay.name: rng.standard_normal((lay.out_features, lay.in_features)) for lay in params.layers}
    mark = {name: d.u.T @ d.v for name, d in secret.directions(key, params).layers.items()}  # Σ_i u_i v_iᵀ
    for scale in np.linspace(0.0, 2.0, 41):  # the mark's strength that puts the single read at the line
        suspect = {n: noise[n] + scale * mark[n] for n in noise}
        if secret.presence_from_deltas(suspect, key, params).score >= secret.NAME_THRESHOLD:
            break
    single = secret.presence_from_deltas(suspect, key, params).score
    assert secret.NAME_THRESHOLD <= single < secret.NAME_THRESHOLD + 1.0
    got = float(batched.scores(suspect, [key], params)[0])
    assert abs(got - single) <= batched.SCORE_ERROR
    assert got >= secret.NAME_THRESHOLD - trace.REREAD_BAND
