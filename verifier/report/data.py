"""What a report is rendered from: the verdict (its JSON, spec/verify.md) and the evidence behind
it, as plain values. The verifier (verifier.verify.evidence) gathers these; this package only draws."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FileDigest:
    """SHA-256 of one suspect file; ``path`` is relative to the suspect (``.`` for a single file)."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class InclusionRecord:
    """One RFC 9162 inclusion proof, with every value needed to recompute the root by hand."""

    what: str  # e.g. "issuance of device … (leaf 3)"
    index: int
    tree_size: int
    leaf_hash: str  # hex, SHA-256(0x00 ‖ leaf)
    path: tuple[str, ...]  # hex audit path, leaf side first
    root: str  # hex, the checkpoint's root the path must lead to
    how: str  # how the verifier proved it


@dataclass(frozen=True)
class BitEvidence:
    """The per-bit watermark statistics under one issuer's parameters.

    ``z`` is the read-out per code bit (≈ N(0, 1) for a core not carrying the mark); ``signs`` the
    best candidate codeword's ±1 per bit (None when no candidate was decoded); ``layers`` the same
    statistic read from each marked layer alone (the combined z is their sum over √L)."""

    issuer: str
    tau: float  # the marking margin: a marked bit's statistic is pushed to at least this
    z: tuple[float, ...]
    signs: tuple[int, ...] | None
    layers: tuple[tuple[str, tuple[float, ...]], ...]


@dataclass(frozen=True)
class Distance:
    """The suspect's fingerprint distance to one issuance's published fingerprint."""

    leaf_index: int
    device_uuid: str
    issuer: str
    distance: float
    threshold: float
    layers: tuple[tuple[str, float], ...]  # the same RMS difference per marked layer


@dataclass(frozen=True)
class ReportData:
    verdict: dict[str, Any]  # Verdict.to_json()
    suspect_files: tuple[FileDigest, ...]
    suspect_sha256: str  # the file's SHA-256, or for a folder the SHA-256 of its sha256sum listing
    checkpoint_note: str  # the signed note, verbatim, cosignatures included
    pinned_key: str  # the log verifier key the checkpoint was checked with
    proofs: tuple[InclusionRecord, ...]
    bits: tuple[BitEvidence, ...]
    distances: tuple[Distance, ...]
    commands: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())  # what could not be gathered, said plainly
