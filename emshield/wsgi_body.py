"""Reading a request body at the WSGI level, strictly and within a bound: shared by the log server
and the witness, so both refuse an oversized, truncated or mistyped body the same way.

A refused request raises `Refusal` (an HTTP status, a stable error code and a sentence for the
user); each server renders it in its own media type. Nothing here knows a route.
"""

from __future__ import annotations

from typing import Any

_READ_CHUNK = 64 * 1024
DRAIN_LIMIT = 1 << 20


class Refusal(Exception):
    """A refused request: answered with ``status``, the error ``code`` and ``detail``.

    ``position`` names the refused entry of a multi-entry request (0 otherwise)."""

    def __init__(self, status: int, code: str, detail: str, position: int = 0) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.position = status, code, detail, position


def mimetype(environ: dict[str, Any]) -> str:
    """The media type of the body without parameters, lower case ('' if none)."""
    return environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()


def read_body(environ: dict[str, Any], limit: int, content_type: str | None = None, *,
              require_length: bool = False) -> bytes:
    """The whole request body, refused unless it has ``content_type`` (if given) and 1..``limit`` bytes.

    A body without a declared length (chunked) is read up to one byte past the limit, which shows
    it is too long, unless ``require_length`` refuses it (411). An over-limit body is drained when
    it is at most 1 MiB past the limit (see `_drain`) and otherwise refused without being read."""
    if content_type is not None and mimetype(environ) != content_type:
        raise Refusal(415, "unsupported_media_type",
                      f"Content-Type must be {content_type}, got {mimetype(environ) or 'none'}")
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH", "")
    if declared:
        if not declared.isdigit() or len(declared) > 19:
            raise Refusal(400, "bad_request", f"Content-Length must be a decimal integer, got {declared[:40]!r}")
        size = int(declared)
        if size > limit:
            if size <= limit + DRAIN_LIMIT:  # else refused unread: the server then drops the connection
                _drain(stream, size)
            raise Refusal(413, "body_too_large", f"the body is over the {limit}-byte limit")
        data = stream.read(size) if size else b""
        if len(data) != size:
            raise Refusal(400, "bad_request", f"the body ended after {len(data)} of {size} declared bytes")
    elif require_length:
        raise Refusal(411, "length_required", "a Content-Length is required")
    elif environ.get("wsgi.input_terminated"):
        parts, got = [], 0
        while got <= limit:
            part = stream.read(min(_READ_CHUNK, limit + 1 - got))
            if not part:
                break
            parts.append(part)
            got += len(part)
        data = b"".join(parts)
        if len(data) > limit:
            _drain(stream, DRAIN_LIMIT)
            raise Refusal(413, "body_too_large", f"the body is over the {limit}-byte limit")
    else:
        data = b""
    if not data:
        raise Refusal(400, "empty_body", "the request body is empty")
    return data


def _drain(stream, most: int) -> None:
    """Read (and drop) up to ``most`` bytes of a refused body, so that the connection stays usable:
    a body left unread makes the WSGI server close the keep-alive connection (or the client's TCP
    stack reset it), and a client that sends its next request on it loses that request, or the
    413 itself. Bodies more than 1 MiB over the limit are not read at all."""
    while most > 0 and (part := stream.read(min(_READ_CHUNK, most))):
        most -= len(part)
