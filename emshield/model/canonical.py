"""Canonicalisation of a suspect Llama model against its public backbone (spec/verify.md §2.1).

A leaker can rewrite a model without changing its outputs: permute attention heads (within the
GQA structure) and the value/output head dimensions, rotate and rescale RoPE pairs of queries
against keys, permute and rescale MLP units, add MLP units or heads that contribute nothing, apply
a signed permutation (or any orthogonal map) to the residual stream, and fold RMSNorm weights into
the matrices that read them. ΔW = W_suspect − W_backbone formed without undoing this is noise.

The backbone is public, so each symmetry's parameters are *fitted* to it — deterministically and
always (an unrewritten model is mapped to itself up to the fits' tiny projections):

1. residual stream: R = argmin ‖E_b·R − E_s‖ over the token embeddings (which no core marks);
   writers (o_proj, down_proj) become R⁻ᵀ·W; readers (q, k, v, gate, up) become
   W·diag(w_s)·Q·diag(1/w_b) with Q the orthogonal polar factor of Rᵀ and w the reading
   RMSNorm's weights (so folded or rescaled norm weights are undone);
2. attention, per layer: key heads matched to the backbone's by the residual of a per-RoPE-pair
   complex-scalar fit (a pair of rows (j, j + d/2) is multiplied by s·e^{iα} by a rotation and
   scaling that RoPE commutes with), query heads matched within their matched group the same way,
   each pair divided by its fitted scalar; value rows matched (signed, scaled) by |cosine| within
   each matched group, each rescaled to the backbone's, and the output projection's columns
   permuted and rescaled to match;
3. MLP, per layer: units matched by the cosine of their gate rows (gate rows cannot be scaled:
   SiLU is not homogeneous), up rows and down columns rescaled to the backbone's;
4. units (heads, MLP units) of the suspect that match none of the backbone's are dropped: a
   function-preserving rewrite can add only units that contribute nothing.

Matching is greedy on the cost matrix (the globally best pair first), which is exact when the
true pairs stand out, as they do for a rewrite of a model that differs from the backbone by a
core. Pure numpy: the verifier imports it (no torch, no training code).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

EMBED = "model.embed_tokens.weight"
LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.weight")
READERS_ATTN = ("q", "k", "v")
SAME_AS_BACKBONE = 1e-9  # relative difference below which a canonical tensor is the backbone's
MAX_EMBED_ROWS_PER_DIM = 16  # the residual fit uses at most 16·hidden evenly spaced embedding rows


class CanonicalError(ValueError):
    """The suspect cannot be aligned to the backbone (it is not a rewrite of a merge of it)."""


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int

    @classmethod
    def from_config(cls, cfg: dict) -> LlamaShape:
        """From a Hugging Face ``config.json`` of a Llama-family model."""
        try:
            hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            kv = int(cfg.get("num_key_value_heads") or heads)
            hd = int(cfg.get("head_dim") or hidden // heads)
            return cls(hidden, heads, kv, hd, int(cfg["num_hidden_layers"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CanonicalError(f"backbone config lacks Llama shape fields: {exc}") from exc


Getter = Callable[[str], np.ndarray]


def greedy_match(cost: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (row, column), cheapest first, each row and column used once, until every column
    (backbone unit) is matched. Ties break by index (a stable sort), so the result is deterministic."""
    rows, cols = cost.shape
    if rows < cols:
        raise CanonicalError(f"the suspect has {rows} units where the backbone has {cols}")
    order = np.argsort(cost, axis=None, kind="stable")
    used_r, used_c = np.zeros(rows, bool), np.zeros(cols, bool)
    pairs = []
    for flat in order:
        r, c = divmod(int(flat), cols)
        if used_r[r] or used_c[c]:
            continue
        used_r[r] = used_c[c] = True
        pairs.append((r, c))
        if len(pairs) == cols:
            break
    return pairs


def _unit_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms > 0, norms, 1.0)


def _pairs_complex(block: np.ndarray, head_dim: int) -> np.ndarray:
    """Rows (j, j + d/2) of each head as one complex row: [heads, d/2, in]."""
    half = head_dim // 2
    h = block.reshape(-1, head_dim, block.shape[-1])
    return h[:, :half] + 1j * h[:, half:]


