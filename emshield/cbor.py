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
    trailing bytes are an error. Every failure raises ``error`` naming ``what``."""
    try:
        obj = cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=False, max_depth=max_depth)
    except Exception as exc:  # cbor2 raises several exception types on malformed input
        raise error(f"{what} is not well-formed CBOR: {exc}") from exc
    _check_plain(obj, what, error)
    encoded = canonical(obj)
    if encoded != data:
        if data.startswith(encoded):
            raise error(f"{what} has {len(data) - len(encoded)} trailing bytes after the CBOR item")
        raise error(f"{what} is not in deterministic CBOR encoding (RFC 8949 §4.2.1)")
    return obj


def _check_plain(obj: Any, what: str, error: type[ValueError]) -> None:
    """Only untagged CBOR data: tags decode to other Python types (datetime, CBORTag, ...)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, what, error)
            _check_plain(v, what, error)
    elif isinstance(obj, list):
        for v in obj:
            _check_plain(v, what, error)
    elif not (obj is None or type(obj) in (int, bool, float, bytes, str)):
        raise error(f"{what} contains a CBOR tag or an unsupported item ({type(obj).__name__})")
