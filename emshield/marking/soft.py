"""Soft-decision reading of the watermark payload (spec/watermark.md, "Soft-decision reading").

The hard reading throws the statistics' magnitudes away: one Reed–Solomon decode of the signs,
refused beyond 5 byte errors. Here the magnitudes |Z_i| are reliabilities:

1. **Candidates** (deterministic): for every pattern of flips of the ``CHASE_BITS`` least reliable
   bits (Chase), decode the word with the ``f`` least reliable bytes erased, for f = 0 … nsym
   (Forney's generalised minimum distance decoding: RS(6 + nsym, 6) is MDS, so any six correct
   bytes determine the codeword). Every decoded payload is a candidate.
2. **Score** of a candidate codeword with signs c_i = ±1: ``S = Σ c_i·Z_i / ‖Z‖``.
3. **Chance**: for a core not marked with this codeword (unmarked, or marked under other
   directions), the signs of the Z_i are independent fair coins given their magnitudes (each
   direction pair is symmetric), so by Hoeffding's inequality P(S ≥ s) ≤ exp(−s²/2) for ONE
   fixed codeword, whatever the magnitudes. A device can only be named through a logged issuance,
   so the chance that ANY logged issuance scores s is at most ``count·exp(−s²/2)`` with ``count``
   the number of issuances that could be named (the verifier uses the checkpoint's tree size: every
   leaf counted once, over all issuers): that is the p-value, and it holds however many candidates
   the search tried, because only a logged issuance can be named. The best of many candidates is
   not a fixed codeword: to claim that the suspect carries *some* mark whatever the log holds,
   the count is every payload (2^48).
4. **Margin**: the best candidate is read only if every other significant candidate at least
   ``SEPARATION`` bits away from it (another mark, not one of its code neighbours) scores at least
   ``SCORE_MARGIN`` less: two devices' marks averaged read as nothing rather than as a guess.

Pure functions over arrays; the verifier decides what a reading names.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np

from emshield.marking import ecc

OSD_ORDER = 2  # flip patterns of up to two of the 48 most reliable independent positions
SCORE_MARGIN = 3.0  # the best candidate's score over any other mark's, or nothing is read
SEPARATION = 48  # bits between codewords for a candidate to count as another mark
LN10 = math.log(10.0)


@dataclass(frozen=True)
class Candidate:
    payload: int
    score: float  # Σ c_i Z_i / ‖Z‖
    bit_errors: int  # hard signs against this codeword


@dataclass(frozen=True)
class SoftReading:
    """The best candidate, how far it leads, and its chance-match p-value (as log10)."""

    payload: int | None  # the best candidate, when it leads by the margin and is significant
    best: Candidate | None  # the best candidate, read or not
    runner_up_score: float  # the best other significant mark's score (0 when there is none)
    candidates: int  # distinct payloads the search produced
    count: int  # issuances counted in the p-value
    log10_p: float  # log10 of min(1, count·exp(−S²/2)) for the best candidate
    log10_p_any: float  # log10 of min(1, 2^48·exp(−S²/2)): the chance of ANY payload scoring this
    accepted: bool  # significant over the counted issuances and unambiguous: worth looking up
    reason: str

    @property
    def decoded(self) -> bool:
        """The suspect carries a mark of these parameters whatever the log holds: accepted, and
        significant over every possible payload (the search picks the best of many codewords)."""
        return self.accepted and self.log10_p_any <= self.log10_threshold

    log10_threshold: float = 0.0

    @property
    def p_value(self) -> float:
        return 10.0 ** self.log10_p


def log10_chance(s: float, count: int) -> float:
    """log10 of min(1, count·exp(−s²/2)) (0 for s ≤ 0: no evidence at all)."""
    if s <= 0.0:
        return 0.0
    return min(0.0, math.log10(max(count, 1)) - s * s / (2.0 * LN10))


@functools.lru_cache(maxsize=32)
def generator(nsym: int) -> np.ndarray:
    """The binary generator matrix [48, n_code] of the payload code: RS encoding is linear over
    GF(2^8), hence over GF(2), so row k is the codeword of the payload with only bit k set."""
    rows = [ecc.encode(1 << (ecc.PAYLOAD_BITS - 1 - k), nsym) for k in range(ecc.PAYLOAD_BITS)]
    g = np.array(rows, dtype=np.uint8)
    g.flags.writeable = False
    return g


def _systematic(g: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian elimination over GF(2) of g's columns taken in ``order``: returns the row-reduced
    matrix (columns still in ``order``) and the positions (in ``order``) of its 48 pivot columns,
    the most reliable independent positions."""
    m = g[:, order].copy()
    k = m.shape[0]
    pivots = []
    row = 0
    for col in range(m.shape[1]):
        if row == k:
            break
        hits = np.nonzero(m[row:, col])[0]
        if hits.size == 0:
            continue
        r = row + int(hits[0])
        if r != row:
            m[[row, r]] = m[[r, row]]
        others = np.nonzero(m[:, col])[0]
        others = others[others != row]
        m[others] ^= m[row]
        pivots.append(col)
        row += 1
    if row != k:
        raise ValueError("payload code generator is not of full rank")
    return m, np.array(pivots)


