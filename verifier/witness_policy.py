"""Require k of n witness cosignatures on a log checkpoint (spec/witness.md, "Verifier policy").

A checkpoint signed only by the log proves nothing against a split view: the log can sign a
different tree for every reader. A checkpoint that k independent witnesses cosigned is one the
witnesses saw extend the history they cosigned before, so a verifier requiring k of n sees the
same history as everyone else unless k witnesses collude with the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from emshield.tlog.checkpoint import (
    BadNoteSignature,
    Checkpoint,
    CosignatureVerifier,
    NoteVerifier,
    cosignature_timestamp,
    known_signatures,
    verify_checkpoint,
)


class WitnessPolicyError(ValueError):
    """The checkpoint lacks the required cosignatures, or carries a forged one."""


@dataclass(frozen=True)
class WitnessedCheckpoint:
    checkpoint: Checkpoint
    cosigned_by: tuple[str, ...]  # verifier keys of the witnesses whose cosignature verified
    timestamps: tuple[int, ...]  # the POSIX time each of them states, same order


def parse_witness_keys(vkeys: Sequence[str]) -> list[CosignatureVerifier]:
    """Witness verifier keys (type 0x04); a repeated key is an error (it would count twice)."""
    out = [CosignatureVerifier.from_verifier_key(k) for k in vkeys]
    if len({(w.name, w.key_id) for w in out}) != len(out):
        raise WitnessPolicyError("a witness key is listed twice")
    return out


def verify_witnessed(note: bytes, log: NoteVerifier, witnesses: Sequence[CosignatureVerifier], quorum: int,
                     *, not_before: int | None = None) -> WitnessedCheckpoint:
    """The checkpoint in ``note`` if the log signed it and at least ``quorum`` of ``witnesses``
    cosigned it (optionally no earlier than ``not_before``, POSIX seconds).

    Lines by unknown keys are ignored; a line by a listed witness that does not verify rejects the
    note (as signed-note verification does), so a log cannot pass off a forged cosignature.
    """
    if not 0 <= quorum <= len(witnesses):
        raise WitnessPolicyError(f"quorum {quorum} is not within 0..{len(witnesses)}")
    cp = verify_checkpoint(note, log)
    try:
        _, found = known_signatures(note, witnesses)
    except BadNoteSignature as exc:
        raise WitnessPolicyError(f"invalid cosignature by witness {exc.key}") from exc
    good: list[tuple[str, int]] = []
    for w, sig in found:
        ts = cosignature_timestamp(sig.signature)
        if not_before is None or ts >= not_before:
            good.append((w.verifier_key(), ts))
    if len(good) < quorum:
        raise WitnessPolicyError(f"checkpoint of size {cp.size} has {len(good)} valid witness cosignature(s),"
                                 f" {quorum} required")
    return WitnessedCheckpoint(cp, tuple(v for v, _ in good), tuple(t for _, t in good))
