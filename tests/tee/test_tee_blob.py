"""Sealed-blob format: round trips, published vectors, and every tampering a blob can suffer."""

from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pytest

from _kit.tee import VECTORS, cores_equal
from emshield.core import LoraFactors, core_from_bytes, core_to_bytes
from emshield.tee import errors
from emshield.tee.blobformat import CONTENT_CORE, FIXED_LEN, TAG_LEN, Binding, Header, read_header
from emshield.tee.devicekey import DevicePublicKey, new_secret
from emshield.tee.seal import check_binding, decrypt_chunks, encrypt_chunks, payload_key, seal_bytes, unwrap_data_key

BACKBONE, LEAF = bytes(range(32)), bytes(range(100, 132))


def unseal(blob: bytes, secret: bytes | bytearray, expected: Binding) -> bytes:
    """Library-level unseal into an ordinary buffer (mount does the same into secret memory)."""
    src = io.BytesIO(blob)
    header = read_header(src)
    check_binding(header, expected)
    key = unwrap_data_key(header, secret)
    out = bytearray(header.plaintext_length)
    decrypt_chunks(src, header, key, memoryview(out))
    return bytes(out)


@pytest.fixture(scope="module")
def keys() -> tuple[bytearray, DevicePublicKey, Binding]:
    secret = new_secret()
    return secret, DevicePublicKey.from_secret(secret), Binding(uuid.uuid4(), BACKBONE, LEAF)


@pytest.mark.parametrize("suite", ["x25519", "mlkem768-x25519"])
@pytest.mark.parametrize(("length", "chunk"), [(0, 16), (1, 16), (16, 16), (17, 16), (1000, 64), (5000, 1 << 20)])
def test_round_trip(keys, suite: str, length: int, chunk: int) -> None:
    secret, pub, binding = keys
    plaintext = bytes((i * 7 + length) % 256 for i in range(length))
    blob = seal_bytes(plaintext, pub, binding, suite=suite, chunk_size=chunk)
    header = read_header(io.BytesIO(blob))
    assert header.suite.name == suite and header.plaintext_length == length
    assert header.blob_length == len(blob)
    assert unseal(blob, secret, binding) == plaintext


def test_two_seals_of_the_same_core_differ(keys) -> None:
    """A fresh data key and HPKE ephemeral per seal: equal plaintexts give unrelated blobs."""
    _, pub, binding = keys
    a, b = (seal_bytes(b"same core" * 50, pub, binding) for _ in range(2))
    assert a[FIXED_LEN:] != b[FIXED_LEN:] and a[:FIXED_LEN] == b[:FIXED_LEN]


def test_declared_length_must_match_the_stream(keys) -> None:
    _, pub, binding = keys
    from emshield.tee.seal import seal_stream

    with pytest.raises(ValueError, match="early"):
        seal_stream(io.BytesIO(b"short"), io.BytesIO(), 10, pub, binding)
    with pytest.raises(ValueError, match="longer"):
        seal_stream(io.BytesIO(b"longer than declared"), io.BytesIO(), 4, pub, binding)


# -- binding errors ---------------------------------------------------------------------------------

def test_wrong_device_uuid(keys) -> None:
    secret, pub, binding = keys
    blob = seal_bytes(b"core", pub, binding)
    other = Binding(uuid.uuid4(), BACKBONE, LEAF)
    with pytest.raises(errors.WrongDeviceError, match=str(binding.device_uuid)):
        unseal(blob, secret, other)


def test_wrong_backbone_and_issuance(keys) -> None:
    secret, pub, binding = keys
    blob = seal_bytes(b"core", pub, binding)
    with pytest.raises(errors.WrongBackboneError):
        unseal(blob, secret, Binding(binding.device_uuid, bytes(32), LEAF))
    with pytest.raises(errors.WrongIssuanceError, match=LEAF.hex()):
        unseal(blob, secret, Binding(binding.device_uuid, BACKBONE, bytes(32)))


