"""What a request must look like, for every route and the bare append handler alike (spec/api.md
§1): entries come as ``application/cbor``; unknown or repeated query parameters are refused,
integers are plain decimal without leading zeros and at most 2**63 - 1 (the store's integers are
signed 64-bit), byte strings lowercase hex."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from werkzeug.routing import BaseConverter

from .errors import Refusal

CBOR = "application/cbor"
MAX_INT = (1 << 63) - 1
_INT = re.compile(r"0|[1-9][0-9]{0,18}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")


def only_params(pairs: Iterable[tuple[str, str]], *allowed: str) -> dict[str, str]:
    """The query as a dict, refused if it names a parameter outside ``allowed`` or one twice."""
    seen: dict[str, str] = {}
    repeated: list[str] = []
    for name, value in pairs:
        if name in seen:
            repeated.append(name)
        seen[name] = value
    extra = set(seen) - set(allowed)
    if extra:
        raise Refusal(400, "unknown_parameter", f"unknown query parameter(s): {', '.join(sorted(extra))}")
    if repeated:
        raise Refusal(400, "bad_parameter", f"query parameter {repeated[0]!r} given more than once")
    return seen


def int_param(params: Mapping[str, str], name: str) -> int:
    raw = params.get(name)
    if raw is None:
        raise Refusal(400, "missing_parameter", f"query parameter {name!r} is required")
    if not _INT.fullmatch(raw):
        raise Refusal(400, "bad_parameter", f"{name} must be a non-negative decimal integer, got {raw[:40]!r}")
    value = int(raw)
    if value > MAX_INT:
        raise Refusal(400, "out_of_range", f"{name} must be at most {MAX_INT}, got {raw}")
    return value


class IndexConverter(BaseConverter):
    """``<index:name>`` in a route: a leaf index written as `int_param` wants it (decimal, no
    leading zeros, at most 19 digits); anything else matches no route (404 ``not_found``). A route
    compares the index with the tree size before the store sees it, since 19 digits may still be
    more than the store's integers hold."""

    regex = r"0|[1-9][0-9]{0,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


def hex_param(raw: str, name: str, size: int | None = None) -> bytes:
    if not _HEX.fullmatch(raw or ""):
        raise Refusal(400, "bad_parameter", f"{name} must be lowercase hex, got {raw[:80]!r}")
    value = bytes.fromhex(raw)
    if size is not None and len(value) != size:
        raise Refusal(400, "bad_parameter", f"{name} must be {size} bytes ({2 * size} hex digits), got {len(value)}")
    return value
