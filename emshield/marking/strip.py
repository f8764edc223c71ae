"""The public tier's stripping attack: what anyone who reads the log can do to a leaked copy.

The public tier's directions come from the published verification key, so a leaker can compute
every code statistic of its copy and move ΔW by the smallest change (Frobenius) that sets them all
to zero. Shipped, not hidden: the demo shows it (and that the secret tier survives it), the attack
bench measures it, and the tests use it; spec/watermark.md ("Threat model") says what it costs.
"""

from __future__ import annotations

import math

import numpy as np

from emshield.marking import watermark
from emshield.marking.params import MarkingParams


def strip_public_mark(deltas: dict[str, np.ndarray], params: MarkingParams, rounds: int = 3) -> dict[str, np.ndarray]:
    """ΔW per layer with every public code statistic Z_i driven to 0 by the minimum-norm change
    (a few Gauss-Newton rounds: the statistics are normalised by each layer's own RMS, which the
    change moves slightly)."""
    out = {k: np.array(v, dtype=np.float64) for k, v in deltas.items()}
    big_l = len(params.layers)
    for _ in range(rounds):
        z = watermark.extract_from_deltas(out, params).z
        gram = np.zeros((params.code_bits, params.code_bits))
        sig = {}
        for layer in params.layers:
            d = watermark.directions(params, layer)
            m, n = out[layer.name].shape
            sig[layer.name] = np.linalg.norm(out[layer.name]) / math.sqrt(m * n)
            gram += (d.u @ d.u.T) * (d.v @ d.v.T) / (sig[layer.name] ** 2 * big_l)
        lam = np.linalg.solve(gram, -z)
        for layer in params.layers:
            d = watermark.directions(params, layer)
            out[layer.name] = out[layer.name] + (d.u.T * lam) @ d.v / (sig[layer.name] * math.sqrt(big_l))
    return out
