"""The body of a C2SP tlog-witness ``add-checkpoint`` request (spec/witness.md).

Both ends use it: the log's cosigning submitter encodes it, the witness parses it (and re-encodes
a refused request verbatim as fork evidence). Pure bytes in, bytes out.

``old <size>\\n``, then 0..63 lines of base64 consistency-proof hashes, an empty line, then the
checkpoint note. A witness answers a size mismatch with 409 and a ``text/x.tlog.size`` body.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .merkle import HASH_SIZE

MAX_REQUEST_BYTES = 64 * 1024  # 63 proof lines + a checkpoint with many signatures
MAX_PROOF_LINES = 63
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")


class AddCheckpointError(ValueError):
    """The request body is not a well-formed add-checkpoint request."""


@dataclass(frozen=True)
class AddCheckpoint:
    """A parsed add-checkpoint request body (not yet verified)."""

    old_size: int
    proof: tuple[bytes, ...]
    note: bytes

    def encode(self) -> bytes:
        return (f"old {self.old_size}\n".encode() + b"".join(base64.b64encode(h) + b"\n" for h in self.proof)
                + b"\n" + self.note)


def encode_add_checkpoint(old_size: int, proof: Sequence[bytes], note: bytes) -> bytes:
    return AddCheckpoint(old_size, tuple(proof), note).encode()


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """``old <size>\\n``, 0..63 base64 hash lines, an empty line, then the checkpoint note."""
    if len(body) > MAX_REQUEST_BYTES:
        raise AddCheckpointError(f"request body over {MAX_REQUEST_BYTES} bytes")
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise AddCheckpointError("no empty line between the proof and the checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError as exc:
        raise AddCheckpointError("the old size and proof lines must be ASCII") from exc
    first, proof_lines = lines[0], lines[1:]
    if not first.startswith("old ") or not _DECIMAL.fullmatch(first[4:]):
        raise AddCheckpointError("the first line must be 'old <decimal size>' without leading zeros")
    if len(proof_lines) > MAX_PROOF_LINES:
        raise AddCheckpointError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for i, line in enumerate(proof_lines):
        try:
            h = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AddCheckpointError(f"proof line {i + 1} is not base64") from exc
        if len(h) != HASH_SIZE or base64.b64encode(h).decode() != line:
            raise AddCheckpointError(f"proof line {i + 1} is not one canonical base64 SHA-256 hash")
        proof.append(h)
    return AddCheckpoint(int(first[4:]), tuple(proof), note)
