"""The protected *core*: per-layer LoRA factors, the unit that is marked, sealed and issued.

Shared vocabulary between decoupling (`emshield.model`), marking (`emshield.marking`) and sealing
(`emshield.tee`), kept here so that none of them has to import another.

Keys of a :class:`Core` are the backbone's weight tensor names (e.g.
``model.layers.0.self_attn.q_proj.weight``), so that a merged model is exactly
``merged[name] = backbone[name] + core[name].delta()`` for every key and the backbone for every
other tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LoraFactors:
    """ΔW = scale · B · A for one linear layer (B: out×r, A: r×in), as peft defines it."""

    a: np.ndarray
    b: np.ndarray
    scale: float

    def __post_init__(self) -> None:
        if self.a.ndim != 2 or self.b.ndim != 2:
            raise ValueError(f"LoRA factors must be matrices, got A{self.a.shape} B{self.b.shape}")
        if self.b.shape[1] != self.a.shape[0]:
            raise ValueError(f"rank mismatch: B{self.b.shape} · A{self.a.shape}")
        if not np.isfinite(self.scale):
            raise ValueError("LoRA scale must be finite")

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of ΔW (out, in)."""
        return (self.b.shape[0], self.a.shape[1])

    def delta(self) -> np.ndarray:
        """ΔW in float64 (products of float32 factors lose digits otherwise)."""
        return self.scale * (self.b.astype(np.float64) @ self.a.astype(np.float64))


Core = Mapping[str, LoraFactors]