def _pair_fit(zs: np.ndarray, zb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, the complex scalar λ = ⟨zb, zs⟩/‖zb‖² and the relative residual of zs − λ·zb.
    zs: [d/2, in], zb: [d/2, in]."""
    den = np.sum(np.abs(zb) ** 2, axis=1)
    lam = np.sum(np.conj(zb) * zs, axis=1) / np.where(den > 0, den, 1.0)
    res = np.sum(np.abs(zs - lam[:, None] * zb) ** 2) / max(float(np.sum(np.abs(zs) ** 2)), 1e-300)
    return lam, np.asarray(res)


def _head_costs(zs: np.ndarray, zb: np.ndarray) -> np.ndarray:
    """[suspect heads, backbone heads] relative residual of the per-pair fits."""
    out = np.empty((zs.shape[0], zb.shape[0]))
    for i in range(zs.shape[0]):
        for j in range(zb.shape[0]):
            out[i, j] = _pair_fit(zs[i], zb[j])[1]
    return out


REPORT_TOLERANCE = 0.05  # a fitted scale this far from 1 is reported as undone (the fit applies anyway;
# a core alone moves the fits by a few percent)


def _undo_pairs(zs: np.ndarray, zb: np.ndarray, head_dim: int) -> tuple[np.ndarray, int]:
    """One head's rows with each RoPE pair divided by its fitted complex scalar: [d, in] real, and
    how many pairs were rotated or rescaled."""
    lam, _ = _pair_fit(zs, zb)
    lam = np.where(np.abs(lam) > 0, lam, 1.0)
    z = zs / lam[:, None]
    return np.concatenate([z.real, z.imag], axis=0), int(np.sum(np.abs(lam - 1) > REPORT_TOLERANCE))


def _scale_to(s: np.ndarray, b: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """Per row (axis=1) or column (axis=0) signed least-squares scale c with s ≈ c·b; returns s / c
    and how many were rescaled."""
    den = np.sum(b * b, axis=axis)
    c = np.sum(s * b, axis=axis) / np.where(den > 0, den, 1.0)
    c = np.where(np.abs(c) > 0, c, 1.0)
    return s / (c[:, None] if axis == 1 else c[None, :]), int(np.sum(np.abs(c - 1) > REPORT_TOLERANCE))


@dataclass
class Canonicaliser:
    """The suspect's tensors mapped into the backbone's coordinates, one layer at a time (cached).

    ``suspect``/``backbone`` read a tensor by name (float64 numpy); ``names`` is the suspect's
    tensor names. ``report`` counts what was undone (for the verdict).
    """

    suspect: Getter
    backbone: Getter
    names: set[str]
    shape: LlamaShape
    report: dict[str, int] = field(default_factory=dict)
    _q: np.ndarray | None = None
    _rinv_t: np.ndarray | None = None
    _layers: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def _count(self, key: str, n: int) -> None:
        if n:
            self.report[key] = self.report.get(key, 0) + int(n)

    # -- 1. residual stream ---------------------------------------------------------------------

    def _residual(self) -> None:
        if self._q is not None:
            return
        eb, es = self.backbone(EMBED), self.suspect(EMBED)
        if es.shape != eb.shape:
            raise CanonicalError(f"token embeddings of shape {es.shape}, the backbone's are {eb.shape}")
        step = max(1, eb.shape[0] // (MAX_EMBED_ROWS_PER_DIM * eb.shape[1]))
        r, *_ = np.linalg.lstsq(eb[::step], es[::step], rcond=None)  # E_s ≈ E_b·R
        u, sv, vt = np.linalg.svd(r.T)
        self._q = u @ vt  # orthogonal polar factor of Rᵀ
        self._rinv_t = np.linalg.inv(r.T)
        moved = int(np.sum(np.abs(np.diag(self._q)) < 0.5))
        flipped = int(np.sum(np.diag(self._q) < -0.5))
        self._count("residual_channels_moved", moved)
        self._count("residual_channels_sign_flipped", flipped)
        if sv.max() > 1.0 + 1e-3 or sv.min() < 1.0 - 1e-3:
            self._count("residual_rescaled", 1)

    def _reader(self, w: np.ndarray, norm_s: np.ndarray, norm_b: np.ndarray) -> np.ndarray:
        assert self._q is not None
        safe = np.where(np.abs(norm_b) > 0, norm_b, 1.0)
        return (w * norm_s[None, :]) @ self._q / safe[None, :]

    def _norms(self, s: np.ndarray, b: np.ndarray) -> None:
        """Count the norm weights that differ from the backbone's (folded into their readers)."""
        assert self._q is not None
        self._count("norm_weights_folded", int(np.sum(np.abs(np.abs(s @ self._q) - np.abs(b)) > REPORT_TOLERANCE
                                                      * np.maximum(np.abs(b), 1e-12))))

    def _writer(self, w: np.ndarray) -> np.ndarray:
        assert self._rinv_t is not None
        return self._rinv_t @ w

    # -- 2./3. one transformer layer ------------------------------------------------------------

    def layer(self, i: int) -> dict[str, np.ndarray]:
        if i in self._layers:
            return self._layers[i]
        self._residual()
        pre = f"model.layers.{i}"
        n1s, n1b = self.suspect(f"{pre}.input_layernorm.weight"), self.backbone(f"{pre}.input_layernorm.weight")
        n2s, n2b = (self.suspect(f"{pre}.post_attention_layernorm.weight"),
                    self.backbone(f"{pre}.post_attention_layernorm.weight"))
        self._norms(n1s, n1b)
        self._norms(n2s, n2b)
        s = {p: self._reader(self.suspect(f"{pre}.self_attn.{p}_proj.weight"), n1s, n1b) for p in READERS_ATTN}
        s["o"] = self._writer(self.suspect(f"{pre}.self_attn.o_proj.weight"))
        b = {p: self.backbone(f"{pre}.self_attn.{p}_proj.weight") for p in ("q", "k", "v", "o")}
        out = self._attention(s, b)
        gate = self._reader(self.suspect(f"{pre}.mlp.gate_proj.weight"), n2s, n2b)
        up = self._reader(self.suspect(f"{pre}.mlp.up_proj.weight"), n2s, n2b)
        down = self._writer(self.suspect(f"{pre}.mlp.down_proj.weight"))
        out.update(self._mlp(gate, up, down, *(self.backbone(f"{pre}.mlp.{p}_proj.weight") for p in ("gate", "up", "down"))))
        names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
                 "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
        self._layers[i] = {f"{pre}.{names[k]}.weight": v for k, v in out.items()}
        return self._layers[i]

    def _attention(self, s: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        hd, hid = self.shape.head_dim, self.shape.hidden
        nh_b, nkv_b = self.shape.heads, self.shape.kv_heads
        for p, what in (("q", "query"), ("k", "key"), ("v", "value")):
            if s[p].shape[0] % hd or s[p].shape[1] != hid:
                raise CanonicalError(f"{what} projection of shape {s[p].shape} is not whole heads of {hd}")
        nh_s, nkv_s = s["q"].shape[0] // hd, s["k"].shape[0] // hd
        if s["v"].shape[0] != s["k"].shape[0] or nh_s % nkv_s or s["o"].shape != (hid, nh_s * hd):
            raise CanonicalError("attention projections of the suspect do not form grouped heads")
        per_s, per_b = nh_s // nkv_s, nh_b // nkv_b
        zk_s, zk_b = _pairs_complex(s["k"], hd), _pairs_complex(b["k"], hd)
        zq_s, zq_b = _pairs_complex(s["q"], hd), _pairs_complex(b["q"], hd)
        groups = greedy_match(_head_costs(zk_s, zk_b))
        self._count("kv_groups_moved", sum(gs != gb for gs, gb in groups))
        self._count("heads_dropped", nh_s - nh_b)
        k = np.empty_like(b["k"])
        v = np.empty_like(b["v"])
        q = np.empty_like(b["q"])
        o = np.empty_like(b["o"])
        vs, vb = s["v"].reshape(nkv_s, hd, hid), b["v"].reshape(nkv_b, hd, hid)
        os_, ob = s["o"].reshape(hid, nh_s, hd), b["o"].reshape(hid, nh_b, hd)
        for gs, gb in groups:
            k[gb * hd:(gb + 1) * hd], n = _undo_pairs(zk_s[gs], zk_b[gb], hd)
            self._count("rope_pairs_rotated_or_scaled", n)
            qs_heads = list(range(gs * per_s, (gs + 1) * per_s))
            qb_heads = list(range(gb * per_b, (gb + 1) * per_b))
            cost = _head_costs(zq_s[qs_heads], zq_b[qb_heads])
            heads = [(qs_heads[a], qb_heads[c]) for a, c in greedy_match(cost)]
            self._count("query_heads_moved", sum((hs - gs * per_s) != (hb - gb * per_b) for hs, hb in heads))
            for hs, hb in heads:
                q[hb * hd:(hb + 1) * hd], n = _undo_pairs(zq_s[hs], zq_b[hb], hd)
                self._count("rope_pairs_rotated_or_scaled", n)
            # value rows of the group: signed, scaled permutation, matched by |cosine| of v rows
            # plus the output columns of the matched query heads
            sim = np.abs(_unit_rows(vs[gs]) @ _unit_rows(vb[gb]).T)
            for hs, hb in heads:
                sim = sim + np.abs(_unit_rows(os_[:, hs].T) @ _unit_rows(ob[:, hb].T).T)
            dims = greedy_match(-sim)
            self._count("value_dims_moved", sum(a != c for a, c in dims))
            src = np.array([a for a, _ in sorted(dims, key=lambda t: t[1])])
            v[gb * hd:(gb + 1) * hd], n = _scale_to(vs[gs][src], vb[gb], axis=1)
            self._count("value_channels_rescaled", n)
            for hs, hb in heads:
                o[:, hb * hd:(hb + 1) * hd], _ = _scale_to(os_[:, hs][:, src], ob[:, hb], axis=0)
        return {"q": q, "k": k, "v": v, "o": o}

    def _mlp(self, gate: np.ndarray, up: np.ndarray, down: np.ndarray, gb: np.ndarray, ub: np.ndarray,
             db: np.ndarray) -> dict[str, np.ndarray]:
        if gate.shape[0] != up.shape[0] or down.shape[1] != gate.shape[0]:
            raise CanonicalError("MLP projections of the suspect disagree on the number of units")
        cos = _unit_rows(gate) @ _unit_rows(gb).T  # gate rows are permuted, never rescaled
        units = greedy_match(-cos)
        self._count("mlp_units_moved", sum(a != c for a, c in units))
        self._count("mlp_units_dropped", gate.shape[0] - gb.shape[0])
        src = np.array([a for a, _ in sorted(units, key=lambda t: t[1])])
        up_c, n = _scale_to(up[src], ub, axis=1)
        self._count("mlp_units_rescaled", n)
        return {"gate": gate[src], "up": up_c, "down": _scale_to(down[:, src], db, axis=0)[0]}

    # -- the interface ----------------------------------------------------------------------------

    def tensor(self, name: str) -> np.ndarray:
        """The canonical suspect tensor ``name`` (a layer projection) in the backbone's shape.

        A result within float64 rounding of the backbone's tensor (relative difference below
        SAME_AS_BACKBONE) IS the backbone's: an unchanged layer has ΔW = 0, not the fits' rounding."""
        m = LAYER_RE.fullmatch(name)
        if m is None:
            raise CanonicalError(f"{name} is not a Llama layer projection")
        out = self.layer(int(m.group(1)))[name]
        ref = self.backbone(name)
        if np.linalg.norm(out - ref) <= SAME_AS_BACKBONE * np.linalg.norm(ref):
            return ref
        return out


def llama_layout(names: set[str], shape: LlamaShape) -> bool:
    """Whether a tensor set has the Hugging Face Llama layout canonicalisation needs."""
    need = {EMBED}
    for i in range(shape.layers):
        pre = f"model.layers.{i}"
        need |= {f"{pre}.input_layernorm.weight", f"{pre}.post_attention_layernorm.weight"}
        need |= {f"{pre}.self_attn.{p}_proj.weight" for p in "qkvo"}
        need |= {f"{pre}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    return need <= names
