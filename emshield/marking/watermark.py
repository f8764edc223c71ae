"""48-bit watermark carried by keyed bilinear statistics of ΔW (spec/watermark.md).

For each marked layer ℓ and code bit i the chaos FSM draws sign vectors u_iℓ ∈ {±1}^out/√out and
v_iℓ ∈ {±1}^in/√in. The statistic s_iℓ = u_iℓᵀ·ΔW_ℓ·v_iℓ, normalised by the layer's RMS
σ_ℓ = ‖ΔW_ℓ‖_F/√(out·in), is ~N(0, 1) for a core that was not marked with these directions;
the bit is the sign of Z_i = Σ_ℓ (s_iℓ/σ_ℓ) / √L. The statistics depend on ΔW only, so they
survive re-factorisation (B·R, R⁻¹·A) and merging, and from factors they cost (Bᵀu)ᵀ(A·v).

Embedding moves each Z_i to at least τ on its bit's side by the smallest change of the LoRA factors
(Gauss-Newton on balanced factors, rank unchanged); extraction is blind.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from emshield.core import Core, LoraFactors
from emshield.marking import ecc
from emshield.marking.chaos import ChaosStream
from emshield.marking.params import LayerSpec, MarkingParams

PURPOSE_U = "watermark-u"
PURPOSE_V = "watermark-v"
GN_ITERATIONS = 12
GN_TOLERANCE = 1e-4
MIN_MARGIN_FRACTION = 0.95  # of τ, or the core cannot carry the mark
MAX_RELATIVE_CHANGE = 1.0  # a change larger than ΔW itself replaces the core rather than marking it
INPUT_RIDGE = 0.1  # input metric C + ridge·tr(C)/n·I: bounded C⁻¹, and the mark keeps some of plain's spread

DeltaSource = Mapping[str, np.ndarray] | Callable[[str], np.ndarray]
"""Per-layer ΔW (out × in) by backbone tensor name; a callable lets the caller read tensors lazily."""


@dataclass(frozen=True)
class Directions:
    u: np.ndarray  # [bits, out] float64, entries ±1/√out
    v: np.ndarray  # [bits, in] float64, entries ±1/√in

    @functools.cached_property
    def u32(self) -> np.ndarray:
        return self.u.astype(np.float32)

    @functools.cached_property
    def v32(self) -> np.ndarray:
        return self.v.astype(np.float32)

    @classmethod
    def from_signs(cls, u: np.ndarray, v: np.ndarray) -> Directions:
        """Read-only directions ±1/√out, ±1/√in from sign arrays [rows, out] and [rows, in]."""
        d = cls(u / math.sqrt(u.shape[1]), v / math.sqrt(v.shape[1]))
        d.u.flags.writeable = False
        d.v.flags.writeable = False
        return d


def draw_directions(key: bytes, backbone_id: str, layer: LayerSpec, rows: int, purpose_u: str,
                    purpose_v: str) -> Directions:
    """``rows`` direction pairs on one layer: row-major sign draws from two chaos streams keyed by
    ``key`` and the layer's name (the public tier; the secret tier draws all its layers from one
    pair of streams per issuance, emshield.marking.secret)."""
    su = ChaosStream(key, backbone_id, layer.name, purpose_u)
    sv = ChaosStream(key, backbone_id, layer.name, purpose_v)
    u = su.rademacher(rows * layer.out_features).reshape(rows, layer.out_features)
    v = sv.rademacher(rows * layer.in_features).reshape(rows, layer.in_features)
    return Directions.from_signs(u, v)


@functools.lru_cache(maxsize=128)
def directions(params: MarkingParams, layer: LayerSpec) -> Directions:
    """u_iℓ then v_iℓ of the public tier, keyed by the verification key.

    Cached (read-only arrays): the directions depend on the public parameters only.
    """
    return draw_directions(params.verification_key, params.backbone_id, layer, params.code_bits, PURPOSE_U, PURPOSE_V)


@dataclass(frozen=True)
class ExtraStatistics:
    """Statistics embedded jointly with the public code bits (the secret tier, emshield.marking.secret).

    Statistic i is Σ_{ℓ ∈ layers} (u_iℓᵀ·ΔW_ℓ·v_iℓ / σ_ℓ) / √|layers| over its own directions; the
    embedding moves each to at least ``tau`` (all targets positive: the directions carry the key)."""

    layers: dict[str, Directions]  # by backbone tensor name; every entry has the same number of rows
    tau: float  # margin each statistic is embedded at

    @property
    def count(self) -> int:
        return next(iter(self.layers.values())).u.shape[0]


class CapacityError(ValueError):
    """The core's marked layers are too small (rank × size) to carry the code bits at margin τ."""


