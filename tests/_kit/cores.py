"""Random cores, marking parameters and attacks, shared by the marking, issue and verify tests and
bench/marking.py.

Attacks take float64 ΔW or weights as numpy arrays and return the attacked array, so the same code
measures robustness in the tests and sweeps where it breaks in the bench. Cores on the committed
tiny backbone carry its tensor names (`tiny_core`, `fixture_core`).
"""

from __future__ import annotations

import numpy as np

from emshield.core import LoraFactors
from emshield.marking import watermark
from emshield.marking.params import LayerSpec, MarkingParams, verification_key

SECRET = bytes(range(32))
BACKBONE = "test-backbone"
# q/v projections of a 4-layer Llama with hidden 128 and 2 of 4 KV heads (the fixture's shapes).
FIXTURE_DIMS = [(128, 128), (64, 128)] * 4
W_RMS = 0.02  # backbone weights
DELTA_RMS = 0.001  # ΔW entries: 5 % of the backbone's


def make_params(dims: list[tuple[int, int]], names: list[str] | None = None, **kw: int) -> MarkingParams:
    names = names or [f"layers.{i}.weight" for i in range(len(dims))]
    layers = tuple(LayerSpec(name, m, n) for name, (m, n) in zip(names, dims))
    return MarkingParams(BACKBONE, verification_key(SECRET, BACKBONE), layers, **kw)


def factors_from_hex(obj: dict, shapes: dict[str, tuple[int, int]]) -> dict[str, LoraFactors]:
    """A core as the marking vectors write it (spec/vectors/marking/generate.py, factors_json)."""
    core = {}
    for name, f in obj.items():
        m, n = shapes[name]
        a = np.frombuffer(bytes.fromhex(f["a"]), dtype="<f4").reshape(-1, n)
        b = np.frombuffer(bytes.fromhex(f["b"]), dtype="<f4").reshape(m, -1)
        core[name] = LoraFactors(a, b, f["scale"])
    return core


def random_core(rng: np.random.Generator, dims: list[tuple[int, int]], rank: int, rms: float) -> dict[str, LoraFactors]:
    """Random rank-`rank` core with ΔW entries of RMS ≈ `rms` (factors like a trained peft adapter)."""
    core = {}
    for i, (m, n) in enumerate(dims):
        a = (rng.standard_normal((rank, n)) / np.sqrt(n)).astype(np.float32)
        spectrum = np.exp(-np.arange(rank) / max(rank / 3, 1)) * rng.uniform(0.5, 1.5, rank)
        b = rng.standard_normal((m, rank)) * spectrum
        f = LoraFactors(a, b.astype(np.float32), 2.0)
        factor = rms / np.sqrt(np.mean(f.delta() ** 2))
        core[f"layers.{i}.weight"] = LoraFactors(a, (b * factor).astype(np.float32), 2.0)
    return core


def refactorise(f: LoraFactors, rng: np.random.Generator) -> LoraFactors:
    """(B·R, R⁻¹·A) with a random well-conditioned R and a new scale: same ΔW."""
    r = f.rank
    q, _ = np.linalg.qr(rng.standard_normal((r, r)))
    rmat = q * rng.uniform(0.5, 2.0, r)
    new_scale = 0.5
    b = f.b.astype(np.float64) @ rmat * (f.scale / new_scale)
    a = np.linalg.solve(rmat, f.a.astype(np.float64))
    perm = rng.permutation(r)  # reorder the rank dimensions too
    return LoraFactors(a[perm].astype(np.float32), b[:, perm].astype(np.float32), new_scale)


def bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (round-to-nearest-even) and back."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def fp16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float16).astype(np.float32)


def int8_rows(w: np.ndarray) -> np.ndarray:
    """Symmetric per-output-row absmax int8 quantisation, dequantised."""
    return int_rows(w, 8)


def int_rows(w: np.ndarray, bits: int) -> np.ndarray:
    top = 2 ** (bits - 1) - 1
    scale = np.max(np.abs(w), axis=1, keepdims=True) / top
    scale[scale == 0] = 1.0
    return (np.clip(np.rint(w / scale), -top, top) * scale).astype(np.float32)


def prune(delta: np.ndarray, fraction: float) -> np.ndarray:
    """Zero the `fraction` of ΔW entries with the smallest magnitude."""
    cut = np.quantile(np.abs(delta), fraction)
    return np.where(np.abs(delta) <= cut, 0.0, delta)