@pytest.mark.parametrize("suite", ["x25519", "mlkem768-x25519"])
def test_another_key_with_the_same_uuid_cannot_unwrap(keys, suite: str) -> None:
    secret, pub, binding = keys
    blob = seal_bytes(b"core", pub, binding, suite=suite)
    with pytest.raises(errors.KeyUnwrapError):
        unseal(blob, new_secret(), binding)


def test_forged_binding_fields_fail_authentication(keys) -> None:
    """Rewriting the header's leaf hash to the one the victim expects does not make the blob open:
    the binding is authenticated by HPKE info and by every chunk's AAD."""
    secret, pub, binding = keys
    blob = bytearray(seal_bytes(b"core for issuance A", pub, binding))
    new_leaf = bytes(32)
    blob[78:110] = new_leaf  # leaf hash field, spec/sealed.md §Header
    with pytest.raises(errors.KeyUnwrapError):
        unseal(bytes(blob), secret, Binding(binding.device_uuid, BACKBONE, new_leaf))


def test_header_spliced_onto_another_blobs_chunks(keys) -> None:
    secret, pub, binding = keys
    a = seal_bytes(b"A" * 100, pub, binding, chunk_size=32)
    b = seal_bytes(b"B" * 100, pub, binding, chunk_size=32)
    body = FIXED_LEN + 80
    with pytest.raises(errors.TamperedBlobError, match="chunk 0"):
        unseal(a[:body] + b[body:], secret, binding)


# -- published vectors ------------------------------------------------------------------------------

def _load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def test_device_key_vectors() -> None:
    for v in _load("device-keys.json")["vectors"]:
        pub = DevicePublicKey.from_secret(bytes.fromhex(v["secret"]))
        assert pub.x25519.hex() == v["x25519_public"]
        assert pub.xwing.hex() == v["xwing_public"]


def test_payload_vector_is_reproduced_exactly() -> None:
    v = _load("payload.json")
    header = read_header(io.BytesIO(bytes.fromhex(v["header"])))
    assert header.encode().hex() == v["header"]
    assert header.hash().hex() == v["header_hash"]
    data_key = bytes.fromhex(v["data_key"])
    assert payload_key(data_key, header.hash()).hex() == v["payload_key"]
    out = io.BytesIO()
    encrypt_chunks(io.BytesIO(bytes.fromhex(v["plaintext"])), out, header, data_key)
    assert out.getvalue().hex() == v["chunks"]
    back = bytearray(header.plaintext_length)
    decrypt_chunks(io.BytesIO(out.getvalue()), header, data_key, memoryview(back))
    assert back.hex() == v["plaintext"]


def _vector_cases() -> list[dict]:
    return _load("blobs.json")["vectors"]


@pytest.mark.parametrize("vector", _vector_cases(), ids=lambda v: v["name"])
def test_blob_vectors(vector: dict) -> None:
    meta = _load("blobs.json")["binding"]
    secret = bytes.fromhex(meta["device_secret"])
    binding = Binding(uuid.UUID(meta["device_uuid"]), bytes.fromhex(meta["backbone_id"]),
                      bytes.fromhex(meta["leaf_hash"]))
    blob = bytes.fromhex(vector["blob"])
    if vector["expect"] == "ok":
        plaintext = unseal(blob, secret, binding)
        assert plaintext.hex() == vector["plaintext"]
        if "core" in vector:  # a core blob's plaintext is exactly the core file of the listed core
            assert read_header(io.BytesIO(blob)).content_type == CONTENT_CORE
            core = {k: LoraFactors(np.array(t["a"], dtype=t["dtype"]), np.array(t["b"], dtype=t["dtype"]), t["scale"])
                    for k, t in vector["core"].items()}
            assert cores_equal(core_from_bytes(plaintext), core) and core_to_bytes(core) == plaintext
        with pytest.raises(errors.WrongDeviceError):
            unseal(blob, secret, Binding(uuid.UUID(_load("blobs.json")["other_device_uuid"]),
                                         binding.backbone_id, binding.leaf_hash))
    else:
        with pytest.raises(getattr(errors, vector["expect"])) as caught:
            unseal(blob, secret, binding)
        assert type(caught.value).__name__ == vector["expect"]


