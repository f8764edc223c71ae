"""The fast issuance recognizer in decode_entry returns exactly what the strict path returns or
declines: on every vector, on thousands of generated entries of every policy (single- and
batch-signed), and under deterministic mutation fuzzing; and it is actually taken for valid ones."""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from emshield.tlog import entry as entry_mod
from emshield.tlog.entry import (
    MAX_ENTRY_SIZE,
    MAX_TIME,
    POLICIES,
    EntryError,
    Issuance,
    IssuerRegistration,
    SignedEntry,
    decode_entry,
    issuer_key_id,
    sign_batch,
    sign_entry,
)

match_issuance = entry_mod._match_issuance  # the fast path: a SignedEntry or None (declined)
decode_strict = entry_mod._decode_strict  # the generic path: decode, re-encode, compare, check

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "spec" / "vectors" / "tlog" / "entries.json").read_text())
KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["issuer_seed_hex"]))
KEY_ID = issuer_key_id(KEY.public_key().public_bytes_raw())
TIMES = [0, 1, 23, 24, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 1_800_000_000, MAX_TIME]


def _check(data: bytes) -> bool:
    """Assert the invariant on one input; return whether the fast path accepted it.

    Fast accepts => the strict path accepts with an equal entry (same field values and types, same
    cached signed part). decode_entry's outcome (entry or error message) is the strict path's.
    And the fast path is complete for issuances: whatever issuance the strict path accepts, it
    accepts too (so valid entries never pay for the generic path)."""
    if not 0 < len(data) <= MAX_ENTRY_SIZE:  # refused before either path runs
        with pytest.raises(EntryError, match="entry is empty|over the 65535-byte limit"):
            decode_entry(data)
        return False
    fast = match_issuance(data)
    try:
        strict: SignedEntry | EntryError = decode_strict(data)
    except EntryError as exc:
        strict = exc
    if fast is not None:
        assert isinstance(strict, SignedEntry), f"fast path accepted what the strict path rejects: {strict}"
        assert fast == strict and repr(fast) == repr(strict)
        assert [type(v) for v in vars(fast.entry).values()] == [type(v) for v in vars(strict.entry).values()]
        assert fast.__dict__["_signed_part"] == strict.__dict__["_signed_part"] is not None
    elif isinstance(strict, SignedEntry):
        assert type(strict.entry) is not Issuance, "the fast path declined a valid issuance"
    try:
        got = decode_entry(data)
    except EntryError as exc:
        assert isinstance(strict, EntryError) and str(exc) == str(strict)
    else:
        assert isinstance(strict, SignedEntry) and got == strict
        assert got.__dict__["_signed_part"] == strict.__dict__["_signed_part"]
    return fast is not None


def _issuances(n: int, rnd: random.Random) -> list[Issuance]:
    out = []
    for i in range(n):
        policy = POLICIES[i % 3]
        out.append(Issuance(uuid.UUID(int=rnd.getrandbits(128)).bytes, rnd.randbytes(32),
                            rnd.randbytes(32) if policy != "fingerprint" else None,
                            rnd.randbytes(32) if policy != "watermark" else None,
                            policy, TIMES[i % len(TIMES)] if i % 2 else rnd.randrange(MAX_TIME + 1), KEY_ID))
    return out


def _valid_entries() -> list[bytes]:
    """Single-signed issuances of every policy and batches of 1, 2, 3, 7 and 2000 (every leaf)."""
    rnd = random.Random(3)
    out = [sign_entry(e, KEY).encode() for e in _issuances(300, rnd)]
    for size in (1, 2, 3, 7, 2000):
        out += [s.encode() for s in sign_batch(_issuances(size, rnd), KEY)]
    return out


VALID = _valid_entries()


