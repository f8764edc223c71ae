"""The cheap deterministic-CBOR check (plain re-encode when keys are already in order) accepts exactly
what the canonical re-encode accepts; the hex UUID text equals uuid.UUID's."""

from __future__ import annotations

import random
import uuid

import cbor2
import pytest

from emshield import cbor as strict_cbor
from emshield.cbor import canonical, strict_loads
from emshield.tlog.entry import EntryError, Issuance
from emshield.tlog.merkle import inclusion_proof


def _reference_accepts(data: bytes, max_depth: int) -> bool:
    """The rule strict_loads implements, the slow way: decode, re-encode canonically, compare."""
    try:
        obj = cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=False, max_depth=max_depth)
    except Exception:
        return False
    stack = [obj]
    while stack:  # only untagged plain data
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif not (item is None or type(item) in (int, bool, float, bytes, str)):
            return False
    return canonical(obj) == data


def _accepts(data: bytes, max_depth: int = 8) -> bool:
    try:
        strict_loads(data, "x", max_depth, EntryError)
    except EntryError:
        return False
    return True


KEY_POOL = ["a", "b", "z", "aa", "ab", "é", "ée", "漢", "v", "sig", "type", "x" * 23, "y" * 24, "k" * 30,
            "\U0001f600", "", "A", "Z_"]


