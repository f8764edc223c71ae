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
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from emshield.core import Core
from emshield.marking import watermark
from emshield.marking.chaos import ChaosLanes, ChaosStream
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


WORDS_BYTES = 128 << 20  # bound on one chunk's drawn words in scores
BLOCK_KEYS = 1024  # keys per stacked product in scores


def scores(deltas: watermark.DeltaSource, keys: Sequence[bytes], params: MarkingParams,
           profile: dict[str, float] | None = None) -> np.ndarray:
    """Presence scores T_j of many detection keys on one suspect, one batched product per layer.

    Equals ``presence_from_deltas(deltas, key, params).score`` for each key (float32 products, as
    the single read-out): on each layer, a block of keys' direction rows (stacked_directions) meets
    the layer's ΔW, read once, in one matrix product, rather than one read-out per issuance.
    ``profile``, if given, receives the seconds spent in stream set-up ("keys"), drawing words
    ("words") and expanding signs and multiplying ("products")."""
    get = deltas if callable(deltas) else deltas.__getitem__
    spent = {"keys": 0.0, "words": 0.0}
    total = np.zeros(len(keys))  # Σ z
    square = np.zeros(len(keys))  # Σ z²
    read: dict[str, tuple[np.ndarray, float]] = {}
    t0 = time.perf_counter()
    for layer, rows, u, v in stacked_directions(keys, params, spent):
        if layer.name not in read:
            read[layer.name] = _read_layer(get(layer.name), layer)
        delta, sigma = read[layer.name]
        z = (np.einsum("ij,ij->i", u @ delta, v).astype(np.float64) / sigma).reshape(rows.size, STATISTICS)
        total[rows] += z.sum(axis=1)
        square[rows] += (z * z).sum(axis=1)
    if profile is not None:
        profile.update(spent, products=time.perf_counter() - t0 - spent["keys"] - spent["words"])
    norms = np.sqrt(square)
    return np.where(norms > 0, total / np.where(norms > 0, norms, 1.0), 0.0)


def stacked_directions(keys: Sequence[bytes], params: MarkingParams, spent: dict[str, float] | None = None
                       ) -> Iterator[tuple[LayerSpec, np.ndarray, np.ndarray, np.ndarray]]:
    """(layer, key indices, u, v) blocks: the float32 rows ``directions(keys[j], params)`` has on
    that layer (u32, v32), stacked for up to BLOCK_KEYS keys j, STATISTICS rows per key.

    Keys are taken in chunks whose words fit WORDS_BYTES; per chunk, the layers, u- and v-streams
    of all keys run in lock step (ChaosLanes: the same streams as ChaosStream). ``spent``, if
    given, accumulates seconds under "keys" (stream set-up) and "words"."""
    for k in keys:
        if len(k) != KEY_BYTES:
            raise ValueError(f"detection key must be {KEY_BYTES} bytes")
    spent = {"keys": 0.0, "words": 0.0} if spent is None else spent
    layers = params.layers
    wu, wv = _word_counts(params)
    most = int(np.sort(wu + wv)[::-1][:MAX_LAYERS].sum())  # words one key can need
    chunk = max(BLOCK_KEYS, WORDS_BYTES // (8 * most))
    for start in range(0, len(keys), chunk):
        part = list(keys[start:start + chunk])
        t0 = time.perf_counter()
        su, sv = (ChaosLanes(part, params.backbone_id, "", purpose) for purpose in (PURPOSE_U, PURPOSE_V))
        chooser = ChaosLanes(part, params.backbone_id, "", PURPOSE_LAYERS) if len(layers) > MAX_LAYERS else None
        t1 = time.perf_counter()
        mask = np.ones((len(part), len(layers)), bool) if chooser is None else _chosen(chooser.words(len(layers)))
        off_u = np.cumsum(mask * wu, axis=1) - mask * wu  # first word of each keyed layer in the key's u-stream
        off_v = np.cumsum(mask * wv, axis=1) - mask * wv
        words_u = su.words(int((mask * wu).sum(axis=1).max()))
        words_v = sv.words(int((mask * wv).sum(axis=1).max()))
        spent["keys"] += t1 - t0
        spent["words"] += time.perf_counter() - t1
        for i, layer in enumerate(layers):
            owners = np.flatnonzero(mask[:, i])
            for b in range(0, owners.size, BLOCK_KEYS):  # blocks small enough to stay in cache
                own = owners[b:b + BLOCK_KEYS]
                yield (layer, start + own, _signs(words_u, own, off_u[own, i], int(wu[i]), layer.out_features),
                       _signs(words_v, own, off_v[own, i], int(wv[i]), layer.in_features))


def _read_layer(delta, layer: LayerSpec) -> tuple[np.ndarray, float]:
    delta = np.asarray(delta, dtype=np.float32)
    if delta.shape != (layer.out_features, layer.in_features):
        raise ValueError(f"layer {layer.name}: ΔW shape {delta.shape} does not match parameters")
    sigma = float(np.linalg.norm(delta.astype(np.float64).ravel()) / math.sqrt(delta.size))
    if not sigma > 0.0:
        raise ValueError(f"layer {layer.name}: ΔW is zero, nothing to read or mark")
    return delta, sigma


def _signs(words: np.ndarray, owners: np.ndarray, first: np.ndarray, count: int, width: int) -> np.ndarray:
    """The owners' direction rows on one layer, float32 [owners · STATISTICS, width] of ±1/√width:
    ``count`` words from each owner's ``first``, most significant bit first (ChaosStream.rademacher)."""
    raw = words[owners[:, None], first[:, None] + np.arange(count)].astype(">u8").view(np.uint8)
    signs = _byte_signs(width)[raw].reshape(owners.size, count * 64)[:, :STATISTICS * width]
    return signs.reshape(-1, width)


@functools.lru_cache(maxsize=32)
def _byte_signs(width: int) -> np.ndarray:
    """[256, 8] float32: byte → its 8 bits, most significant first, as ±1/√width (one gather per byte)."""
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)
    scale = np.float32(1.0 / math.sqrt(width))
    return np.where(bits == 1, scale, -scale).astype(np.float32)


def p_value(score: float) -> float:
    """The Hoeffding bound exp(−T²/2) of a presence score (1 for T ≤ 0)."""
    return math.exp(-score * score / 2.0) if score > 0 else 1.0
