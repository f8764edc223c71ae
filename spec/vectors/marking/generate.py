"""Regenerate the marking test vectors: `.venv/bin/python spec/vectors/marking/generate.py`.

Produced by emshield.marking at the version named in each file; tests/marking/ checks every value.
Floats are written with repr() and compared with the tolerance stated in each file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emshield.core import LoraFactors
from emshield.marking import ecc, fingerprint, secret, watermark
from emshield.marking.chaos import ChaosStream
from emshield.marking.params import (
    LayerSpec,
    MarkingParams,
    payload_for_device,
    verification_key,
    watermark_commitment,
)

HERE = Path(__file__).parent
CHAOS_CASES = [
    (bytes(range(32)).hex(), "smollm2-135m", "model.layers.0.self_attn.q_proj.weight", "watermark-u"),
    (("ab" * 16), "", "", ""),
    (("0f" * 48), "backbone/ü", "layer", "fingerprint-probe-in"),
]
ISSUER_SECRET = bytes(range(100, 132))
DEVICE_UUID = bytes.fromhex("00112233445566778899aabbccddeeff")
PAYLOAD = 0x0123456789AB


def chaos_vectors() -> dict:
    cases = []
    for key_hex, backbone, layer, purpose in CHAOS_CASES:
        key = bytes.fromhex(key_hex)
        words = ChaosStream(key, backbone, layer, purpose).words(16)
        xs, ss = ChaosStream(key, backbone, layer, purpose).states(16)
        g = ChaosStream(key, backbone, layer, purpose)
        bits = g.bits(100)
        uniforms = g.uniforms(4)
        below = [g.below(b) for b in (1, 2, 3, 10, 1000, 2**63 + 5)]
        perm = g.permutation(20)
        cases.append(
            {
                "key": key_hex,
                "backbone_id": backbone,
                "layer": layer,
                "purpose": purpose,
                "words": [f"{int(w):016x}" for w in words],
                "map_states": [f"{int(x):016x}" for x in xs],
                "machine_states": [int(s) for s in ss],
                "then_bits_100": "".join(str(int(b)) for b in bits),
                "then_uniforms_4": [repr(float(u)) for u in uniforms],
                "then_below_1_2_3_10_1000_2p63p5": below,
                "then_permutation_20": [int(p) for p in perm],
            }
        )
    return {"version": 1, "alg": "emshield-chaos-fsm-v1", "produced_by": "spec/vectors/marking/generate.py", "cases": cases}


def vector_params() -> MarkingParams:
    vk = verification_key(ISSUER_SECRET, "vector-backbone")
    layers = (LayerSpec("layers.0.q_proj.weight", 128, 128), LayerSpec("layers.0.v_proj.weight", 64, 128))
    return MarkingParams("vector-backbone", vk, layers, rs_nsym=6, tau_milli=2000)


def vector_core(params: MarkingParams) -> dict[str, LoraFactors]:
    rng = np.random.default_rng(20261123)
    core = {}
    for layer in params.layers:
        a = rng.standard_normal((8, layer.in_features)).astype(np.float32)
        b = (0.01 * rng.standard_normal((layer.out_features, 8))).astype(np.float32)
        core[layer.name] = LoraFactors(a, b, 2.0)
    return core


def factors_json(core: dict[str, LoraFactors]) -> dict:
    return {
        name: {"a": f.a.astype("<f4").tobytes().hex(), "b": f.b.astype("<f4").tobytes().hex(), "scale": f.scale}
        for name, f in core.items()
    }


def watermark_vectors() -> dict:
    params = vector_params()
    core = vector_core(params)
    marked, report = watermark.embed(core, PAYLOAD, params)
    ex = watermark.extract_from_factors(marked, params)
    first = params.layers[0]
    d = watermark.directions(params, first)
    return {
        "version": 1,
        "alg": "emshield-wm-uv-rs-v1",
        "produced_by": "spec/vectors/marking/generate.py",
        "float_tolerance": 1e-6,
        "issuer_secret": ISSUER_SECRET.hex(),
        "device_uuid": DEVICE_UUID.hex(),
        "payload_for_device": payload_for_device(ISSUER_SECRET, DEVICE_UUID),
        "params_cbor": params.to_cbor().hex(),
        "params_digest": params.digest().hex(),
        "payload": PAYLOAD,
        "commitment": watermark_commitment(PAYLOAD, params).hex(),
        "code_bits": "".join(str(int(b)) for b in ecc.encode(PAYLOAD, params.rs_nsym)),
        "direction_u0_signs_layer0": "".join("1" if x > 0 else "0" for x in d.u[0]),
        "direction_v0_signs_layer0": "".join("1" if x > 0 else "0" for x in d.v[0]),
        "unmarked_core": factors_json(core),
        "unmarked_z": [repr(float(x)) for x in report.z_before],
        "marked_core": factors_json(marked),
        "marked_z": [repr(float(x)) for x in ex.z],
        "extracted_bits": "".join(str(int(b)) for b in ex.bits),
        "extracted_payload": ex.payload,
        "bit_errors": ex.bit_errors,
    }


SECRET_SALT = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")


def secret_vectors() -> dict:
    params = vector_params()
    core = vector_core(params)
    dk = secret.detection_key(ISSUER_SECRET, params.backbone_id, DEVICE_UUID, SECRET_SALT)
    extra = secret.directions(dk.key, params)
    marked, report = watermark.embed(core, PAYLOAD, params, extra=extra)
    first = extra.layers[params.layers[0].name]
    wide = MarkingParams("vector-backbone", params.verification_key,
                         tuple(LayerSpec(f"layers.{i}.weight", 4, 4) for i in range(40)))
    return {
        "version": 1,
        "alg": secret.ALG,
        "produced_by": "spec/vectors/marking/generate.py (params and cores: watermark.json)",
        "float_tolerance": 1e-6,
        "issuer_secret": ISSUER_SECRET.hex(),
        "backbone_id": params.backbone_id,
        "device_uuid": DEVICE_UUID.hex(),
        "salt": SECRET_SALT.hex(),
        "detection_key": dk.key.hex(),
        "nonce": dk.nonce.hex(),
        "commitment": dk.commitment.hex(),
        "statistics": secret.STATISTICS,
        "tau": secret.TAU,
        "keyed_layers": list(extra.layers),
        "keyed_layers_of_40": [int(lay.name.split(".")[1]) for lay in secret.keyed_layers(dk.key, wide)],
        "direction_u0_signs_layer0": "".join("1" if x > 0 else "0" for x in first.u[0]),
        "direction_v0_signs_layer0": "".join("1" if x > 0 else "0" for x in first.v[0]),
        "unmarked_score": secret.presence_from_factors(core, dk.key, params).score,
        "marked_core": factors_json(marked),
        "marked_terms": [[repr(float(x)) for x in row] for row in report.extra_terms_after],
        "marked_statistics": [repr(float(x)) for x in report.extra_z_after],
        "marked_score": repr(secret.presence(report.extra_terms_after).score),
        "marked_payload": watermark.extract_from_factors(marked, params).payload,
    }


def fingerprint_vectors() -> dict:
    params = vector_params()
    core = vector_core(params)
    fp = fingerprint.fingerprint_factors(core, params)
    return {
        "version": 1,
        "alg": "emshield-fp-spectrum-probes-v1",
        "produced_by": "spec/vectors/marking/generate.py (core: unmarked_core of watermark.json)",
        "feature_tolerance_quanta": 1,
        "fingerprint_cbor": fp.to_cbor().hex(),
        "fingerprint_hash": fp.hash().hex(),
    }


def main() -> None:
    for name, data in (
        ("chaos.json", chaos_vectors()),
        ("watermark.json", watermark_vectors()),
        ("fingerprint.json", fingerprint_vectors()),
        ("secret.json", secret_vectors()),
    ):
        (HERE / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
