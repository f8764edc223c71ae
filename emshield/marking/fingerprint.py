"""Invariant fingerprint of a core: features of ΔW per layer that need no change to the weights.

Per marked layer (spec/fingerprint.md):
- the k largest singular values of ΔW divided by ‖ΔW‖_F (invariant to re-factorising B·A, to
  reordering or rescaling the rank dimensions and to permuting rows or columns);
- keyed probe norms ‖ΔW·v_j‖·√in/‖ΔW‖_F and ‖ΔWᵀ·u_j‖·√out/‖ΔW‖_F for sign vectors drawn by the
  chaos FSM (also invariant to re-factorisation; each side survives permutations of the other).
Features are quantised to integers (2^-16 steps) so the encoding, and its hash in the log entry,
are canonical; verifiers compare fuzzily against the published vector.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import cbor2
import numpy as np

from emshield.core import Core, LoraFactors
from emshield.marking.chaos import ChaosStream
from emshield.marking.params import FINGERPRINT_ALG, LayerSpec, MarkingParams, strict_cbor_map
from emshield.marking.watermark import DeltaSource

VERSION = 1
HASH_LABEL = b"emshield/fingerprint/v1"
QUANT = 1 << 16
MAX_FEATURE = 1 << 24
MAX_FINGERPRINT_BYTES = 4 << 20
RANGE_OVERSAMPLE = 8
POWER_ITERATIONS = 2
PURPOSE_PROBE_IN = "fingerprint-probe-in"
PURPOSE_PROBE_OUT = "fingerprint-probe-out"
PURPOSE_RANGE = "fingerprint-range"


class FingerprintError(ValueError):
    """Malformed, non-canonical or mismatched fingerprint."""


@dataclass(frozen=True)
class Fingerprint:
    params_digest: bytes
    layers: tuple[tuple[str, tuple[int, ...]], ...]  # quantised features per layer

    def to_cbor(self) -> bytes:
        return cbor2.dumps(
            {
                "v": VERSION,
                "alg": FINGERPRINT_ALG,
                "params": self.params_digest,
                "layers": [[name, list(feats)] for name, feats in self.layers],
            },
            canonical=True,
        )

    def hash(self) -> bytes:
        """The log entry's fingerprint_hash: SHA-256(label ‖ 0x00 ‖ canonical CBOR)."""
        return hashlib.sha256(HASH_LABEL + b"\x00" + self.to_cbor()).digest()

    def vector(self) -> np.ndarray:
        return np.concatenate([np.asarray(f, dtype=np.float64) for _, f in self.layers]) / QUANT

    @classmethod
    def from_cbor(cls, blob: bytes, expected_hash: bytes | None = None) -> Fingerprint:
        obj = strict_cbor_map(blob, MAX_FINGERPRINT_BYTES, {"v", "alg", "params", "layers"}, "fingerprint", FingerprintError)
        if obj["v"] != VERSION or obj["alg"] != FINGERPRINT_ALG:
            raise FingerprintError("unsupported fingerprint version or algorithm")
        if type(obj["params"]) is not bytes or len(obj["params"]) != 32 or type(obj["layers"]) is not list:
            raise FingerprintError("bad params digest or layer list")
        layers = []
        for item in obj["layers"]:
            if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is str and type(item[1]) is list):
                raise FingerprintError("each layer must be [name, [features]]")
            if not all(type(x) is int and 0 <= x < MAX_FEATURE for x in item[1]):
                raise FingerprintError("features must be integers in [0, 2^24)")
            layers.append((item[0], tuple(item[1])))
        fp = cls(obj["params"], tuple(layers))
        if fp.to_cbor() != bytes(blob):
            raise FingerprintError("fingerprint is not in deterministic CBOR encoding")
        if expected_hash is not None and fp.hash() != expected_hash:
            raise FingerprintError("fingerprint does not match the logged fingerprint hash")
        return fp


@dataclass(frozen=True)
class _Probes:
    v: np.ndarray  # [probes, in], entries ±1/√in
    u: np.ndarray  # [probes, out], entries ±1/√out


@functools.lru_cache(maxsize=128)
def _probes(params: MarkingParams, layer: LayerSpec) -> _Probes:
    """Probe sign vectors (cached, read-only): they depend on the public parameters only."""
    p = params.fp_probes
    key, bb = params.verification_key, params.backbone_id
    v = ChaosStream(key, bb, layer.name, PURPOSE_PROBE_IN).rademacher(p * layer.in_features)
    u = ChaosStream(key, bb, layer.name, PURPOSE_PROBE_OUT).rademacher(p * layer.out_features)
    probes = _Probes(
        v.reshape(p, layer.in_features) / math.sqrt(layer.in_features),
        u.reshape(p, layer.out_features) / math.sqrt(layer.out_features),
    )
    probes.v.flags.writeable = False
    probes.u.flags.writeable = False
    return probes


