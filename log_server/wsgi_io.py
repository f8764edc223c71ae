"""Request-body reading and JSON errors at the WSGI level, shared by the Flask routes and the bare
append handler (`fast_append.py`), so both refuse bad input with the same status, code and words.
"""

from __future__ import annotations

import json
from typing import Any

CBOR = "application/cbor"
_READ_CHUNK = 64 * 1024
_DRAIN_LIMIT = 1 << 20


class ApiError(Exception):
    """A refused request: answered as {"error": code, "detail": msg} with ``status``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


_JSON = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps with options builds one per call


def json_bytes(obj: Any) -> bytes:
    """Compact JSON with a final newline, as Flask's jsonify writes it outside debug mode."""
    return _JSON.encode(obj).encode("utf-8") + b"\n"


# A failure inside the server: nothing was acknowledged (the sequencer answers only after COMMIT),
# so a retry is safe; the details go to the server log, not to the client.
INTERNAL_ERROR = (500, "internal_error", "the server could not complete the request; retrying is safe")


def error_json(code: str, detail: str) -> bytes:
    return json_bytes({"error": code, "detail": detail})


def mimetype(environ: dict[str, Any]) -> str:
    """The media type of the body without parameters, lower case ('' if none)."""
    return environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()


def read_body(environ: dict[str, Any], content_type: str, limit: int) -> bytes:
    """The whole request body, refused unless it has ``content_type`` and 1..``limit`` bytes.

    A body without a declared length (chunked) is read up to one byte past the limit, which shows
    it is too long. An over-limit body is drained when it is at most 1 MiB past the limit (see
    `_drain`) and otherwise refused without being read."""
    if mimetype(environ) != content_type:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type must be {content_type}, got {mimetype(environ) or 'none'}")
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH", "")
    if declared:
        if not declared.isdigit() or len(declared) > 19:
            raise ApiError(400, "bad_request", f"Content-Length must be a decimal integer, got {declared[:40]!r}")
        size = int(declared)
        if size > limit:
            if size <= limit + _DRAIN_LIMIT:  # else refused unread: the server then drops the connection
                _drain(stream, size)
            raise ApiError(413, "body_too_large", f"the body is over the {limit}-byte limit")
        data = stream.read(size) if size else b""
        if len(data) != size:
            raise ApiError(400, "bad_request", f"the body ended after {len(data)} of {size} declared bytes")
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
            _drain(stream, _DRAIN_LIMIT)
            raise ApiError(413, "body_too_large", f"the body is over the {limit}-byte limit")
    else:
        data = b""
    if not data:
        raise ApiError(400, "empty_body", "the request body is empty")
    return data


def _drain(stream, most: int) -> None:
    """Read (and drop) up to ``most`` bytes of a refused body, so that the connection stays usable:
    a body left unread makes the WSGI server close the keep-alive connection (or the client's TCP
    stack reset it), and a client that sends its next request on it loses that request, or the
    413 itself. Bodies more than 1 MiB over the limit are not read at all."""
    while most > 0 and (part := stream.read(min(_READ_CHUNK, most))):
        most -= len(part)
