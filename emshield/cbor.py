"""Strict, bounded decoding of deterministic CBOR (RFC 8949 §4.2), shared by every CBOR format.

Log entries, marking parameters and fingerprints all accept exactly one encoding of a value, so
that a hash or signature over the bytes means one thing only.
"""

from __future__ import annotations

from typing import Any

import cbor2


def canonical(obj: Any) -> bytes:
    """Deterministic CBOR. Every map we encode has text keys shorter than 24 bytes, for which cbor2's
    canonical order (shorter first, then bytewise) is exactly RFC 8949 §4.2.1's bytewise order."""
    return cbor2.dumps(obj, canonical=True)


def strict_loads(data: bytes, what: str, max_depth: int, error: type[ValueError] = ValueError) -> Any:
    """One definite-length, untagged CBOR item without duplicate keys, in deterministic encoding;
    trailing bytes are an error. Every failure raises ``error`` naming ``what``.

    The check is "re-encode and compare". When the decoded value is plain data whose maps have
    text keys already in deterministic order and that holds no floats (every entry and almost every
    parameter map), cbor2's plain encoder writes exactly the deterministic bytes, and it is about
    three times cheaper than its canonical mode (which sorts every map); anything else takes the
    canonical encoder, so both ways accept the same inputs."""
    try:
        obj = cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=False, max_depth=max_depth)
    except Exception as exc:  # cbor2 raises several exception types on malformed input
        raise error(f"{what} is not well-formed CBOR: {exc}") from exc
    encoded = cbor2.dumps(obj) if _plain_in_order(obj, what, error) else canonical(obj)
    if encoded != data:
        if data.startswith(encoded):
            raise error(f"{what} has {len(data) - len(encoded)} trailing bytes after the CBOR item")
        raise error(f"{what} is not in deterministic CBOR encoding (RFC 8949 §4.2.1)")
    return obj


_MIN_INT, _MAX_INT = -(1 << 64), (1 << 64) - 1  # what CBOR major types 0 and 1 hold (no bignum tag)
_KEY_ORDER_CACHE: dict[tuple[Any, ...], bool] = {}  # key layouts known to be in order
_KEY_ORDER_CACHE_SIZE = 1024


def _plain_in_order(obj: Any, what: str, error: type[ValueError]) -> bool:
    """Raise ``error`` on tags and unsupported items (they decode to other Python types: datetime,
    CBORTag, undefined, ...). Return True when plain encoding gives the deterministic bytes: no floats
    (plain mode writes every float in 8 bytes), no bignums, and every map's keys text strings in
    deterministic order (``_text_keys_in_order``)."""
    t = type(obj)
    if t is dict:
        keys = tuple(obj)
        in_order = _KEY_ORDER_CACHE.get(keys)
        if in_order is None:
            in_order = _text_keys_in_order(keys)
            if in_order and len(keys) <= 32 and (not keys or len(keys[-1]) < 24):  # bounded memory
                if len(_KEY_ORDER_CACHE) >= _KEY_ORDER_CACHE_SIZE:
                    _KEY_ORDER_CACHE.clear()
                _KEY_ORDER_CACHE[keys] = True
        children: Any = obj.values() if in_order else (*keys, *obj.values())
    elif t is list:
        in_order, children = True, obj
    else:
        in_order, children = True, (obj,)
    for item in children:
        t = type(item)
        if t is bytes or t is str or t is bool or item is None:
            continue
        if t is int:
            if not _MIN_INT <= item <= _MAX_INT:
                in_order = False
        elif t is dict or t is list:
            in_order = _plain_in_order(item, what, error) and in_order
        elif t is float:
            in_order = False
        else:
            raise error(f"{what} contains a CBOR tag or an unsupported item ({t.__name__})")
    return in_order


def text_key_order(key: str) -> tuple[int, bytes]:
    """Where a text key sorts in deterministic CBOR: RFC 8949's bytewise order of the encoded keys,
    which for text strings is by UTF-8 length first (the head grows with the length), then by the
    UTF-8 bytes."""
    data = key.encode()
    return len(data), data


def _text_keys_in_order(keys: tuple[Any, ...]) -> bool:
    """True if every key is a text string and they are in deterministic order (``text_key_order``).
    Layouts found in order are memoised by the caller: every entry has one of a handful."""
    if any(type(key) is not str for key in keys):
        return False
    order = [text_key_order(key) for key in keys]
    return all(a < b for a, b in zip(order, order[1:]))