@dataclass(frozen=True)
class Extraction:
    """Blind read-out. ``accepted`` only when the code decodes and the chance match is below threshold."""

    z: np.ndarray  # per code bit, ~N(0,1) for an unmarked core
    bits: np.ndarray  # 1 where z > 0
    payload: int | None
    bit_errors: int | None  # raw bit errors against the decoded codeword
    p_value: float  # chance an unmarked core yields ANY payload this close (union bound over 2^48)
    p_value_payload: float  # chance an unmarked core is this close to THIS payload's codeword
    accepted: bool
    reason: str


def _layer_stats_delta(delta: np.ndarray, d: Directions) -> tuple[np.ndarray, float]:
    """Statistics in binary32, the read-out's cost (z agrees with binary64 to ~1e-5); σ accumulated in binary64."""
    delta32 = np.asarray(delta, dtype=np.float32)
    sigma = float(np.linalg.norm(delta32.astype(np.float64).ravel()) / math.sqrt(delta32.size))
    s = np.einsum("ij,ji->i", d.u32, delta32 @ d.v32.T)
    return s.astype(np.float64), sigma


def _product_norm(x: np.ndarray, y: np.ndarray) -> float:
    """‖X·Y‖_F from the thin factors, without forming X·Y: sqrt(Σ (XᵀX) ∘ (YYᵀ))."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    return math.sqrt(max(float(np.sum((x.T @ x) * (y @ y.T))), 0.0))


def _layer_stats_factors(f: LoraFactors, d: Directions) -> tuple[np.ndarray, float]:
    a = f.a.astype(np.float64)
    b = f.b.astype(np.float64)
    m, n = f.shape
    sigma = abs(f.scale) * _product_norm(b, a) / math.sqrt(m * n)
    s = f.scale * np.sum((b.T @ d.u.T) * (a @ d.v.T), axis=0)
    return s, sigma


def _combine(stats: list[tuple[np.ndarray, float]], names: list[str]) -> np.ndarray:
    total = 0.0
    for (s, sigma), name in zip(stats, names):
        if not sigma > 0.0:
            raise ValueError(f"layer {name}: ΔW is zero, nothing to read or mark")
        total = total + s / sigma
    return np.asarray(total) / math.sqrt(len(stats))


def chance_p_values(bit_errors: int, n_bits: int) -> tuple[float, float]:
    """(any-payload, this-payload) chance of ≤ bit_errors errors from fair coin bits."""
    tail = sum(math.comb(n_bits, k) for k in range(bit_errors + 1))
    p_payload = tail / 2.0**n_bits
    return min(1.0, p_payload * 2.0**ecc.PAYLOAD_BITS), p_payload


def _decide(z: np.ndarray, params: MarkingParams) -> Extraction:
    bits = (z > 0).astype(np.uint8)
    try:
        dec = ecc.decode(bits, params.rs_nsym)
    except ecc.DecodeRefused as exc:
        return Extraction(z, bits, None, None, 1.0, 1.0, False, f"error correction refused: {exc}")
    p_any, p_payload = chance_p_values(dec.corrected_bits, params.code_bits)
    accepted = p_any <= 10.0**params.accept_log10_p
    reason = "ok" if accepted else f"chance-match p-value {p_any:.3g} above 1e{params.accept_log10_p}"
    return Extraction(z, bits, dec.payload, dec.corrected_bits, p_any, p_payload, accepted, reason)


def extract_from_factors(core: Core, params: MarkingParams) -> Extraction:
    """Read the mark from LoRA factors (cheap: no ΔW is formed)."""
    stats = []
    for layer in params.layers:
        f = _layer(core, layer)
        stats.append(_layer_stats_factors(f, directions(params, layer)))
    return _decide(_combine(stats, [lay.name for lay in params.layers]), params)


def extract_from_deltas(deltas: DeltaSource, params: MarkingParams) -> Extraction:
    """Read the mark from per-layer ΔW = W_suspect − W_backbone (e.g. a merged model)."""
    get = deltas if callable(deltas) else deltas.__getitem__
    stats = []
    for layer in params.layers:
        delta = np.asarray(get(layer.name))
        if delta.shape != (layer.out_features, layer.in_features):
            raise ValueError(f"layer {layer.name}: ΔW shape {delta.shape} does not match parameters")
        stats.append(_layer_stats_delta(delta, directions(params, layer)))
    return _decide(_combine(stats, [lay.name for lay in params.layers]), params)


def _layer(core: Core, layer: LayerSpec) -> LoraFactors:
    f = _layer_by_name(core, layer.name)
    if f.shape != (layer.out_features, layer.in_features):
        raise ValueError(f"layer {layer.name}: core shape {f.shape} does not match parameters")
    return f


@dataclass(frozen=True)
class EmbedReport:
    signs: np.ndarray  # ±1 per code bit
    z_before: np.ndarray
    z_after: np.ndarray
    relative_change: dict[str, float]  # ‖ΔW' − ΔW‖_F / ‖ΔW‖_F per layer
    iterations: int
    relative_output_change: dict[str, float] | None = None  # sqrt(E‖δΔW·x‖² / E‖ΔW·x‖²), input-aware mode
    extra_z_before: np.ndarray | None = None  # the jointly embedded statistics (secret tier), if any
    extra_z_after: np.ndarray | None = None
    extra_terms_after: np.ndarray | None = None  # their per-layer terms [layers, count] (extra_terms_from_factors)

    @property
    def min_margin(self) -> float:
        """Smallest Z on its bit's side after embedding (τ when the target was reached)."""
        return float(np.min(self.signs * self.z_after))