def test_vectors() -> None:
    """Every vector: valid issuances are taken by the fast path, everything else declined or equal."""
    taken = [_check(bytes.fromhex(v["cbor_hex"])) for v in VECTORS["valid"]]
    assert taken == [v["type"] == "issuance" for v in VECTORS["valid"]]
    for v in VECTORS["malformed"]:
        assert not _check(bytes.fromhex(v["cbor_hex"])), v["desc"]
    for v in VECTORS["bad_signatures"]:  # well-formed: decoding accepts them, the signature check does not
        _check(bytes.fromhex(v["cbor_hex"]))
    for vec in VECTORS["batch"]:
        assert all(_check(bytes.fromhex(e["cbor_hex"])) for e in vec["entries"])


def test_generated_entries_take_the_fast_path() -> None:
    assert len(VALID) == 300 + 1 + 2 + 3 + 7 + 2000
    assert all(_check(data) for data in VALID)
    assert {decode_entry(d).entry.policy for d in VALID} == set(POLICIES)


def test_registration_declines_to_the_strict_path() -> None:
    reg = IssuerRegistration(KEY.public_key().public_bytes_raw(), "issuer", cbor2.dumps({"v": 1}), 5)
    data = sign_entry(reg, KEY).encode()
    assert match_issuance(data) is None and not _check(data)
    assert decode_entry(data).entry == reg


def test_uint_heads_only_shortest() -> None:
    """The integer regex takes each value's shortest head (cbor2's encoding) and no longer one."""
    uint = re.compile(entry_mod._UINT, re.DOTALL)
    for value in [0, 1, 23, 24, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1]:
        shortest = cbor2.dumps(value)
        assert uint.fullmatch(shortest)
        assert entry_mod._uint(shortest) == value
        for extra, head in ((1, 0x18), (2, 0x19), (4, 0x1A), (8, 0x1B)):
            longer = bytes([head]) + value.to_bytes(extra, "big") if value < 1 << 8 * extra else None
            if longer is not None and longer != shortest:
                assert not uint.fullmatch(longer), longer.hex()


# --- mutation fuzz --------------------------------------------------------------------------------


def _content_spans(data: bytes) -> list[tuple[int, int]]:
    """Where the matched byte-string contents lie (hashes, signature, ids): the rest is structure."""
    m = entry_mod._ISSUANCE_RE.fullmatch(data)
    assert m is not None
    return [m.span(g) for g in ("sig", "backbone_id", "device_uuid", "issuer_key_id", "fingerprint_hash",
                                "watermark_commitment") if m.start(g) >= 0]


def _longer_uint(item: bytes, extra: int) -> bytes:
    value = item[0] if len(item) == 1 else int.from_bytes(item[1:], "big")
    return bytes([{1: 0x18, 2: 0x19, 4: 0x1A, 8: 0x1B}[extra]]) + value.to_bytes(extra, "big")


def _structured(data: bytes) -> Iterator[bytes]:
    """Non-canonical and wrong-schema variants of one valid entry."""
    m = entry_mod._ISSUANCE_RE.fullmatch(data)
    assert m is not None
    for group in ("issued_at", "index", "size"):
        if m.start(group) < 0:
            continue
        a, b = m.span(group)
        for extra in (1, 2, 4, 8):
            if b - a <= extra:  # a longer head than the one there (never canonical)
                yield data[:a] + _longer_uint(data[a:b], extra) + data[b:]
    yield b"\xbf" + data[1:] + b"\xff"  # indefinite-length map
    a, b = m.span("sig")
    yield data[:a - 2] + b"\x5f\x58\x20" + data[a:a + 32] + b"\x58\x20" + data[a + 32:b] + b"\xff" + data[b:]
    yield data[:a - 2] + b"\x59\x00\x40" + data[a:]  # 2-byte length head for the signature
    if m.start("proof") >= 0:
        a, b = m.span("proof")
        yield data[:a] + b"\x9f" + data[a + 1:b] + b"\xff" + data[b:]  # indefinite proof array
        if b - a > 1:
            yield data[:a] + bytes([data[a] + 1]) + data[a + 1:b] + data[b - 34:b] + data[b:]  # a hash twice
            yield data[:a] + bytes([data[a] - 1]) + data[a + 1:b - 34] + data[b:]  # one hash dropped
            yield data[:a] + bytes([data[a] - 1]) + data[a + 1:b - 34] + data[b:] + data[b - 34:b]
    a, b = m.span("policy")
    for other in POLICIES:  # a policy that disagrees with the fields present
        yield data[:a] + cbor2.dumps(other) + data[b:]
    obj = cbor2.loads(data)
    items = list(obj.items())
    for i in range(len(items) - 1):  # two neighbouring keys swapped
        swapped = items[:i] + [items[i + 1], items[i]] + items[i + 2:]
        yield cbor2.dumps(dict(swapped))
    yield cbor2.dumps(dict(reversed(items)))
    for key in obj:  # one field left out, or null, or a text string instead
        yield cbor2.dumps({k: v for k, v in obj.items() if k != key})
        yield cbor2.dumps({k: (None if k == key else v) for k, v in obj.items()})
        yield cbor2.dumps({k: (str(v) if k == key else v) for k, v in obj.items()})
    yield cbor2.dumps({**obj, "extra": 1})
    yield cbor2.dumps({**obj, "issued_at": MAX_TIME + 1})
    yield cbor2.dumps({**obj, "issued_at": 2**64 - 1})
    yield bytes([data[0] + 1]) + data[1:]
    yield bytes([data[0] - 1]) + data[1:]


