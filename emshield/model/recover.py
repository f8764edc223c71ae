"""Recover the core from a merged model and the public backbone, in closed form.

ΔW = merged − backbone per changed weight, then a truncated SVD gives a rank-r factorisation
``B = U_r·√S_r``, ``A = √S_r·V_rᵀ`` (scale 1). Because ΔW is known to be low rank, the SVD is
taken on a seeded randomized sketch (Halko, Martinsson & Tropp 2011, alg. 4.4 with power
iterations), which is exact up to rounding when the sketch is wider than the rank and much
cheaper than a full SVD of the weight. Torch + numpy only (the verifier uses this).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from emshield.core import LoraFactors
from emshield.model.io import ModelFileError, TensorSource

OVERSAMPLE = 8
POWER_ITERATIONS = 2
DEFAULT_MAX_RANK = 64
DEFAULT_REL_TOL = 1e-4  # singular values below rel_tol·σ₁ are rounding noise (auto rank)


@dataclass(frozen=True)
class LayerRecovery:
    name: str
    rank: int
    rel_error: float        # ‖ΔW − scale·B·A‖_F / ‖ΔW‖_F with the stored (float32) factors
    delta_norm: float       # ‖ΔW‖_F
    sigma: tuple[float, ...]  # leading singular values found (at most rank + oversampling)


def changed_weights(merged: TensorSource, backbone: TensorSource, atol: float = 0.0) -> list[str]:
    """Names of tensors that differ by more than ``atol``; both models must have the same tensors,
    shapes and dtypes, and only matrices may differ (anything else is not a LoRA merge)."""
    mk, bk = set(merged.keys()), set(backbone.keys())
    if mk != bk:
        extra, missing = sorted(mk - bk)[:5], sorted(bk - mk)[:5]
        raise ModelFileError(f"merged model and backbone hold different tensors (extra {extra}, missing {missing})")
    changed = []
    for name in sorted(mk):
        m, b = merged.get(name), backbone.get(name)
        if m.shape != b.shape or m.dtype != b.dtype:
            raise ModelFileError(f"{name}: merged {m.dtype}{tuple(m.shape)} vs backbone {b.dtype}{tuple(b.shape)}")
        diff = (m.to(torch.float64) - b.to(torch.float64)).abs().max().item() if m.numel() else 0.0
        if diff > atol:
            if m.dim() != 2:
                raise ModelFileError(f"{name}: a {m.dim()}-D tensor changed; a LoRA merge only changes matrices")
            changed.append(name)
    return changed


def _sketch_svd(delta: torch.Tensor, q: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomized SVD with a ``q``-column Gaussian sketch and power iterations (float64)."""
    m, n = delta.shape
    if q >= min(m, n):
        return torch.linalg.svd(delta, full_matrices=False)
    omega = torch.randn(n, q, generator=gen, dtype=torch.float64)
    y, _ = torch.linalg.qr(delta @ omega)
    for _ in range(POWER_ITERATIONS):
        z, _ = torch.linalg.qr(delta.T @ y)
        y, _ = torch.linalg.qr(delta @ z)
    u_small, s, vh = torch.linalg.svd(y.T @ delta, full_matrices=False)
    return y @ u_small, s, vh


def factorise(delta: torch.Tensor, rank: int | None, *, seed: int = 0, max_rank: int = DEFAULT_MAX_RANK,
              rel_tol: float = DEFAULT_REL_TOL, full_svd: bool = False) -> tuple[LoraFactors, tuple[float, ...]]:
    """Rank-``rank`` factors of ``delta`` (float64 matrix); ``rank=None`` picks the numerical rank
    (σᵢ > rel_tol·σ₁, at most ``max_rank``)."""
    if rank is not None and rank < 1:
        raise ValueError("rank must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    want = rank if rank is not None else max_rank
    if full_svd:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    else:
        u, s, vh = _sketch_svd(delta, want + OVERSAMPLE, gen)
    if rank is None:
        rank = max(1, int((s > rel_tol * s[0]).sum().item())) if s.numel() and s[0] > 0 else 1
        rank = min(rank, max_rank)
    rank = min(rank, s.numel())
    root = s[:rank].sqrt()
    b = (u[:, :rank] * root).to(torch.float32).numpy()
    a = (root[:, None] * vh[:rank]).to(torch.float32).numpy()
    return LoraFactors(a=a, b=b, scale=1.0), tuple(float(x) for x in s[: rank + OVERSAMPLE])


def recover_core(merged: TensorSource, backbone: TensorSource, rank: int | None = None, *,
                 atol: float = 0.0, seed: int = 0, full_svd: bool = False, max_rank: int = DEFAULT_MAX_RANK,
                 progress: bool = False) -> tuple[dict[str, LoraFactors], list[LayerRecovery]]:
    """Core (rank-``rank`` factors of every changed weight) and a per-layer error report."""
    names = changed_weights(merged, backbone, atol=atol)
    if not names:
        raise ModelFileError("the merged model equals the backbone: nothing to recover")
    core: dict[str, LoraFactors] = {}
    report: list[LayerRecovery] = []
    for i, name in enumerate(tqdm(names, desc="recover", disable=not progress)):
        delta = merged.get(name).to(torch.float64) - backbone.get(name).to(torch.float64)
        factors, sigma = factorise(delta, rank, seed=seed + i, max_rank=max_rank, full_svd=full_svd)
        norm = float(torch.linalg.matrix_norm(delta))
        resid = np.linalg.norm(delta.numpy() - factors.delta())
        core[name] = factors
        report.append(LayerRecovery(name, factors.rank, float(resid / norm) if norm else 0.0, norm, sigma))
    return core, report


def overall_error(report: list[LayerRecovery]) -> float:
    """‖ΔW − B·A‖_F / ‖ΔW‖_F over all layers together."""
    num = sum((r.rel_error * r.delta_norm) ** 2 for r in report)
    den = sum(r.delta_norm ** 2 for r in report)
    return float(np.sqrt(num / den)) if den else 0.0