# -- structural tampering on fresh blobs ------------------------------------------------------------

@pytest.fixture(scope="module")
def multi(keys) -> tuple[bytes, Header, list[bytes]]:
    _, pub, binding = keys
    blob = seal_bytes(bytes(range(256)) * 4, pub, binding, chunk_size=128)  # 8 chunks
    header = read_header(io.BytesIO(blob))
    body = FIXED_LEN + header.suite.wrapped_len
    size = header.chunk_size + TAG_LEN
    return blob, header, [blob[body + i * size: body + (i + 1) * size] for i in range(header.chunk_count)]


def test_every_single_bit_flip_region_is_detected(keys, multi) -> None:
    secret, _, binding = keys
    blob, header, _ = multi
    for pos in [*range(8, FIXED_LEN), FIXED_LEN + 1, len(blob) // 2, len(blob) - 17, len(blob) - 1]:
        bad = bytearray(blob)
        bad[pos] ^= 0x80
        with pytest.raises(errors.SealError):
            unseal(bytes(bad), secret, binding)


@pytest.mark.parametrize("cut", [1, 16, 17, 144, 500])
def test_truncation_is_detected(keys, multi, cut: int) -> None:
    secret, _, binding = keys
    blob, _, _ = multi
    with pytest.raises(errors.TruncatedBlobError):
        unseal(blob[:-cut], secret, binding)


def test_truncation_at_a_chunk_boundary_is_detected(keys, multi) -> None:
    """Dropping whole final chunks leaves a well-formed prefix; the header length and the final flag catch it."""
    secret, _, binding = keys
    blob, header, chunks = multi
    body = FIXED_LEN + header.suite.wrapped_len
    with pytest.raises(errors.TruncatedBlobError):
        unseal(blob[:body] + b"".join(chunks[:-1]), secret, binding)


def test_reordering_and_duplicating_chunks_is_detected(keys, multi) -> None:
    secret, _, binding = keys
    blob, header, chunks = multi
    body = blob[: FIXED_LEN + header.suite.wrapped_len]
    for order in ([1, 0, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 7, 6], [0, 0, 2, 3, 4, 5, 6, 7]):
        with pytest.raises(errors.TamperedBlobError):
            unseal(body + b"".join(chunks[i] for i in order), secret, binding)


def test_extension_is_detected(keys, multi) -> None:
    secret, _, binding = keys
    blob, _, chunks = multi
    with pytest.raises(errors.TrailingDataError):
        unseal(blob + chunks[-1], secret, binding)


def test_not_a_blob_and_future_versions() -> None:
    with pytest.raises(errors.MalformedBlobError, match="magic"):
        read_header(io.BytesIO(b"PK\x03\x04" + bytes(200)))
    with pytest.raises(errors.MalformedBlobError, match="magic"):
        read_header(io.BytesIO(b""))
    with pytest.raises(errors.UnsupportedVersionError, match="version 7"):
        read_header(io.BytesIO(b"EMSHSEAL\x00\x07" + bytes(200)))


def test_header_range_checks(keys, multi) -> None:
    blob, _, _ = multi

    def patched(offset: int, value: bytes) -> bytes:
        return blob[:offset] + value + blob[offset + len(value):]

    with pytest.raises(errors.MalformedBlobError, match="chunk size"):
        read_header(io.BytesIO(patched(18, (1).to_bytes(4, "big"))))
    with pytest.raises(errors.MalformedBlobError, match="plaintext length"):
        read_header(io.BytesIO(patched(22, (1 << 41).to_bytes(8, "big"))))
    with pytest.raises(errors.MalformedBlobError, match="content type"):
        read_header(io.BytesIO(patched(16, (9).to_bytes(2, "big"))))
    with pytest.raises(errors.MalformedBlobError, match="wrapped key length"):
        read_header(io.BytesIO(patched(110, (49).to_bytes(2, "big"))))
    with pytest.raises(errors.UnsupportedSuiteError):
        read_header(io.BytesIO(patched(14, (3).to_bytes(2, "big"))))