def extra_terms_from_factors(core: Core, extra: ExtraStatistics) -> np.ndarray:
    """Per-layer terms u_iℓᵀ·ΔW_ℓ·v_iℓ / σ_ℓ of ``extra`` from LoRA factors: [layers, count], in
    ``extra.layers`` order. Statistic i is column i's sum / √layers."""
    rows = []
    for name, d in extra.layers.items():
        f = _layer_by_name(core, name)
        if f.shape != (d.u.shape[1], d.v.shape[1]):
            raise ValueError(f"layer {name}: core shape {f.shape} does not match the directions")
        s, sigma = _layer_stats_factors(f, d)
        rows.append(_normalised(s, sigma, name))
    return np.vstack(rows)


def extra_terms_from_deltas(deltas: DeltaSource, extra: ExtraStatistics) -> np.ndarray:
    """Per-layer terms of ``extra`` from per-layer ΔW (a merged model), as extra_terms_from_factors."""
    get = deltas if callable(deltas) else deltas.__getitem__
    rows = []
    for name, d in extra.layers.items():
        delta = np.asarray(get(name))
        if delta.shape != (d.u.shape[1], d.v.shape[1]):
            raise ValueError(f"layer {name}: ΔW shape {delta.shape} does not match the directions")
        rows.append(_normalised(*_layer_stats_delta(delta, d), name))
    return np.vstack(rows)


def _normalised(s: np.ndarray, sigma: float, name: str) -> np.ndarray:
    if not sigma > 0.0:
        raise ValueError(f"layer {name}: ΔW is zero, nothing to read or mark")
    return s / sigma


def _layer_by_name(core: Core, name: str) -> LoraFactors:
    if name not in core:
        raise ValueError(f"core has no layer {name}")
    return core[name]


@dataclass
class _Work:
    """One layer during embedding: balanced factors ΔW = P·Q and its directions."""

    p: np.ndarray
    q: np.ndarray
    gauge: np.ndarray | None  # G⁻¹ with B = P·G⁻¹ for the input factors (None if rank-deficient)
    d: Directions  # every direction pair on this layer: the public code bits', then the extra ones
    rows: np.ndarray  # constraint index of each direction pair (distinct within a layer)
    coef: np.ndarray  # weight of each pair's s/σ in its constraint: 1/√(layers the constraint spans)
    uu: np.ndarray  # U·Uᵀ
    vv: np.ndarray  # V·Vᵀ, or V·M⁻¹·Vᵀ in input-aware mode
    vc: np.ndarray | None = None  # V·M⁻¹ (input-aware mode only; M the normalised input metric)


def _balanced(f: LoraFactors) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """P (out×r), Q (r×in) with P·Q = ΔW and PᵀP = QQᵀ (the SVD split), and the gauge back to B.

    Returns G⁻¹ with B = P·G⁻¹ and scale·A = G·Q, so the marked factors can be handed back in the
    input's own gauge (a trained peft adapter keeps its A/B magnitudes); None when ΔW has lower
    rank than the factors and the gauge is not invertible.
    """
    qb, rb = np.linalg.qr(f.b.astype(np.float64))
    qa, ra = np.linalg.qr(f.a.astype(np.float64).T)
    x, s, yt = np.linalg.svd(f.scale * (rb @ ra.T))
    root = np.sqrt(s)
    gauge = None
    if s.size and s[-1] > 1e-10 * s[0]:
        gauge = (x.T @ rb) / root[:, None]
    return qb @ (x * root), (root[:, None] * yt) @ qa.T, gauge


