"""Public marking parameters: what a blind verifier needs, as one deterministic-CBOR blob.

Published in the issuer's model registration entry. Holds the *verification key* (the seed of the
watermark directions and fingerprint probes, derived from the issuer's secret by HKDF) but never
the secret itself: whoever holds the parameters can read the mark, and therefore also remove or
forge it (spec/watermark.md, "Threat model"). The secret only derives per-device payloads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from emshield.cbor import strict_loads
from emshield.marking import ecc

VERSION = 1
CHAOS_ALG = "emshield-chaos-fsm-v1"
WATERMARK_ALG = "emshield-wm-uv-rs-v1"
FINGERPRINT_ALG = "emshield-fp-spectrum-probes-v1"
MAX_PARAMS_BYTES = 1 << 20
MAX_LAYERS = 4096
MAX_DIM = 1 << 20
MIN_SECRET_BYTES = 32
VK_LABEL = b"emshield/watermark-vk/v1"
PAYLOAD_LABEL = b"emshield/watermark-payload/v1"
COMMITMENT_LABEL = b"emshield/watermark-commitment/v1"
PARAMS_LABEL = b"emshield/marking-params/v1"

_FIELDS = {
    "v": int,
    "chaos": str,
    "wm": str,
    "fp": str,
    "backbone_id": str,
    "vk": bytes,
    "layers": list,
    "rs_nsym": int,
    "tau_milli": int,
    "accept_log10_p": int,
    "fp_k": int,
    "fp_probes": int,
    "fp_threshold_milli": int,
}


class ParamsError(ValueError):
    """Malformed, non-canonical or unsupported marking parameters."""


def strict_cbor_map(blob: bytes, limit: int, keys: set[str], what: str, error: type[ValueError]) -> dict:
    """Bounded, strict CBOR decode (emshield.cbor.strict_loads, depth ≤ 4) of a map with exactly `keys`."""
    if len(blob) > limit:
        raise error(f"{what} larger than {limit} bytes")
    obj = strict_loads(blob, what, 4, error)
    if not isinstance(obj, dict) or set(obj) != keys:
        raise error(f"{what} must be a map with exactly the fields {sorted(keys)}")
    return obj


@dataclass(frozen=True)
class LayerSpec:
    """A marked layer: backbone weight tensor name and ΔW shape (out, in)."""

    name: str
    out_features: int
    in_features: int


@dataclass(frozen=True)
class MarkingParams:
    backbone_id: str
    verification_key: bytes
    layers: tuple[LayerSpec, ...]
    rs_nsym: int = 10
    tau_milli: int = 3000
    accept_log10_p: int = -9
    fp_k: int = 8
    fp_probes: int = 16
    fp_threshold_milli: int = 150

    def __post_init__(self) -> None:
        if len(self.verification_key) != 32:
            raise ParamsError("verification key must be 32 bytes")
        if not 1 <= len(self.layers) <= MAX_LAYERS:
            raise ParamsError(f"1..{MAX_LAYERS} layers required")
        if len({layer.name for layer in self.layers}) != len(self.layers):
            raise ParamsError("duplicate layer name")
        for layer in self.layers:
            if not (0 < layer.out_features <= MAX_DIM and 0 < layer.in_features <= MAX_DIM):
                raise ParamsError(f"bad shape for layer {layer.name}")
        if not 2 <= self.rs_nsym <= 32 or self.rs_nsym % 2:
            raise ParamsError("rs_nsym must be even, 2..32")
        if not 100 <= self.tau_milli <= 100_000:
            raise ParamsError("tau_milli out of range")
        if not -300 <= self.accept_log10_p <= -1:
            raise ParamsError("accept_log10_p out of range")
        if not 1 <= self.fp_k <= 256 or not 1 <= self.fp_probes <= 256:
            raise ParamsError("fingerprint sizes out of range")
        if not 1 <= self.fp_threshold_milli <= 10_000:
            raise ParamsError("fingerprint threshold out of range")

    @property
    def code_bits(self) -> int:
        return ecc.code_length_bits(self.rs_nsym)

    @property
    def tau(self) -> float:
        return self.tau_milli / 1000.0

    def to_cbor(self) -> bytes:
        """Deterministic CBOR (RFC 8949 §4.2.1: shortest forms, sorted map keys)."""
        return cbor2.dumps(
            {
                "v": VERSION,
                "chaos": CHAOS_ALG,
                "wm": WATERMARK_ALG,
                "fp": FINGERPRINT_ALG,
                "backbone_id": self.backbone_id,
                "vk": self.verification_key,
                "layers": [[lay.name, lay.out_features, lay.in_features] for lay in self.layers],
                "rs_nsym": self.rs_nsym,
                "tau_milli": self.tau_milli,
                "accept_log10_p": self.accept_log10_p,
                "fp_k": self.fp_k,
                "fp_probes": self.fp_probes,
                "fp_threshold_milli": self.fp_threshold_milli,
            },
            canonical=True,
        )

    def digest(self) -> bytes:
        return hashlib.sha256(PARAMS_LABEL + b"\x00" + self.to_cbor()).digest()

    @classmethod
    def from_cbor(cls, blob: bytes) -> MarkingParams:
        """Strict decode: size bound, exact field set and types, known versions, canonical bytes."""
        obj = strict_cbor_map(blob, MAX_PARAMS_BYTES, set(_FIELDS), "marking parameters", ParamsError)
        for key, typ in _FIELDS.items():
            if type(obj[key]) is not typ:
                raise ParamsError(f"field {key!r} has the wrong type")
        if obj["v"] != VERSION:
            raise ParamsError(f"unsupported marking parameters version {obj['v']}")
        if (obj["chaos"], obj["wm"], obj["fp"]) != (CHAOS_ALG, WATERMARK_ALG, FINGERPRINT_ALG):
            raise ParamsError("unknown marking algorithm identifiers")
        layers = []
        for item in obj["layers"]:
            if not (
                isinstance(item, list)
                and len(item) == 3
                and type(item[0]) is str
                and type(item[1]) is int
                and type(item[2]) is int
            ):
                raise ParamsError("each layer must be [name, out, in]")
            layers.append(LayerSpec(item[0], item[1], item[2]))
        params = cls(
            backbone_id=obj["backbone_id"],
            verification_key=obj["vk"],
            layers=tuple(layers),
            rs_nsym=obj["rs_nsym"],
            tau_milli=obj["tau_milli"],
            accept_log10_p=obj["accept_log10_p"],
            fp_k=obj["fp_k"],
            fp_probes=obj["fp_probes"],
            fp_threshold_milli=obj["fp_threshold_milli"],
        )
        if params.to_cbor() != bytes(blob):
            raise ParamsError("marking parameters are not in deterministic CBOR encoding")
        return params


def check_secret(issuer_secret: bytes) -> None:
    if len(issuer_secret) < MIN_SECRET_BYTES:
        raise ValueError(f"issuer marking secret must be at least {MIN_SECRET_BYTES} bytes")


def verification_key(issuer_secret: bytes, backbone_id: str) -> bytes:
    """Public direction seed for one backbone: HKDF-SHA256(secret, salt=label, info=backbone id)."""
    check_secret(issuer_secret)
    return HKDF(hashes.SHA256(), 32, VK_LABEL, backbone_id.encode("utf-8")).derive(issuer_secret)


def payload_for_device(issuer_secret: bytes, device_uuid: bytes) -> int:
    """48-bit payload of one issuance: first 6 bytes of HKDF(secret, salt=label, info=uuid), big-endian.

    Keyed so that the payload reveals nothing about the UUID without the secret. 48 bits collide by
    chance after ~2^24 devices: the issuer must check the log's index before issuing.
    """
    check_secret(issuer_secret)
    if len(device_uuid) != 16:
        raise ValueError("device UUID must be 16 bytes")
    okm = HKDF(hashes.SHA256(), ecc.PAYLOAD_BYTES, PAYLOAD_LABEL, device_uuid).derive(issuer_secret)
    return int.from_bytes(okm, "big")


def watermark_commitment(payload: int, params: MarkingParams) -> bytes:
    """Index key of an issuance: SHA-256(label ‖ 0x00 ‖ params digest ‖ payload as 6 bytes BE).

    Binding, not hiding: 48 bits can be searched exhaustively, which is why the payload is keyed.
    """
    if not 0 <= payload < 1 << ecc.PAYLOAD_BITS:
        raise ValueError("payload must be a 48-bit unsigned integer")
    return hashlib.sha256(
        COMMITMENT_LABEL + b"\x00" + params.digest() + payload.to_bytes(ecc.PAYLOAD_BYTES, "big")
    ).digest()
