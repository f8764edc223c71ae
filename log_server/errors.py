"""The log server's one refusal type and how refusals are answered (spec/api.md, "Errors").

Every refused request, whether the Flask routes, the bare append handler, admission or the
sequencer refused it, is a `Refusal` (status, code, detail), raised before anything is stored,
and answered as ``{"error": code, "detail": detail}``. The type is shared with the witness
(`emshield.wsgi_body`), which reads request bodies the same way.
"""

from __future__ import annotations

import json
from typing import Any

from emshield.wsgi_body import Refusal

__all__ = ["INTERNAL_ERROR", "Refusal", "SequencerUnavailable", "error_json", "json_bytes"]

_JSON = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps with options builds one per call

# A failure inside the server: nothing was acknowledged (the sequencer answers only after COMMIT),
# so a retry is safe; the details go to the server log, not to the client.
INTERNAL_ERROR = (500, "internal_error", "the server could not complete the request; retrying is safe")


class SequencerUnavailable(Refusal):
    """The sequencer process cannot be reached or went away mid-request (nothing was acknowledged).

    Answered as 503; ``cause`` (for the server log) says what failed."""

    def __init__(self, cause: str) -> None:
        super().__init__(503, "sequencer_unavailable", "the log cannot sequence entries right now; retrying is safe")
        self.cause = cause


def json_bytes(obj: Any) -> bytes:
    """Compact JSON with a final newline, as Flask's jsonify writes it outside debug mode."""
    return _JSON.encode(obj).encode("utf-8") + b"\n"


def error_json(code: str, detail: str) -> bytes:
    return json_bytes({"error": code, "detail": detail})