def noise(delta: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise of std `level` × std(ΔW)."""
    return delta + rng.standard_normal(delta.shape) * level * np.std(delta)


def strip_public(delta: np.ndarray, params: MarkingParams, layer: int) -> np.ndarray:
    """The published-parameters attack on one layer: the smallest change (Frobenius) that sets every
    public statistic u_iᵀ·ΔW·v_i to zero, ΔW − Σ_j c_j·u_j·v_jᵀ with (u_iᵀu_j)(v_iᵀv_j)·c = s."""
    d = watermark.directions(params, params.layers[layer])
    s = np.einsum("ij,ji->i", d.u, delta @ d.v.T)
    c = np.linalg.solve((d.u @ d.u.T) * (d.v @ d.v.T), s)
    return delta - (d.u.T * c) @ d.v


def finetune(
    core: dict[str, LoraFactors],
    task: dict[str, np.ndarray],
    steps: int,
    lr: float,
    rng: np.random.Generator,
    decay: float = 1.0,
    batch: int = 32,
) -> dict[str, LoraFactors]:
    """Simulated further fine-tuning: Adam on the factors towards a task optimum ΔW*.

    Each step draws an input batch X and minimises ‖(ΔW − ΔW*)·X‖² / ‖ΔW*·X‖² per layer. Inputs have
    covariance eigenvalues k^-decay in a random basis (decay=0: isotropic). With ΔW* = the unmarked
    core the task gradient points straight at the mark's removal; isotropic inputs are the worst
    case (every direction of ΔW is constrained by the data), decaying spectra are closer to real
    activations, which leave most random directions of ΔW unconstrained.
    """
    out = {}
    for name, f in core.items():
        a, b = f.a.astype(np.float64), f.b.astype(np.float64)
        n = a.shape[1]
        basis, _ = np.linalg.qr(rng.standard_normal((n, n)))
        mix = basis * np.arange(1, n + 1) ** (-decay / 2)
        state = [np.zeros_like(a), np.zeros_like(a), np.zeros_like(b), np.zeros_like(b)]
        for t in range(1, steps + 1):
            x = mix @ rng.standard_normal((n, batch))
            err = (f.scale * b @ a - task[name]) @ x
            g = 2 * err @ x.T / np.sum((task[name] @ x) ** 2)
            grads = (f.scale * b.T @ g, f.scale * g @ a.T)
            for k, (p, grad) in enumerate(zip((a, b), grads)):
                m, v = state[2 * k], state[2 * k + 1]
                m[:] = 0.9 * m + 0.1 * grad
                v[:] = 0.999 * v + 0.001 * grad * grad
                p -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        out[name] = LoraFactors(a.astype(np.float32), b.astype(np.float32), f.scale)
    return out


# -- cores on the committed tiny backbone (hidden 128, 4 layers, 2 of 4 KV heads) ------------------

TINY_LAYERS = [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(4) for p in ("q", "v")]


def tiny_core(seed: int, rank: int = 8) -> dict[str, LoraFactors]:
    """A random rank-8 core on the tiny backbone's q/v projections, ΔW at `DELTA_RMS` (as `random_core`)."""
    core = random_core(np.random.default_rng(seed), FIXTURE_DIMS, rank, DELTA_RMS)
    return {name: core[f"layers.{i}.weight"] for i, name in enumerate(TINY_LAYERS)}


def fixture_core(seed: int = 0, rank: int = 4, scale: float = 0.02) -> dict[str, LoraFactors]:
    """A random rank-`rank` core on the tiny backbone's q/v projections with B entries of std `scale`
    (larger than `tiny_core`'s, as a briefly trained adapter's)."""
    rng = np.random.default_rng(seed)
    core = {}
    for name, (out, inp) in zip(TINY_LAYERS, FIXTURE_DIMS):
        a = (rng.standard_normal((rank, inp)) / np.sqrt(inp)).astype(np.float32)
        b = (rng.standard_normal((out, rank)) * scale).astype(np.float32)
        core[name] = LoraFactors(a, b, 2.0)
    return core


def backbone_core(backbone, modules=("q_proj", "v_proj"), rank: int = 4, scale: float = 2.0, seed: int = 0,
                  magnitude: float = 0.05) -> dict[str, LoraFactors]:
    """A core with random, non-trivial factors for every targeted module of the model at ``backbone``."""
    from emshield.model.io import open_tensors

    rng = np.random.default_rng(seed)
    core = {}
    with open_tensors(backbone) as src:
        for name in src.keys():
            if any(f".{m}.weight" in name for m in modules):
                out, inp = src.get(name).shape
                core[name] = LoraFactors(a=(rng.standard_normal((rank, inp)) * magnitude).astype(np.float32),
                                         b=(rng.standard_normal((out, rank)) * magnitude).astype(np.float32),
                                         scale=scale)
    return core
