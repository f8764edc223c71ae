"""Secret tier (`emshield-wm-secret-v1`): a per-issuance presence mark nobody without the issuer's
secret can locate (spec/watermark.md, "Secret tier").

The public tier's directions come from the published verification key, so a reader of the log can
subtract that mark. This tier's directions come from a per-issuance *detection key* K_j derived
from the issuer's marking secret S and the issuance's identity; it is never published. The
issuance entry carries only a hiding, binding commitment to it. Disclosing one K_j (with its
commitment nonce) proves one attribution publicly and reveals nothing about any other issuance's
key: each K_j is a separate HKDF output of S.

The mark is zero-bit: STATISTICS keyed bilinear statistics, each embedded at margin τ jointly with
the public code bits (watermark.embed's ``extra``), read as one presence score whose chance level
is bounded by Hoeffding's inequality from the directions' sign symmetry alone.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from emshield.core import Core
from emshield.marking import watermark
from emshield.marking.chaos import ChaosStream
from emshield.marking.params import LayerSpec, MarkingParams, check_secret

ALG = "emshield-wm-secret-v1"
KEY_LABEL = b"emshield/secret-mark-key/v1"
NONCE_LABEL = b"emshield/secret-mark-nonce/v1"
COMMITMENT_LABEL = b"emshield/secret-mark-commitment/v1"
SALT_BYTES = 16  # the issuance's random salt, public in the entry
KEY_BYTES = 32
NONCE_BYTES = 32
STATISTICS = 16  # presence statistics per issuance
MAX_LAYERS = 32  # keyed layers per issuance (all marked layers when there are fewer)
TAU = 6.0  # the floor margin (energy 16·6² ≈ half the public tier's 128·3²); ``directions`` carries it
STRENGTHS = (16.0, 10.0, TAU)  # margins the policy tries, strongest first (spec/watermark.md, "Strength")
PURPOSE_U = "secret-mark-u"
PURPOSE_V = "secret-mark-v"
PURPOSE_LAYERS = "secret-mark-layers"
NAME_ALPHA = 1e-6  # per-innocent false-accusation probability a naming may have at most
NAME_THRESHOLD = math.sqrt(2.0 * math.log(1.0 / NAME_ALPHA))  # presence score with exp(−T²/2) = NAME_ALPHA


def _identity(backbone_id: str, device_uuid: bytes, salt: bytes) -> bytes:
    """HKDF info of one issuance: u16be length ‖ utf8(backbone id) ‖ device UUID (16) ‖ salt (16)."""
    raw = backbone_id.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("backbone id longer than 65535 bytes")
    if len(device_uuid) != 16:
        raise ValueError("device UUID must be 16 bytes")
    if len(salt) != SALT_BYTES:
        raise ValueError(f"secret-mark salt must be {SALT_BYTES} bytes")
    return len(raw).to_bytes(2, "big") + raw + device_uuid + salt


@dataclass(frozen=True)
class DetectionKey:
    """One issuance's secret-tier key and commitment nonce (both secret until disclosed)."""

    key: bytes
    nonce: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES or len(self.nonce) != NONCE_BYTES:
            raise ValueError(f"detection key and nonce must be {KEY_BYTES} and {NONCE_BYTES} bytes")

    @property
    def commitment(self) -> bytes:
        return commitment(self.nonce, self.key)


def detection_key(issuer_secret: bytes, backbone_id: str, device_uuid: bytes, salt: bytes) -> DetectionKey:
    """K_j and nonce_j: two HKDF-SHA256 outputs of S with the issuance's identity as info.

    Distinct identities give independent pseudo-random outputs, so disclosing one issuance's pair
    reveals nothing about another's; they need no storage beyond S and the logged entry."""
    check_secret(issuer_secret)
    info = _identity(backbone_id, device_uuid, salt)
    key = HKDF(hashes.SHA256(), KEY_BYTES, KEY_LABEL, info).derive(issuer_secret)
    nonce = HKDF(hashes.SHA256(), NONCE_BYTES, NONCE_LABEL, info).derive(issuer_secret)
    return DetectionKey(key, nonce)


def commitment(nonce: bytes, key: bytes) -> bytes:
    """SHA-256(label ‖ 0x00 ‖ nonce (32) ‖ K_j (32)): hiding (256-bit secret nonce), binding (SHA-256)."""
    if len(key) != KEY_BYTES or len(nonce) != NONCE_BYTES:
        raise ValueError(f"detection key and nonce must be {KEY_BYTES} and {NONCE_BYTES} bytes")
    return hashlib.sha256(COMMITMENT_LABEL + b"\x00" + nonce + key).digest()


