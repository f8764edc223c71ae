"""Payload error correction, public marking parameters, payload derivation and commitment."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import numpy as np
import pytest

from emshield.marking import ecc
from emshield.marking.params import (
    MarkingParams,
    ParamsError,
    payload_for_device,
    watermark_commitment,
)

VECTORS = json.loads((Path(__file__).parents[2] / "spec/vectors/marking/watermark.json").read_text())


@pytest.mark.parametrize("nsym", [4, 6, 10])
def test_corrects_up_to_capacity_and_reports_counts(nsym: int) -> None:
    rng = np.random.default_rng(nsym)
    for _ in range(200):
        payload = int(rng.integers(0, 2**48))
        bits = ecc.encode(payload, nsym)
        n_bytes = int(rng.integers(0, nsym // 2 + 1))
        corrupted = bits.copy()
        flipped = 0
        for pos in rng.choice(len(bits) // 8, n_bytes, replace=False):
            mask = rng.integers(1, 256)
            corrupted[8 * pos : 8 * pos + 8] ^= np.unpackbits(np.array([mask], dtype=np.uint8))
            flipped += int(mask).bit_count()
        dec = ecc.decode(corrupted, nsym)
        assert (dec.payload, dec.corrected_bytes, dec.corrected_bits) == (payload, n_bytes, flipped)


def test_beyond_capacity_is_refused_not_guessed() -> None:
    """Past nsym/2 byte errors the decoder must refuse; a miscorrection can only land on a codeword
    at distance <= nsym/2, which bounded-distance decoding cannot tell apart: count how rare."""
    nsym, rng = 10, np.random.default_rng(7)
    refused = wrong = 0
    for _ in range(1000):
        bits = ecc.encode(int(rng.integers(0, 2**48)), nsym)
        for pos in rng.choice(16, nsym // 2 + 1 + int(rng.integers(0, 4)), replace=False):
            bits[8 * pos : 8 * pos + 8] ^= np.unpackbits(np.array([rng.integers(1, 256)], dtype=np.uint8))
        try:
            ecc.decode(bits, nsym)
            wrong += 1
        except ecc.DecodeRefused:
            refused += 1
    assert refused >= 990 and wrong <= 10, (refused, wrong)


def test_random_words_are_refused() -> None:
    rng = np.random.default_rng(3)
    for _ in range(2000):
        with pytest.raises(ecc.DecodeRefused, match=r"^more byte errors than the code corrects \(5\)$"):
            ecc.decode(rng.integers(0, 2, 128).astype(np.uint8), 10)  # reedsolo's own text never reaches users


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        ecc.encode(2**48, 10)
    with pytest.raises(ValueError):
        ecc.decode(np.zeros(127, dtype=np.uint8), 10)


def test_params_vector_roundtrip_and_derivations() -> None:
    blob = bytes.fromhex(VECTORS["params_cbor"])
    params = MarkingParams.from_cbor(blob)
    assert params.to_cbor() == blob
    assert params.digest().hex() == VECTORS["params_digest"]
    secret = bytes.fromhex(VECTORS["issuer_secret"])
    assert payload_for_device(secret, bytes.fromhex(VECTORS["device_uuid"])) == VECTORS["payload_for_device"]
    assert watermark_commitment(VECTORS["payload"], params).hex() == VECTORS["commitment"]
    code = ecc.encode(VECTORS["payload"], params.rs_nsym)
    assert "".join(map(str, code)) == VECTORS["code_bits"]


def _mutate(obj: dict, **kw: object) -> bytes:
    return cbor2.dumps({**obj, **kw}, canonical=True)


def test_params_reject_hostile_blobs() -> None:
    blob = bytes.fromhex(VECTORS["params_cbor"])
    obj = cbor2.loads(blob)
    bad = [
        b"",
        blob[:-1],
        blob + b"\x00",
        cbor2.dumps(dict(reversed(list(obj.items())))),  # keys not in canonical order
        _mutate(obj, v=2),
        _mutate(obj, wm="other"),
        _mutate(obj, vk=b"\x00" * 31),
        _mutate(obj, rs_nsym=7),
        _mutate(obj, layers=[]),
        _mutate(obj, layers=[["a", 1, 1], ["a", 1, 1]]),
        _mutate(obj, layers=[["a", 1]]),
        _mutate(obj, tau_milli=1.5),
        _mutate(obj, extra=1),
        cbor2.dumps({k: v for k, v in obj.items() if k != "fp_k"}, canonical=True),
        b"\xa1" + b"\x00" * (2 << 20),
    ]
    assert cbor2.dumps(dict(reversed(list(obj.items())))) != blob
    for item in bad:
        with pytest.raises(ParamsError):
            MarkingParams.from_cbor(item)


def test_payload_derivation_rejects_bad_inputs_and_separates_devices() -> None:
    secret = bytes(range(32))
    with pytest.raises(ValueError):
        payload_for_device(secret[:16], bytes(16))
    with pytest.raises(ValueError):
        payload_for_device(secret, bytes(15))
    payloads = {payload_for_device(secret, i.to_bytes(16, "big")) for i in range(1000)}
    assert len(payloads) == 1000 and all(0 <= p < 2**48 for p in payloads)
