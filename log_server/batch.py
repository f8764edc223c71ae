"""The batch-append body: one CBOR array of entry byte strings, decoded strictly.

Wire format (spec/api.md, "Batch append"): a definite-length CBOR array (major type 4) whose
items are definite-length byte strings (major type 2), every head in its shortest form
(RFC 8949 §4.2.1), nothing after the array. Each byte string is one encoded entry, decoded
separately by `emshield.tlog.entry.decode_entry`. A tiny dedicated parser instead of a general
CBOR decoder: no tags, maps or nested items can reach the server through this path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence


class BatchFormatError(ValueError):
    """The batch body is not a canonical CBOR array of byte strings within the limits."""


_MIN_FOR_AI = {24: 24, 25: 1 << 8, 26: 1 << 16, 27: 1 << 32}
_WIDTH = {24: 1, 25: 2, 26: 4, 27: 8}


def _head(buf: bytes, pos: int, major: int, what: str) -> tuple[int, int]:
    """Decode one item head of the given major type at ``pos``; return (argument, next position)."""
    if pos >= len(buf):
        raise BatchFormatError(f"{what}: truncated (no item head at byte {pos})")
    ib = buf[pos]
    if ib >> 5 != major:
        raise BatchFormatError(f"{what}: expected CBOR major type {major} at byte {pos}, got {ib >> 5}")
    ai = ib & 0x1F
    if ai < 24:
        return ai, pos + 1
    if ai not in _WIDTH:
        raise BatchFormatError(f"{what}: indefinite or reserved length (additional info {ai}) at byte {pos}")
    width = _WIDTH[ai]
    end = pos + 1 + width
    if end > len(buf):
        raise BatchFormatError(f"{what}: truncated length at byte {pos}")
    value = int.from_bytes(buf[pos + 1:end], "big")
    if value < _MIN_FOR_AI[ai]:
        raise BatchFormatError(f"{what}: length {value} not in shortest form at byte {pos}")
    return value, end


class BatchItems(Sequence[bytes]):
    """The entries of a checked batch body, each copied out of the body only when asked for: a
    batch refused at its first entry (admission checks them in order) costs no copy of the rest."""

    def __init__(self, body: bytes, spans: list[tuple[int, int]]) -> None:
        self._body, self._spans = body, spans

    def __len__(self) -> int:
        return len(self._spans)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._body[a:b] for a, b in self._spans[i]]
        a, b = self._spans[i]
        return self._body[a:b]

    def __iter__(self) -> Iterator[bytes]:
        body = self._body
        return (body[a:b] for a, b in self._spans)


def decode_batch(body: bytes, max_items: int, max_item_size: int) -> BatchItems:
    """The entries of a batch body, in order; raises BatchFormatError on any deviation."""
    count, pos = _head(body, 0, 4, "batch")
    if count == 0:
        raise BatchFormatError("batch: the array is empty")
    if count > max_items:
        raise BatchFormatError(f"batch: {count} entries, at most {max_items} per request")
    spans: list[tuple[int, int]] = []
    for i in range(count):
        size, pos = _head(body, pos, 2, f"batch item {i}")
        if size > max_item_size:
            raise BatchFormatError(f"batch item {i}: {size} bytes, an entry has at most {max_item_size}")
        end = pos + size
        if end > len(body):
            raise BatchFormatError(f"batch item {i}: truncated")
        spans.append((pos, end))
        pos = end
    if pos != len(body):
        raise BatchFormatError(f"batch: {len(body) - pos} trailing bytes after the array")
    return BatchItems(body, spans)