def _word_counts(params: MarkingParams) -> tuple[np.ndarray, np.ndarray]:
    """Words of the u- and v-stream each layer takes: ⌈STATISTICS·out/64⌉ and ⌈STATISTICS·in/64⌉."""
    u = np.array([-(-STATISTICS * lay.out_features // 64) for lay in params.layers], dtype=np.int64)
    v = np.array([-(-STATISTICS * lay.in_features // 64) for lay in params.layers], dtype=np.int64)
    return u, v


def _chosen(layer_words: np.ndarray) -> np.ndarray:
    """Keyed-layer mask [keys, L] from each key's L layer words: the MAX_LAYERS smallest words,
    ties by index (a stable sort). Rejection-free, so every key takes the same steps."""
    keys, n = layer_words.shape
    mask = np.zeros((keys, n), dtype=bool)
    order = np.argsort(layer_words, axis=1, kind="stable")[:, :MAX_LAYERS]
    mask[np.arange(keys)[:, None], order] = True
    return mask


def keyed_layers(key: bytes, params: MarkingParams) -> tuple[LayerSpec, ...]:
    """The issuance's marked layers, in the parameters' order: all of them when L ≤ MAX_LAYERS,
    else the MAX_LAYERS whose words (word i of the layers stream ↔ layer i) are smallest."""
    n = len(params.layers)
    if n <= MAX_LAYERS:
        return params.layers
    mask = _chosen(ChaosStream(key, params.backbone_id, "", PURPOSE_LAYERS).words(n)[None, :])[0]
    return tuple(lay for lay, keep in zip(params.layers, mask) if keep)


@functools.lru_cache(maxsize=64)
def directions(key: bytes, params: MarkingParams) -> watermark.ExtraStatistics:
    """STATISTICS direction pairs on each keyed layer, from one u-stream and one v-stream per issuance.

    Keyed layer ℓ (out m, in n), in the parameters' order, takes the next rademacher(STATISTICS·m)
    of the u-stream (row-major STATISTICS × m, whole words) and the next rademacher(STATISTICS·n)
    of the v-stream. One pair of streams per issuance rather than per layer keeps the set-up cost
    per issuance constant, and ``scores`` evaluates the same streams for many keys in lock step."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"detection key must be {KEY_BYTES} bytes")
    su = ChaosStream(key, params.backbone_id, "", PURPOSE_U)
    sv = ChaosStream(key, params.backbone_id, "", PURPOSE_V)
    layers = {}
    for layer in keyed_layers(key, params):
        m, n = layer.out_features, layer.in_features
        layers[layer.name] = watermark.Directions.from_signs(su.rademacher(STATISTICS * m).reshape(STATISTICS, m),
                                                            sv.rademacher(STATISTICS * n).reshape(STATISTICS, n))
    return watermark.ExtraStatistics(layers, TAU)


def at_strength(extra: watermark.ExtraStatistics, tau: float) -> watermark.ExtraStatistics:
    """The same directions embedded at margin ``tau``: the read-out never uses the margin (the
    presence score and its bound depend on the directions alone), so the issuer may choose it."""
    if not tau > 0:
        raise ValueError("a secret-tier margin must be positive")
    return dataclasses.replace(extra, tau=float(tau))


@dataclass(frozen=True)
class Presence:
    """The presence score of one detection key on one suspect."""

    terms: np.ndarray  # [keyed layers, STATISTICS] per-layer terms z_iℓ = u_iℓᵀ·ΔW_ℓ·v_iℓ / σ_ℓ
    score: float  # T = Σ z_iℓ / ‖z‖₂
    p_value: float  # exp(−T²/2) for T > 0, else 1: bounds P(score ≥ T) for any core not marked with this key
    named: bool  # p_value ≤ NAME_ALPHA

    def to_json(self) -> dict:
        return {"score": self.score, "p_value": self.p_value, "named": self.named}


def presence(terms: np.ndarray) -> Presence:
    """Score T = Σ z_iℓ / ‖z‖₂ over every per-layer term, and its Hoeffding bound.

    For a core whose weights do not depend on K_j, flipping u_iℓ → −u_iℓ flips z_iℓ alone, and the
    rows of every layer are independent uniform signs: the signs of the z_iℓ are fair independent
    coins given their magnitudes, so P(Σ ε·|z| ≥ t·‖z‖) ≤ exp(−t²/2) whatever the core is. Scoring
    the per-layer terms rather than the embedded sums keeps a colluder's evidence on the layers a
    coalition took from its copy (interleaving)."""
    terms = np.asarray(terms, dtype=np.float64)
    score = _score(terms.ravel())
    p = p_value(score)
    return Presence(terms, score, p, p <= NAME_ALPHA)


def _score(z: np.ndarray) -> float:
    norm = float(np.linalg.norm(z))
    return float(np.sum(z)) / norm if norm > 0 else 0.0


def presence_from_factors(core: Core, key: bytes, params: MarkingParams) -> Presence:
    return presence(watermark.extra_terms_from_factors(core, directions(key, params)))


def presence_from_deltas(deltas: watermark.DeltaSource, key: bytes, params: MarkingParams) -> Presence:
    return presence(watermark.extra_terms_from_deltas(deltas, directions(key, params)))


def p_value(score: float) -> float:
    """The Hoeffding bound exp(−T²/2) of a presence score (1 for T ≤ 0)."""
    return math.exp(-score * score / 2.0) if score > 0 else 1.0