def _random_value(rnd: random.Random, depth: int) -> object:
    kind = rnd.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return rnd.choice([0, 1, 23, 24, 255, 256, 65_535, 65_536, 2 ** 32, 2 ** 64 - 1, 2 ** 64, -1, -25, -(2 ** 64),
                           -(2 ** 64) - 1, 2 ** 70])
    if kind == 1:
        return rnd.randbytes(rnd.choice([0, 1, 23, 24, 300]))
    if kind == 2:
        return rnd.choice(KEY_POOL)
    if kind == 3:
        return rnd.choice([True, False, None])
    if kind == 4:
        return rnd.choice([1.5, 0.0, -0.0, 1e300, 65504.0, 1.1, float("inf")])
    if kind in (5, 6, 7):
        return rnd.randrange(1000)
    if kind in (8, 9):
        return [_random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    keys: list[object] = rnd.sample(KEY_POOL, rnd.randrange(6))
    if rnd.random() < 0.2:
        keys.append(rnd.choice([1, -1, b"k", 300]))
    return {k: _random_value(rnd, depth + 1) for k in keys}


def test_fast_check_accepts_exactly_what_the_canonical_re_encode_accepts() -> None:
    rnd = random.Random(11)
    accepted = rejected = 0
    for _ in range(4000):
        value = _random_value(rnd, 0)
        encodings = [cbor2.dumps(value, canonical=True), cbor2.dumps(value)]  # plain: keys in insertion order
        if isinstance(value, dict) and len(value) > 1:
            items = list(value.items())
            rnd.shuffle(items)
            encodings.append(cbor2.dumps(dict(items)))
        for data in encodings:
            want = _reference_accepts(data, 8)
            assert _accepts(data) == want, (value, data.hex())
            accepted += want
            rejected += not want
    assert accepted > 1000 and rejected > 1000  # both branches are exercised


@pytest.mark.parametrize("data, ok", [
    (cbor2.dumps({"a": 1, "b": 2}), True),
    (cbor2.dumps({"b": 1, "a": 2}), False),                  # same length, bytewise out of order
    (cbor2.dumps({"aa": 1, "b": 2}), False),                 # longer key first
    (cbor2.dumps({"z": 1, "é": 2}), True),                   # "é" is 2 UTF-8 bytes: after every 1-byte key
    (cbor2.dumps({"é": 1, "z": 2}), False),
    (cbor2.dumps({"ab": 1, "é": 2}), True),                  # 2 bytes each: 0x61.. before 0xc3..
    (cbor2.dumps({"x" * 23: 1, "y" * 24: 2, "k" * 30: 3}), True),  # long keys: still length first
    (cbor2.dumps({"k" * 30: 1, "y" * 24: 2}), False),
    (cbor2.dumps({1: 1, "a": 2}), True),                     # integer keys: canonical path decides
    (cbor2.dumps({"a": 2, 1: 1}), False),
    (cbor2.dumps({"a": 1.5}, canonical=True), True),         # float in shortest form
    (cbor2.dumps({"a": 1.5}), False),                        # float as 8 bytes
    (cbor2.dumps([2 ** 64]), True),                          # bignum: canonical path, same bytes
    (cbor2.dumps({}), True),
])
def test_key_order_floats_and_bignums(data: bytes, ok: bool) -> None:
    assert _accepts(data) == ok == _reference_accepts(data, 8)
    if not ok:
        with pytest.raises(EntryError, match="deterministic"):
            strict_loads(data, "x", 8, EntryError)


def test_floats_in_marking_params() -> None:
    from emshield.tlog.entry import IssuerRegistration

    good = cbor2.dumps({"v": 1, "scale": 0.25, "layers": [1.5, -2.0]}, canonical=True)
    IssuerRegistration(bytes(32), "n", good, 0)
    for bad in [cbor2.dumps({"v": 1, "scale": 0.25, "layers": [1.5, -2.0]}),  # 8-byte floats
                cbor2.dumps({"scale": 0.25, "v": 1}, canonical=False)]:       # keys out of order
        with pytest.raises(EntryError, match="deterministic"):
            IssuerRegistration(bytes(32), "n", bad, 0)


def test_tags_are_refused_wherever_they_are() -> None:
    for value in [cbor2.CBORTag(99, 1), {"a": [1, cbor2.CBORTag(1, 0)]}, {"a": {"b": cbor2.CBORTag(2, b"\x01")}},
                  [{"k": cbor2.CBORTag(258, [1])}]]:
        data = cbor2.dumps(value, canonical=True)
        assert not _reference_accepts(data, 8)
        with pytest.raises(EntryError):
            strict_loads(data, "x", 8, EntryError)


def test_key_order_memo_is_bounded_and_never_wrong() -> None:
    for i in range(3000):
        keys = [f"k{i}", f"k{i + 1}x"]
        assert _accepts(cbor2.dumps(dict.fromkeys(keys, 0)))
        assert not _accepts(cbor2.dumps(dict.fromkeys(reversed(keys), 0)))
        assert len(strict_cbor._KEY_ORDER_CACHE) <= strict_cbor._KEY_ORDER_CACHE_SIZE
    # a layout with long keys is not memoised (bounded memory), but still checked
    long_keys = {"q" * 40: 0, "r" * 41: 1}
    assert _accepts(cbor2.dumps(long_keys))
    assert tuple(long_keys) not in strict_cbor._KEY_ORDER_CACHE


def test_trailing_bytes_are_still_named() -> None:
    data = cbor2.dumps({"a": 1})
    with pytest.raises(EntryError, match="1 trailing bytes"):
        strict_loads(data + b"\x00", "x", 4, EntryError)


def test_device_uuid_text_equals_uuid_module() -> None:
    rnd = random.Random(5)
    for raw in [bytes(16), b"\xff" * 16] + [rnd.randbytes(16) for _ in range(500)]:
        e = Issuance(raw, bytes(32), b"w" * 32, None, "watermark", 0, bytes(32))
        assert e.device_uuid_text == str(uuid.UUID(bytes=raw))


# --- the key-layout fast path of decode_entry -------------------------------------------------------


def _issuance_map() -> dict:
    from emshield.tlog.entry import SignedEntry

    e = Issuance(bytes(16), bytes(32), b"w" * 32, b"f" * 32, "both", 1, bytes(32))
    return cbor2.loads(SignedEntry(e, bytes(64)).encode())


@pytest.mark.parametrize("change, error", [
    ({"type": "issuer-registration"}, "unknown field(s) in issuer-registration entry"),  # layout of the other type
    ({"type": b"issuance"}, "unknown entry type"),
    ({"v": True}, "unsupported entry version"),
    ({"v": 1.0}, "unsupported entry version"),
    ({"v": 2}, "unsupported entry version"),
    ({"fingerprint_hash": None}, "null"),
    ({"policy": None}, "null"),
])
def test_known_layout_with_wrong_values_takes_the_naming_checks(change: dict, error: str) -> None:
    from emshield.tlog.entry import decode_entry

    data = cbor2.dumps({**_issuance_map(), **change}, canonical=True)
    with pytest.raises(EntryError) as err:
        decode_entry(data)
    assert error in str(err.value)


def test_every_valid_layout_decodes() -> None:
    """Each valid issuance layout (three policies, with and without "batch") takes the fast path and decodes."""
    from emshield.tlog.entry import BatchProof, SignedEntry, decode_entry

    seen = set()
    for policy in ("watermark", "fingerprint", "both"):
        for batch in (None, BatchProof(0, 1, ())):
            e = Issuance(bytes(16), bytes(32), b"w" * 32 if policy != "fingerprint" else None,
                         b"f" * 32 if policy != "watermark" else None, policy, 1, bytes(32))
            data = SignedEntry(e, bytes(64), batch).encode()
            assert decode_entry(data) == SignedEntry(e, bytes(64), batch)
            seen.add(tuple(cbor2.loads(data)))
    assert len(seen) == 6  # "watermark + fingerprint absent" and vice versa, "both", each with/without batch


def test_entry_encoder_writes_the_canonical_bytes() -> None:
    """Entries are encoded with cbor2's plain encoder over a map built in deterministic key order;
    the bytes must be what the canonical encoder gives, for every type, policy and batch width."""
    from emshield.tlog.entry import (
        SIGNATURE_LABEL,
        BatchProof,
        IssuerRegistration,
        SignedEntry,
        encode_entry,
        signing_bytes,
    )

    rnd = random.Random(9)
    for i in range(300):
        if i % 3 == 0:
            name = "".join(rnd.choice("aZé漢 -_") for _ in range(rnd.randint(1, 30))).strip() or "n"
            params = cbor2.dumps({"v": 1, "x": [rnd.random() for _ in range(3)]}, canonical=True)
            entry: object = IssuerRegistration(rnd.randbytes(32), name, params, rnd.randrange(2 ** 63))
            batch = None
        else:
            policy = rnd.choice(["watermark", "fingerprint", "both"])
            entry = Issuance(rnd.randbytes(16), rnd.randbytes(32), rnd.randbytes(32) if policy != "fingerprint" else None,
                             rnd.randbytes(32) if policy != "watermark" else None, policy, rnd.randrange(2 ** 63),
                             rnd.randbytes(32))
            size = rnd.choice([1, 5, 24, 300, 65_536])
            index = rnd.randrange(size)
            proof = inclusion_proof(index, size, lambda ids: {n: rnd.randbytes(32) for n in ids})  # RFC 9162 length
            batch = BatchProof(index, size, tuple(proof)) if i % 2 else None
        signed = SignedEntry(entry, rnd.randbytes(64), batch)  # type: ignore[arg-type]
        data = encode_entry(signed)
        m = cbor2.loads(data)
        assert data == cbor2.dumps(m, canonical=True)
        m.pop("sig"), m.pop("batch", None)
        assert signing_bytes(signed.entry) == SIGNATURE_LABEL + cbor2.dumps(m, canonical=True)