def _psd_root(moment: np.ndarray) -> np.ndarray:
    """C^{1/2} of a symmetric positive semi-definite matrix (negative rounding noise clipped)."""
    vals, vecs = np.linalg.eigh(np.asarray(moment, dtype=np.float64))
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def _input_aware(w: _Work, moment: np.ndarray, ridge: float) -> None:
    """Switch a layer to input-aware steps: Q moves along M⁻¹·v instead of v, with
    M = (C + ridge·tr(C)/n·I) / ((1 + ridge)·tr(C)/n) the inputs' second moment normalised to mean
    eigenvalue 1 (so the A side is weighed against the B side's plain metric); P moves as in plain mode."""
    if not ridge > 0.0:
        raise ValueError(f"input ridge must be positive, got {ridge}")
    n = w.q.shape[1]
    moment = np.asarray(moment, dtype=np.float64)
    if moment.shape != (n, n) or not np.allclose(moment, moment.T) or not np.all(np.isfinite(moment)):
        raise ValueError(f"input second moment must be a finite symmetric {n}×{n} matrix")
    floor = ridge * max(float(np.trace(moment)) / n, 1e-300)
    metric = (moment + floor * np.eye(n)) / (float(np.trace(moment)) / n + floor)
    w.vc = np.linalg.solve(metric, w.d.v.T).T
    w.vv = w.vc @ w.d.v.T


def _layer_work(core: Core, layer: LayerSpec, params: MarkingParams, extra: ExtraStatistics | None) -> _Work:
    """A layer's balanced factors and all its direction pairs: the n_code public ones (constraints
    0..n_code−1, weight 1/√L), then those of ``extra`` on this layer (constraints n_code.., weight
    1/√|extra layers|)."""
    f = _layer(core, layer)
    d = directions(params, layer)
    n = params.code_bits
    rows, coef = np.arange(n), np.full(n, 1.0 / math.sqrt(len(params.layers)))
    if extra is not None and layer.name in extra.layers:
        e = extra.layers[layer.name]
        d = Directions(np.vstack([d.u, e.u]), np.vstack([d.v, e.v]))
        rows = np.concatenate([rows, n + np.arange(extra.count)])
        coef = np.concatenate([coef, np.full(extra.count, 1.0 / math.sqrt(len(extra.layers)))])
    p, q, gauge = _balanced(f)
    return _Work(p, q, gauge, d, rows, coef, d.u @ d.u.T, d.v @ d.v.T)