def _random(data: bytes, rnd: random.Random, n: int) -> Iterator[bytes]:
    """Byte flips, bit flips, insertions, deletions, truncations, appended bytes, head arithmetic
    and duplicated slices, mostly on the structure bytes (heads, keys, integers, policy)."""
    content = {i for a, b in _content_spans(data) for i in range(a, b)}
    structure = [i for i in range(len(data)) if i not in content]
    for _ in range(n):
        pos = rnd.choice(structure) if rnd.random() < 0.8 else rnd.randrange(len(data))
        kind = rnd.randrange(8)
        if kind == 0:
            yield data[:pos] + bytes([rnd.randrange(256)]) + data[pos + 1:]
        elif kind == 1:
            yield data[:pos] + bytes([data[pos] ^ 1 << rnd.randrange(8)]) + data[pos + 1:]
        elif kind == 2:
            yield data[:pos] + rnd.randbytes(rnd.choice([1, 1, 2, 34])) + data[pos:]
        elif kind == 3:
            yield data[:pos] + data[pos + rnd.choice([1, 2, 3, 34]):]
        elif kind == 4:
            yield data[:pos]
        elif kind == 5:
            yield data + rnd.choice([b"\x00", b"\xff", b"\x60", rnd.randbytes(3), data[:1]])
        elif kind == 6:
            yield data[:pos] + bytes([(data[pos] + rnd.choice([-1, 1])) % 256]) + data[pos + 1:]
        else:
            k = rnd.choice([1, 2, 34])
            yield data[:pos] + data[pos:pos + k] + data[pos:]


@pytest.mark.parametrize("seed", range(4))
def test_mutation_fuzz(seed: int) -> None:
    """The fast path never accepts more than the strict path, and never differs from it."""
    rnd = random.Random(seed)
    bases = rnd.sample(VALID[:300], 12) + rnd.sample(VALID[300:313], 6) + rnd.sample(VALID[313:], 6)
    accepted = declined = 0
    for data in bases:
        for mutated in [*_structured(data), *_random(data, rnd, 250)]:
            if mutated != data:
                if _check(mutated):
                    accepted += 1
                else:
                    declined += 1
    # Both outcomes occur (content-byte flips leave a valid entry), so the checks above ran both ways.
    assert accepted > 50 and declined > 3000, (accepted, declined)


def test_byte_strings_of_wrong_size() -> None:
    """Byte strings one byte short or long inside an otherwise canonical map are declined."""
    obj = cbor2.loads(VALID[0])
    for key in ("sig", "device_uuid", "backbone_id", "issuer_key_id"):
        for delta in (-1, 1):
            value = obj[key][:-1] if delta < 0 else obj[key] + b"\x00"
            assert not _check(cbor2.dumps({**obj, key: value}))
    assert _check(VALID[0])