def _quantise(values: np.ndarray) -> tuple[int, ...]:
    return tuple(int(x) for x in np.clip(np.rint(values * QUANT), 0, MAX_FEATURE - 1))


def _features(
    spectrum: np.ndarray, fro: float, dw_v: np.ndarray, dwt_u: np.ndarray, layer: LayerSpec, k: int
) -> tuple[int, ...]:
    if not fro > 0.0:
        raise ValueError(f"layer {layer.name}: ΔW is zero, nothing to fingerprint")
    top = np.zeros(k)
    top[: min(k, len(spectrum))] = np.sort(spectrum)[::-1][:k]
    rho = np.linalg.norm(dw_v, axis=0) * math.sqrt(layer.in_features) / fro
    omega = np.linalg.norm(dwt_u, axis=0) * math.sqrt(layer.out_features) / fro
    return _quantise(np.concatenate([top / fro, rho, omega]))


def _from_factors(f: LoraFactors, layer: LayerSpec, params: MarkingParams) -> tuple[int, ...]:
    a, b = f.a.astype(np.float64), f.b.astype(np.float64)
    _, rb = np.linalg.qr(b)
    _, ra = np.linalg.qr(a.T)
    spectrum = np.linalg.svd(f.scale * (rb @ ra.T), compute_uv=False)
    pr = _probes(params, layer)
    dw_v = f.scale * (b @ (a @ pr.v.T))
    dwt_u = f.scale * (a.T @ (b.T @ pr.u.T))
    return _features(spectrum, float(np.linalg.norm(spectrum)), dw_v, dwt_u, layer, params.fp_k)


def _from_delta(delta: np.ndarray, layer: LayerSpec, params: MarkingParams) -> tuple[int, ...]:
    """Top singular values by a keyed randomised range finder (k+8 sign probes, 2 power iterations)."""
    delta = np.asarray(delta, dtype=np.float64)
    width = min(params.fp_k + RANGE_OVERSAMPLE, *delta.shape)
    stream = ChaosStream(params.verification_key, params.backbone_id, layer.name, PURPOSE_RANGE)
    omega = stream.rademacher(layer.in_features * width).reshape(layer.in_features, width).astype(np.float64)
    basis, _ = np.linalg.qr(delta @ omega)
    for _ in range(POWER_ITERATIONS):
        basis, _ = np.linalg.qr(delta @ (delta.T @ basis))
    spectrum = np.linalg.svd(basis.T @ delta, compute_uv=False)
    pr = _probes(params, layer)
    return _features(
        spectrum, float(np.linalg.norm(delta)), delta @ pr.v.T, delta.T @ pr.u.T, layer, params.fp_k
    )


def fingerprint_factors(core: Core, params: MarkingParams) -> Fingerprint:
    """Fingerprint of a core given as LoRA factors (exact spectrum via QR of the factors)."""
    layers = []
    for layer in params.layers:
        f = core.get(layer.name)
        if f is None or f.shape != (layer.out_features, layer.in_features):
            raise ValueError(f"core lacks layer {layer.name} of shape ({layer.out_features}, {layer.in_features})")
        layers.append((layer.name, _from_factors(f, layer, params)))
    return Fingerprint(params.digest(), tuple(layers))


def fingerprint_deltas(deltas: DeltaSource, params: MarkingParams) -> Fingerprint:
    """Fingerprint from per-layer ΔW (a merged model minus the backbone), read lazily if a callable."""
    get: Callable[[str], np.ndarray] = deltas if callable(deltas) else deltas.__getitem__
    layers = []
    for layer in params.layers:
        delta = np.asarray(get(layer.name))
        if delta.shape != (layer.out_features, layer.in_features):
            raise ValueError(f"layer {layer.name}: ΔW shape {delta.shape} does not match parameters")
        layers.append((layer.name, _from_delta(delta, layer, params)))
    return Fingerprint(params.digest(), tuple(layers))


@dataclass(frozen=True)
class Comparison:
    distance: float  # RMS difference of the feature vectors
    threshold: float
    match: bool


def compare(published: Fingerprint, suspect: Fingerprint, params: MarkingParams) -> Comparison:
    """Fuzzy match: RMS feature difference at most the calibrated threshold in the parameters."""
    if published.params_digest != params.digest() or suspect.params_digest != params.digest():
        raise FingerprintError("fingerprints were made under other marking parameters")
    if [n for n, _ in published.layers] != [n for n, _ in suspect.layers]:
        raise FingerprintError("fingerprints cover different layers")
    diff = published.vector() - suspect.vector()
    distance = float(np.sqrt(np.mean(diff * diff)))
    threshold = params.fp_threshold_milli / 1000.0
    return Comparison(distance, threshold, distance <= threshold)
