"""Error correction for the 48-bit watermark payload: Reed-Solomon over GF(2^8) (reedsolo).

The payload (6 bytes, big-endian) is extended by ``nsym`` parity bytes; the code bits are the
codeword bytes, most significant bit first. Decoding corrects up to ``nsym // 2`` byte errors and
*refuses* beyond that: it never returns a guess. Field and generator are reedsolo's defaults
(primitive polynomial 0x11d, generator 2, first consecutive root 0), written out in spec/watermark.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import reedsolo

PAYLOAD_BITS = 48
PAYLOAD_BYTES = PAYLOAD_BITS // 8


class DecodeRefused(Exception):
    """More errors than the code can correct (or an invalid word): no payload is claimed."""


@dataclass(frozen=True)
class Decoded:
    payload: int
    corrected_bytes: int
    corrected_bits: int


def _codec(nsym: int) -> reedsolo.RSCodec:
    if not 2 <= nsym <= 32:
        raise ValueError("Reed-Solomon parity must be 2..32 bytes")
    return reedsolo.RSCodec(nsym, nsize=255, fcr=0, prim=0x11D, generator=2, c_exp=8)


def code_length_bits(nsym: int) -> int:
    return 8 * (PAYLOAD_BYTES + nsym)


def encode(payload: int, nsym: int) -> np.ndarray:
    """Code bits (uint8 0/1) of a 48-bit payload."""
    if not 0 <= payload < 1 << PAYLOAD_BITS:
        raise ValueError("payload must be a 48-bit unsigned integer")
    word = bytes(_codec(nsym).encode(payload.to_bytes(PAYLOAD_BYTES, "big")))
    return np.unpackbits(np.frombuffer(word, dtype=np.uint8))


def decode(bits: np.ndarray, nsym: int) -> Decoded:
    """Payload from (possibly corrupted) code bits; raises DecodeRefused beyond capacity."""
    bits = np.asarray(bits, dtype=np.uint8)
    if bits.shape != (code_length_bits(nsym),):
        raise ValueError(f"expected {code_length_bits(nsym)} code bits, got {bits.shape}")
    received = np.packbits(bits).tobytes()
    try:
        message, codeword, errata = _codec(nsym).decode(received)
    except reedsolo.ReedSolomonError as exc:  # its messages are for coders, not users
        raise DecodeRefused(f"more byte errors than the code corrects ({nsym // 2})") from exc
    codeword = bytes(codeword)
    # reedsolo can return a word that is not a codeword when errors exceed capacity: re-check.
    if bytes(_codec(nsym).encode(bytes(message))) != codeword or len(errata) > nsym // 2:
        raise DecodeRefused(f"more byte errors than the code corrects ({nsym // 2})")
    flips = np.unpackbits(np.frombuffer(bytes(a ^ b for a, b in zip(received, codeword)), dtype=np.uint8))
    return Decoded(int.from_bytes(bytes(message), "big"), len(errata), int(flips.sum()))

