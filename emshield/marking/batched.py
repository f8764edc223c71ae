"""Batched secret-tier scores: the presence scores of many detection keys on one suspect, for the
issuer's trace (`emshield trace`; spec/watermark.md, "Tracing (issuer side)").

The single-key read-out, ``secret.presence_from_deltas``, is the statistic of record: a public
verifier recomputes it from a disclosed key. Tracing needs it for every issuance, so here the
same directions (the same chaos streams, run in lock step for all keys) meet each layer's ΔW in
exact int8 matrix products on ΔW rounded to 21 bits per entry of its column's largest. The
scores agree with the read-out to within SCORE_ERROR; the trace re-reads every score near the
naming line with the read-out, which decides. torch (oneDNN's int8 kernels) is imported here
only: the log server imports ``secret`` and runs no torch.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from emshield.marking import watermark
from emshield.marking.chaos import ChaosLanes
from emshield.marking.params import LayerSpec, MarkingParams
from emshield.marking.secret import (KEY_BYTES, MAX_LAYERS, PURPOSE_LAYERS, PURPOSE_U, PURPOSE_V, STATISTICS, _chosen,
                                     _word_counts)

WORDS_BYTES = 64 << 20  # bound on the words one layer draws for one chunk of keys in scores
BLOCK_KEYS = 256  # keys per product block in scores (4,096 sign rows)
PRODUCT_WORKERS = 2  # threads running products in scores
IN_FLIGHT = 64  # blocks of packed words queued for the product workers at most
DIGIT = 127  # ΔW enters the products as s·Σ_i DIGIT^(d−1−i)·q_i, q_i int8 digits
DIGITS = 3  # d: each entry to 1/(2·DIGIT^d) of its column's largest (21 bits; 2 digits: 14 bits, spec/watermark.md)
SCORE_ERROR = 1e-3  # stated bound on |scores(…)[j] − presence_from_deltas(…, keys[j], …).score|


def scores(deltas: watermark.DeltaSource, keys: Sequence[bytes], params: MarkingParams,
           profile: dict[str, float] | None = None, *, digits: int = DIGITS) -> np.ndarray:
    """Presence scores T_j of many detection keys on one suspect, batched products per layer.

    Agrees with ``presence_from_deltas(deltas, key, params).score``, the statistic of record, to
    within SCORE_ERROR for each key (spec/watermark.md, "Tracing (issuer side)"): on each layer, a
    block of keys' direction signs (their ChaosLanes draws, exactly the single read-out's) meets
    the layer's ΔW, read once and rounded to ``digits`` int8 digits per entry (_Operand), in
    exact integer matrix products. The products run on PRODUCT_WORKERS threads of one torch
    thread each while this thread draws the next blocks' words: independent workers, not one
    thread team, so a busy machine slows them in proportion rather than stalling a team's
    barriers. ``profile``, if given, receives the seconds spent in stream set-up ("keys"),
    drawing words ("words") and the rest of the wall time, waiting for products ("products")."""
    get = deltas if callable(deltas) else deltas.__getitem__
    spent = {"keys": 0.0, "words": 0.0}
    total = np.zeros(len(keys))  # Σ z
    square = np.zeros(len(keys))  # Σ z²
    operands: dict[str, _Operand] = {}
    pending: deque = deque()

    def collect() -> None:
        rows, future = pending.popleft()
        z = future.result().reshape(rows.size, STATISTICS)
        total[rows] += z.sum(axis=1)
        square[rows] += (z * z).sum(axis=1)

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # here and in each worker (idle OpenMP teams spin); restored after
    try:
        with ThreadPoolExecutor(PRODUCT_WORKERS, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for layer, rows, words_u, words_v in _stacked_words(keys, params, spent):
                if layer.name not in operands:
                    operands[layer.name] = _Operand.of(get(layer.name), layer, digits)
                pending.append((rows, pool.submit(operands[layer.name].terms_of_words, words_u, words_v)))
                while len(pending) > IN_FLIGHT:  # bounded memory; enough to draw the next layer meanwhile
                    collect()
            while pending:
                collect()
    finally:
        torch.set_num_threads(threads)
    if profile is not None:
        profile.update(spent, products=time.perf_counter() - t0 - spent["keys"] - spent["words"])
    norms = np.sqrt(square)
    return np.where(norms > 0, total / np.where(norms > 0, norms, 1.0), 0.0)


def stacked_directions(keys: Sequence[bytes], params: MarkingParams, spent: dict[str, float] | None = None
                       ) -> Iterator[tuple[LayerSpec, np.ndarray, np.ndarray, np.ndarray]]:
    """(layer, key indices, u, v) blocks: the float32 rows ``directions(keys[j], params)`` has on
    that layer (u32, v32), stacked for up to BLOCK_KEYS keys j, STATISTICS rows per key: the signs
    ``scores`` multiplies, as the single read-out scales them. ``spent`` as in _stacked_words."""
    spent = {"keys": 0.0, "words": 0.0} if spent is None else spent
    for layer, rows, words_u, words_v in _stacked_words(keys, params, spent):
        yield layer, rows, _scaled(_bits(words_u, layer.out_features)), _scaled(_bits(words_v, layer.in_features))


def _scaled(bits: np.ndarray) -> np.ndarray:
    scale = np.float32(1.0 / math.sqrt(bits.shape[1]))
    return np.where(bits == 1, scale, -scale)


def _stacked_words(keys: Sequence[bytes], params: MarkingParams, spent: dict[str, float]
                   ) -> Iterator[tuple[LayerSpec, np.ndarray, np.ndarray, np.ndarray]]:
    """(layer, key indices, u words, v words) blocks: uint64 [keys, ⌈STATISTICS·out/64⌉] and
    [keys, ⌈STATISTICS·in/64⌉], the words each of up to BLOCK_KEYS keys that key the layer draws
    for it (_bits expands them to the signs' bits).

    Per chunk of keys, the layers, u- and v-streams of all keys run in lock step (ChaosLanes: the
    same streams as ChaosStream). Layer by layer, in the parameters' order, only the keys that key
    it draw its words, so every stream advances exactly as ``directions`` consumes it. ``spent``
    accumulates seconds under "keys" (stream set-up) and "words"."""
    for k in keys:
        if len(k) != KEY_BYTES:
            raise ValueError(f"detection key must be {KEY_BYTES} bytes")
    layers = params.layers
    wu, wv = _word_counts(params)
    chunk = max(BLOCK_KEYS, WORDS_BYTES // (8 * int((wu + wv).max(initial=1))))
    for start in range(0, len(keys), chunk):
        part = list(keys[start:start + chunk])
        t0 = time.perf_counter()
        su, sv = (ChaosLanes(part, params.backbone_id, "", purpose) for purpose in (PURPOSE_U, PURPOSE_V))
        chooser = ChaosLanes(part, params.backbone_id, "", PURPOSE_LAYERS) if len(layers) > MAX_LAYERS else None
        t1 = time.perf_counter()
        mask = np.ones((len(part), len(layers)), bool) if chooser is None else _chosen(chooser.words(len(layers)))
        spent["keys"] += t1 - t0
        spent["words"] += time.perf_counter() - t1
        for i, layer in enumerate(layers):
            owners = np.flatnonzero(mask[:, i])
            t1 = time.perf_counter()
            words_u, words_v = su.words(int(wu[i]), owners), sv.words(int(wv[i]), owners)
            spent["words"] += time.perf_counter() - t1
            for b in range(0, owners.size, BLOCK_KEYS):
                own = slice(b, b + BLOCK_KEYS)
                yield layer, start + owners[own], words_u[own], words_v[own]


def _bits(words: np.ndarray, width: int) -> np.ndarray:
    """[keys · STATISTICS, width] uint8 bits of each key's words, most significant first
    (ChaosStream.bits): STATISTICS rows of ``width`` per key, a last word's unused bits dropped."""
    bits = np.unpackbits(words.astype(">u8").view(np.uint8), axis=1)
    return bits[:, :STATISTICS * width].reshape(-1, width)


@dataclass(frozen=True)
class _Operand:
    """One layer's ΔW, read once, ready for exact integer products with many keys' signs.

    A = ΔW / (σ·√(m·n)), so that z = uᵀ·A·v with u, v the ±1 signs; transposed when m < n, so
    that the product contracts the longer side and the row-wise pass runs over the shorter. Each
    column c of A is rounded to s_c·N with integers |N| ≤ levels(d) and s_c = max|A_·c| / levels(d),
    and N = Σ_i DIGIT^(d−1−i)·q_i in int8 digits q_i. One int8 product per digit with the keys'
    sign bits B (int32 accumulation, exact) gives B·q_i; their sum, scaled per column in float32,
    doubled and less s·1ᵀN (S = 2B − 1), is S·A up to the rounding |A − s·N| ≤ s_c/2 =
    max|A_·c| / (2·levels(d)) per entry (spec/watermark.md) and float32 rounding."""

    digits: tuple  # (prepacked digit [columns, k] for torch.ops.onednn.qlinear_pointwise, its float32 scales)
    bias: object  # torch float32 [columns]: −s_c·Σ_a N_ac, the −1 of S = 2B − 1
    contract_u: bool  # the product contracts the u side (m ≥ n); else the v side
    shape: tuple[int, int]  # the layer's (m, n)

    @classmethod
    def of(cls, delta, layer: LayerSpec, digits: int = DIGITS) -> _Operand:
        delta = np.asarray(delta, dtype=np.float32)
        if delta.shape != (layer.out_features, layer.in_features):
            raise ValueError(f"layer {layer.name}: ΔW shape {delta.shape} does not match parameters")
        wide = delta.astype(np.float64)
        if not np.all(np.isfinite(wide)):
            raise ValueError(f"layer {layer.name}: ΔW has non-finite entries")
        sigma = math.sqrt(float(np.einsum("ij,ij->", wide, wide)) / delta.size)  # no BLAS: its idle threads spin
        if not sigma > 0.0:
            raise ValueError(f"layer {layer.name}: ΔW is zero, nothing to read or mark")
        contract_u = layer.out_features >= layer.in_features
        a = wide / (sigma * math.sqrt(delta.size))
        a = np.ascontiguousarray((a if contract_u else a.T).T)  # [columns, k]: one row per output column
        top = np.abs(a).max(axis=1, keepdims=True)
        scale = np.where(top > 0, top / levels(digits), 1.0)
        rest = np.clip(np.rint(a / scale), -levels(digits), levels(digits))
        bias = torch.from_numpy((-scale[:, 0] * rest.sum(axis=1)).astype(np.float32))
        out = []
        for i in range(digits):
            weight = float(DIGIT) ** (digits - 1 - i)
            q = np.rint(rest / weight)
            rest -= weight * q
            packed = torch.ops.onednn.qlinear_prepack(torch.from_numpy(q.astype(np.int8)),
                                                      [BLOCK_KEYS * STATISTICS, a.shape[1]])
            out.append((packed, torch.from_numpy((weight * scale[:, 0]).astype(np.float32))))
        assert not rest.any()
        return cls(tuple(out), bias, contract_u, delta.shape)

    def terms_of_words(self, words_u: np.ndarray, words_v: np.ndarray) -> np.ndarray:
        m, n = self.shape
        return self.terms(_bits(words_u, m), _bits(words_v, n))

    def terms(self, u_bits: np.ndarray, v_bits: np.ndarray) -> np.ndarray:
        """z = uᵀ·A·v (float64) for each row pair of the keys' bits (uint8, 1 ↔ +1): the products on
        the contracted side, summed and scaled per column in float32, then a float32 row-wise pass."""
        inner, outer = (u_bits, v_bits) if self.contract_u else (v_bits, u_bits)
        bits = torch.from_numpy(inner)  # uint8 activations B at scale 2: 2·B·q, then the bias
        zero = torch.zeros(self.bias.shape[0], dtype=torch.long)
        (packed, scale), *rest = self.digits
        product = torch.ops.onednn.qlinear_pointwise(bits, 2.0, 0, packed, scale, zero, self.bias, 1.0, 0,
                                                     torch.float32, "none", [], "")
        for packed, scale in rest:  # accumulates into product
            torch.ops.onednn.qlinear_pointwise.binary(bits, 2.0, 0, packed, scale, zero, product, None, 1.0, 0,
                                                      torch.float32, 1.0, 0, "sum", 1.0, "none", [], "")
        r = product.numpy()
        return (2.0 * np.einsum("ij,ij->i", r, outer, dtype=np.float32) - r.sum(axis=1)).astype(np.float64)


def levels(digits: int) -> int:
    """The largest |N| the products take in ``digits`` int8 digits: DIGIT^d (each digit then rounds
    to at most DIGIT in magnitude, the last to at most DIGIT // 2)."""
    return DIGIT ** digits