def candidates(z: np.ndarray, nsym: int) -> list[Candidate]:
    """Distinct candidate payloads, best score first: ordered-statistics decoding of order
    ``OSD_ORDER`` of the code's binary image (a [n_code, 48] binary linear code).

    The positions are sorted by reliability |Z_i| (stable); the 48 most reliable independent
    positions carry the hard signs; every pattern of at most OSD_ORDER flips among them is
    re-encoded. Every candidate is a codeword; the hard Reed–Solomon decode is added when it succeeds.
    """
    z = np.asarray(z, dtype=np.float64)
    n = ecc.code_length_bits(nsym)
    if z.shape != (n,):
        raise ValueError(f"expected {n} statistics, got {z.shape}")
    hard = (z > 0).astype(np.uint8)
    order = np.argsort(-np.abs(z), kind="stable")
    sys_m, pivots = _systematic(generator(nsym), order)
    info = hard[order][pivots]  # hard signs at the most reliable independent positions
    k = len(pivots)
    flips = [f for r in range(OSD_ORDER + 1) for f in itertools.combinations(range(k), r)]
    patterns = np.zeros((len(flips), k), dtype=np.uint8)
    for row, f in enumerate(flips):
        patterns[row, list(f)] = 1
    words_sorted = ((patterns ^ info) @ sys_m) & 1  # codewords, positions in ``order``
    words = np.empty_like(words_sorted)
    words[:, order] = words_sorted
    try:  # the hard decode too, when it succeeds
        words = np.vstack([words, ecc.encode(ecc.decode(hard, nsym).payload, nsym)[None, :]])
    except ecc.DecodeRefused:
        pass
    weights = 1 << np.arange(ecc.PAYLOAD_BITS - 1, -1, -1, dtype=np.uint64)
    payloads = (words[:, : ecc.PAYLOAD_BITS].astype(np.uint64) * weights).sum(axis=1)
    norm = float(np.linalg.norm(z))
    scores = (words.astype(np.float64) * 2.0 - 1.0) @ z / norm if norm > 0 else np.zeros(len(words))
    errors = np.sum(words != hard, axis=1)
    best: dict[int, Candidate] = {}
    for p, sc, e in zip(payloads.tolist(), scores.tolist(), errors.tolist()):
        best.setdefault(int(p), Candidate(int(p), float(sc), int(e)))
    out = sorted(best.values(), key=lambda c: (-c.score, c.payload))
    return out


def read(z: np.ndarray, nsym: int, count: int, log10_threshold: float) -> SoftReading:
    """The soft reading: the best candidate is read iff its p-value (``count`` issuances counted)
    is at most 10^log10_threshold AND no *other mark* comes within SCORE_MARGIN of its score.

    Another mark is a candidate that is significant itself (p-value within the threshold) and at
    least SEPARATION bits from the best: a second device's codeword is an independent draw (64 bits
    away on average), while the search's candidates near the best are its code neighbours, which
    share its evidence and say nothing new."""
    found = candidates(z, nsym)
    if not found:
        return SoftReading(None, None, 0.0, 0, count, 0.0, 0.0, False,
                           "no candidate payload: the statistics decode to no codeword", log10_threshold)
    best = found[0]
    lp = log10_chance(best.score, count)
    lp_any = log10_chance(best.score, 1 << ecc.PAYLOAD_BITS)
    word = ecc.encode(best.payload, nsym)
    others = [c for c in found[1:] if log10_chance(c.score, count) <= log10_threshold
              and int(np.sum(ecc.encode(c.payload, nsym) != word)) >= SEPARATION]
    runner = others[0].score if others else 0.0
    rivals = [c for c in others if c.score > best.score - SCORE_MARGIN]
    if lp > log10_threshold:
        why = (f"weak evidence: the best candidate's chance-match p-value 10^{lp:.1f} is above the threshold "
               f"10^{log10_threshold:.1f}")
        return SoftReading(None, best, runner, len(found), count, lp, lp_any, False, why, log10_threshold)
    if rivals:
        why = (f"ambiguous: another mark (score {runner:.2f}) comes within {SCORE_MARGIN:g} of the best "
               f"(score {best.score:.2f}), e.g. two devices' marks mixed")
        return SoftReading(None, best, runner, len(found), count, lp, lp_any, False, why, log10_threshold)
    return SoftReading(best.payload, best, runner, len(found), count, lp, lp_any, True, "ok", log10_threshold)