def embed(
    core: Core,
    payload: int,
    params: MarkingParams,
    input_moments: Mapping[str, np.ndarray] | None = None,
    ridge: float = INPUT_RIDGE,
    extra: ExtraStatistics | None = None,
) -> tuple[dict[str, LoraFactors], EmbedReport]:
    """Marked core (unmarked layers passed through) and a report of what changed.

    Targets T_i = b_i·max(τ, b_i·Z_i) with b_i = ±1 the code bit: bits already on their side by τ
    keep their value. Each Gauss-Newton step solves the linearised constraints Z(P+dP, Q+dQ) = T for
    the smallest Σ_ℓ ‖dP_ℓ‖² + ‖dQ_ℓ‖² (Levenberg-Marquardt damped). Where the layers are too small
    to carry the code bits at margin τ the report's ``min_margin`` says how far it got.

    Input-aware mode (``input_moments``: per layer E[x·xᵀ] of the layer's inputs on task data): the
    A side's change is measured in the inputs' metric (‖dQ·M^½‖² instead of ‖dQ‖², M the ridged,
    normalised second moment, ``ridge`` its ρ), so the mark leans away from directions the task's
    inputs excite. Extraction is unchanged.

    ``extra`` (the secret tier): further statistics embedded in the same steps, each with target
    max(τ, Z) — one constraint set, one embedding, so the two tiers share the change.
    """
    signs = ecc.encode(payload, params.rs_nsym).astype(np.float64) * 2 - 1
    if extra is not None:
        unknown = sorted(set(extra.layers) - {lay.name for lay in params.layers})
        if unknown:
            raise ValueError(f"extra statistics on layers the parameters do not mark: {unknown[:3]}")
    work = []
    for layer in params.layers:
        w = _layer_work(core, layer, params, extra)
        if input_moments is not None:
            if layer.name not in input_moments:
                raise ValueError(f"no input second moment for layer {layer.name}")
            _input_aware(w, input_moments[layer.name], ridge)
        work.append(w)
    n_code = params.code_bits
    n_all = n_code + (0 if extra is None else extra.count)

    def current() -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], list[float]]:
        z = np.zeros(n_all)
        a_all, c_all, sig = [], [], []
        for w in work:
            a = w.q @ w.d.v.T  # [r, pairs]
            c = w.p.T @ w.d.u.T  # [r, pairs]
            m, n = w.p.shape[0], w.q.shape[1]
            sigma = _product_norm(w.p, w.q) / math.sqrt(m * n)
            if not sigma > 0.0:
                raise ValueError("a marked layer has ΔW = 0 (zero): train the core before marking")
            z[w.rows] += np.sum(a * c, axis=0) * w.coef / sigma
            a_all.append(a)
            c_all.append(c)
            sig.append(sigma)
        return z, a_all, c_all, sig

    before = [(w.p, w.q) for w in work]
    z0, a_all, c_all, sig = current()
    all_signs = np.concatenate([signs, np.ones(n_all - n_code)])
    margins = np.concatenate([np.full(n_code, params.tau), np.full(n_all - n_code, 0.0 if extra is None else extra.tau)])
    target = all_signs * np.maximum(margins, all_signs * z0)
    z, iterations, damping = z0, 0, 1e-9
    for iterations in range(1, GN_ITERATIONS + 1):
        gram = np.zeros((n_all, n_all))
        for w, a, c, sigma in zip(work, a_all, c_all, sig):
            block = (w.uu * (a.T @ a) + (c.T @ c) * w.vv) * np.outer(w.coef, w.coef) / (sigma * sigma)
            gram[np.ix_(w.rows, w.rows)] += block
        scale = np.trace(gram) / len(gram)
        residual = float(np.linalg.norm(target - z))
        saved = [(w.p, w.q) for w in work]
        while True:  # Levenberg-Marquardt: raise the damping until the step reduces the residual
            lam = np.linalg.solve(gram + np.eye(len(gram)) * (damping * scale), target - z)
            for w, a, c, sigma in zip(work, a_all, c_all, sig):
                k = lam[w.rows] * w.coef / sigma
                w.p = w.p + w.d.u.T @ (k[:, None] * a.T)
                w.q = w.q + (c * k) @ (w.d.v if w.vc is None else w.vc)
            new = current()
            if float(np.linalg.norm(target - new[0])) < residual or damping > 1e6:
                break
            for w, (p0, q0) in zip(work, saved):
                w.p, w.q = p0, q0
            damping *= 10.0
        z, a_all, c_all, sig = new
        damping = max(damping / 10.0, 1e-9)
        if np.max(np.abs(z - target) / margins) < GN_TOLERANCE:
            break
    out: dict[str, LoraFactors] = dict(core)
    change, output_change = {}, {}
    for layer, w, (p0, q0) in zip(params.layers, work, before):
        f = core[layer.name]
        b, a = (w.p, w.q) if w.gauge is None else (w.p @ w.gauge, np.linalg.solve(w.gauge, w.q))
        out[layer.name] = LoraFactors(a=(a / f.scale).astype(f.a.dtype), b=b.astype(f.b.dtype), scale=f.scale)
        new = out[layer.name]
        x = np.hstack([new.b.astype(np.float64) * new.scale, -p0])
        y = np.vstack([new.a, q0])
        change[layer.name] = _product_norm(x, y) / _product_norm(p0, q0)
        if input_moments is not None:
            root = _psd_root(input_moments[layer.name])
            output_change[layer.name] = _product_norm(x, y @ root) / _product_norm(p0, q0 @ root)
    terms = None if extra is None else extra_terms_from_factors(out, extra)
    report = EmbedReport(signs, z0[:n_code], extract_from_factors(out, params).z, change, iterations,
                         output_change or None,
                         None if extra is None else z0[n_code:],
                         None if extra is None else terms.sum(axis=0) / math.sqrt(len(extra.layers)), terms)
    # The guard measures what the mark costs: ΔW itself, or in input-aware mode the layer outputs.
    worst = max((output_change or change).values())
    short = report.min_margin < MIN_MARGIN_FRACTION * params.tau
    if extra is not None and report.extra_z_after is not None:
        short = short or float(np.min(report.extra_z_after)) < MIN_MARGIN_FRACTION * extra.tau
    if short or worst > MAX_RELATIVE_CHANGE:
        raise CapacityError(
            f"core cannot carry {n_all} statistics at their margins (τ={params.tau}): reached "
            f"{report.min_margin:.3f} on the code bits with a relative {'output' if output_change else 'ΔW'} change of up to "
            f"{worst:.3f}; use a fingerprint only, fewer parity bytes or a smaller τ"
        )
    return out, report
