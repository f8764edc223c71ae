"""Regenerate the sealed-blob test vectors (spec/sealed.md §Test vectors).

    .venv/bin/python spec/vectors/tee/generate.py

Deterministic parts (device keys, payload layer) come out identical on every run.
HPKE encapsulation is randomised, so the full blobs differ per run; they are kept as produced once
and the tests check that they still open (and that each mutated copy fails with its named error).
Run with --force to overwrite blobs.json too (only when the format version changes).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import uuid
from pathlib import Path

import numpy as np

from emshield.core import LoraFactors, core_to_bytes
from emshield.tee.blobformat import CONTENT_CORE, CONTENT_OPAQUE, FIXED_LEN, TAG_LEN, Binding, read_header
from emshield.tee.devicekey import DevicePublicKey
from emshield.tee.seal import encrypt_chunks, payload_key, seal_bytes

HERE = Path(__file__).resolve().parent


def det(label: str, n: int) -> bytes:
    """Fixed pseudo-random test bytes: SHAKE256 of a label (NOT a key-generation method)."""
    return hashlib.shake_256(b"emshield/test-vector/" + label.encode()).digest(n)


SECRETS = [det("device-secret-0", 32), det("device-secret-1", 32)]
UUIDS = [uuid.UUID(bytes=det("uuid-0", 16), version=4), uuid.UUID(bytes=det("uuid-1", 16), version=4)]
BACKBONE, LEAF = det("backbone-id", 32), det("leaf-hash", 32)


def device_keys() -> list[dict]:
    out = []
    for s in SECRETS:
        pub = DevicePublicKey.from_secret(s)
        out.append({"secret": s.hex(), "x25519_public": pub.x25519.hex(), "xwing_public": pub.xwing.hex()})
    return out


def sample_core() -> dict[str, LoraFactors]:
    rng = np.random.default_rng(6)
    return {
        "model.layers.0.self_attn.q_proj.weight": LoraFactors(
            rng.standard_normal((2, 8)).astype(np.float32), rng.standard_normal((8, 2)).astype(np.float32), 2.0),
        "model.layers.0.self_attn.v_proj.weight": LoraFactors(
            rng.standard_normal((2, 8)).astype(np.float16), rng.standard_normal((4, 2)).astype(np.float16), 0.25),
    }


def core_tensors() -> dict:
    """The sample core as JSON: the core blob's plaintext is its core file (`emshield/core/v1`)."""
    return {k: {"a": f.a.tolist(), "b": f.b.tolist(), "dtype": str(f.a.dtype), "scale": f.scale}
            for k, f in sample_core().items()}


def blob_vectors() -> list[dict]:
    pub = DevicePublicKey.from_secret(SECRETS[0])
    binding = Binding(UUIDS[0], BACKBONE, LEAF)
    out = []
    for suite, content, plaintext, chunk in [
        ("x25519", CONTENT_OPAQUE, det("plaintext-100", 100), 32),
        ("x25519", CONTENT_OPAQUE, b"", 16),
        ("mlkem768-x25519", CONTENT_CORE, core_to_bytes(sample_core()), 64),
    ]:
        blob = seal_bytes(plaintext, pub, binding, suite=suite, content_type=content, chunk_size=chunk)
        out.append({"name": f"{suite}-{len(plaintext)}B-chunk{chunk}", "expect": "ok", "blob": blob.hex(),
                    "plaintext": plaintext.hex(), **({"core": core_tensors()} if content == CONTENT_CORE else {})})
    return out


def mutations(good: dict) -> list[dict]:
    """Named corruptions of a multi-chunk x25519 blob and the error each must raise."""
    blob = bytes.fromhex(good["blob"])
    h = read_header(io.BytesIO(blob))
    body = FIXED_LEN + h.suite.wrapped_len
    c = h.chunk_size + TAG_LEN
    chunks = [blob[body + i * c: body + (i + 1) * c] for i in range(h.chunk_count)]

    def flip(pos: int) -> bytes:
        b = bytearray(blob)
        b[pos] ^= 0x01
        return bytes(b)

    cases = [
        ("bad-magic", flip(0), "MalformedBlobError"),
        ("version-2", blob[:8] + b"\x00\x02" + blob[10:], "UnsupportedVersionError"),
        ("unknown-kem", blob[:10] + b"\x00\x21" + blob[12:], "UnsupportedSuiteError"),
        ("chunk-size-flipped", flip(20), "KeyUnwrapError"),
        ("wrapped-key-flipped", flip(FIXED_LEN + 3), "KeyUnwrapError"),
        ("ciphertext-flipped", flip(body + 5), "TamperedBlobError"),
        ("tag-flipped", flip(len(blob) - 1), "TamperedBlobError"),
        ("chunks-swapped", blob[:body] + chunks[1] + chunks[0] + b"".join(chunks[2:]), "TamperedBlobError"),
        ("chunk-dropped", blob[:body] + chunks[0] + b"".join(chunks[2:]), "TamperedBlobError"),
        ("truncated-in-header", blob[:50], "TruncatedBlobError"),
        ("truncated-last-chunk", blob[:-1], "TruncatedBlobError"),
        ("extended", blob + b"\x00", "TrailingDataError"),
        ("chunk-appended", blob + chunks[-1], "TrailingDataError"),
    ]
    return [{"name": n, "expect": e, "blob": b.hex()} for n, b, e in cases]


def payload_vector() -> dict:
    """The chunk layer alone: fixed header (with the wrapped key of blob 0), data key and plaintext."""
    blob = bytes.fromhex(blob_vectors_cached()[0]["blob"])
    header = read_header(io.BytesIO(blob))
    data_key = det("data-key", 32)
    plaintext = det("plaintext-100", 100)
    out = io.BytesIO()
    encrypt_chunks(io.BytesIO(plaintext), out, header, data_key)
    return {"header": header.encode().hex(), "header_hash": header.hash().hex(), "data_key": data_key.hex(),
            "payload_key": payload_key(data_key, header.hash()).hex(), "plaintext": plaintext.hex(),
            "chunks": out.getvalue().hex()}


_blobs: list[dict] | None = None


def blob_vectors_cached() -> list[dict]:
    global _blobs
    if _blobs is None:
        path = HERE / "blobs.json"
        if path.exists() and "--force" not in sys.argv:
            _blobs = [v for v in json.loads(path.read_text())["vectors"] if v["expect"] == "ok"]
        else:
            _blobs = blob_vectors()
    return _blobs


def main() -> None:
    common = {"device_secret": SECRETS[0].hex(), "device_uuid": str(UUIDS[0]), "backbone_id": BACKBONE.hex(),
              "leaf_hash": LEAF.hex()}
    good = blob_vectors_cached()
    files = {
        "device-keys.json": {"produced_by": "spec/vectors/tee/generate.py", "vectors": device_keys()},
        "payload.json": {"produced_by": "spec/vectors/tee/generate.py", **payload_vector()},
        "blobs.json": {"produced_by": "spec/vectors/tee/generate.py (HPKE is randomised: produced once)",
                       "binding": common, "other_device_uuid": str(UUIDS[1]),
                       "vectors": good + mutations(good[0])},
    }
    for name, obj in files.items():
        (HERE / name).write_text(json.dumps(obj, indent=1) + "\n")
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
