"""Keyed chaos FSM: a fixed-point logistic map, perturbed by ChaCha20, driving an 8-state machine.

Draws the watermark's directions, the fingerprint's probes and any keyed permutation. Every step
is exact integer arithmetic (spec/chaos.md), so every platform produces the same stream.

Why this shape: the reference design ran a float logistic map seeded from 4 UUID bits and fell into
one 7-step cycle from every seed. Here (1) the map state is 64-bit fixed point and every step XORs
16 fresh ChaCha20 keystream bits into it, so finite precision cannot trap it in a cycle: the joint
state (map, machine, keystream position) never repeats within a stream; (2) every output word is
whitened by a second keystream word. Security rests on HKDF-SHA256 and ChaCha20 alone; the map and
the machine add none, and the spec says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

LABEL = b"emshield/chaos/v1"
MIN_KEY_BYTES = 16
MASK64 = (1 << 64) - 1
PERTURB_MASK = 0xFFFF
N_STATES = 8
# Rotation applied to the map output in each machine state (all in 1..63: a shift by 64 is undefined).
ROTATIONS = (7, 13, 19, 29, 31, 41, 53, 59)
# Words per context before the generator refuses: keeps the ChaCha20 32-bit block counter from wrapping.
MAX_WORDS = (1 << 32) * 4
_CHUNK_WORDS = 4096
_LANE_STEPS = 256  # steps per keystream block of ChaosLanes


def _context_bytes(fields: Sequence[str]) -> bytes:
    out = bytearray()
    for field in fields:
        raw = field.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ValueError("chaos context field longer than 65535 bytes")
        out += len(raw).to_bytes(2, "big") + raw
    return bytes(out)


def _seed(key: bytes, info: bytes) -> tuple[object, int, int]:
    """(keystream encryptor, x0, s0) of one stream: the HKDF split of spec/chaos.md "Keying"."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"chaos key must be at least {MIN_KEY_BYTES} bytes")
    okm = HKDF(algorithm=hashes.SHA256(), length=41, salt=LABEL, info=info).derive(key)
    keystream = Cipher(algorithms.ChaCha20(okm[:32], bytes(16)), mode=None).encryptor()
    return keystream, int.from_bytes(okm[32:40], "big"), okm[40] % N_STATES


def _info(backbone_id: str, layer: str, purpose: str) -> bytes:
    return LABEL + b"\x00" + _context_bytes((backbone_id, layer, purpose))


def _rotate_whiten(xs: np.ndarray, ss: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    rot = np.array(ROTATIONS, dtype=np.uint64)[ss.astype(np.intp)]
    return ((xs << rot) | (xs >> (np.uint64(64) - rot))) ^ whiten


class ChaosStream:
    """One keyed stream for one context (backbone id, layer name, purpose). The reference evaluation."""

    def __init__(self, key: bytes, backbone_id: str, layer: str, purpose: str) -> None:
        self._keystream, self._x, self._s = _seed(key, _info(backbone_id, layer, purpose))
        self._produced = 0

    def words(self, n: int) -> np.ndarray:
        """Next n output words (uint64)."""
        if n < 0:
            raise ValueError("negative word count")
        if self._produced + n > MAX_WORDS:
            raise ValueError("chaos stream exhausted for this context")
        out = np.empty(n, dtype=np.uint64)
        done = 0
        while done < n:
            m = min(_CHUNK_WORDS, n - done)
            out[done : done + m] = self._chunk(m)
            done += m
        return out

    def _steps(self, m: int) -> tuple[list[int], list[int], np.ndarray]:
        """Run m steps; return map states, machine states and the whitening words."""
        if self._produced + m > MAX_WORDS:
            raise ValueError("chaos stream exhausted for this context")
        ks = np.frombuffer(self._keystream.update(bytes(16 * m)), dtype="<u8").reshape(m, 2)
        perturb = (ks[:, 0] & np.uint64(PERTURB_MASK)).tolist()
        xs = [0] * m
        ss = [0] * m
        x, s = self._x, self._s
        for t in range(m):  # logistic_step and next_state, inlined: this loop is the hot path
            x = min(MASK64, (x * ((1 << 64) - x)) >> 62) ^ perturb[t]
            s = (5 * s + (x >> 61) + 1) % N_STATES
            xs[t] = x
            ss[t] = s
        self._x, self._s = x, s
        self._produced += m
        return xs, ss, ks[:, 1]

    def _chunk(self, m: int) -> np.ndarray:
        xs, ss, whiten = self._steps(m)
        return _rotate_whiten(np.array(xs, dtype=np.uint64), np.array(ss, dtype=np.intp), whiten)

    def states(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Trace of the next n steps as (map states, machine states), for analysis; advances like words(n)."""
        xs, ss, _ = self._steps(n)
        return np.array(xs, dtype=np.uint64), np.array(ss, dtype=np.uint8)

    def bits(self, n: int) -> np.ndarray:
        """n bits (uint8 0/1), most significant bit of each word first; a word's unused bits are dropped."""
        w = self.words(-(-n // 64))
        return np.unpackbits(w.astype(">u8").view(np.uint8))[:n]

    def rademacher(self, n: int) -> np.ndarray:
        """n signs in {-1, +1} (int8): bit 1 -> +1, bit 0 -> -1."""
        return (self.bits(n).astype(np.int8) * 2 - 1).astype(np.int8)

    def uniforms(self, n: int) -> np.ndarray:
        """n doubles in [0, 1): (word >> 11) · 2^-53, exact in IEEE-754 binary64."""
        return (self.words(n) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def below(self, bound: int) -> int:
        """Uniform integer in [0, bound) by rejection: reject words >= 2^64 - (2^64 mod bound)."""
        if not 0 < bound <= 1 << 64:
            raise ValueError("bound out of range")
        limit = (1 << 64) - ((1 << 64) % bound)
        while True:
            w = int(self.words(1)[0])
            if w < limit:
                return w % bound

    def permutation(self, n: int) -> np.ndarray:
        """Fisher-Yates: for i = n-1 down to 1, swap p[i] with p[below(i+1)]; p starts as 0..n-1."""
        p = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.below(i + 1)
            p[i], p[j] = p[j], p[i]
        return np.array(p, dtype=np.int64)


_M32 = np.uint64(0xFFFFFFFF)
_HALF = np.uint64(1 << 63)


def logistic_step(x: np.ndarray) -> np.ndarray:
    """min(2^64 − 1, ⌊x·(2^64 − x) / 2^62⌋) for a uint64 array, without the perturbation.

    numpy has no 128-bit product, so the high bits come from four 32×32-bit limb products. The
    product x·(2^64 − x) is below 2^126 except at x = 2^63 (exactly 2^126, the clamp); at x = 0 the
    wrapped 2^64 − x is 0, which gives the right product 0."""
    x = np.asarray(x, dtype=np.uint64)
    y = ~x + np.uint64(1)  # 2^64 − x mod 2^64
    x0, x1, y0, y1 = x & _M32, x >> np.uint64(32), y & _M32, y >> np.uint64(32)
    p00, p01, p10 = x0 * y0, x0 * y1, x1 * y0
    mid = (p00 >> np.uint64(32)) + (p01 & _M32) + (p10 & _M32)
    hi = x1 * y1 + (p01 >> np.uint64(32)) + (p10 >> np.uint64(32)) + (mid >> np.uint64(32))
    lo_top = (mid & _M32) >> np.uint64(30)  # bits 62, 63 of the product
    out = (hi << np.uint64(2)) | lo_top
    return np.where(x == _HALF, np.uint64(MASK64), out)


class ChaosLanes:
    """Many ChaosStreams of one context under different keys, evaluated in lock step.

    The same function as ChaosStream for every lane (spec/chaos.md): each lane keeps its own HKDF
    seed and ChaCha20 keystream; only the serial map-and-machine loop runs once per step over all
    lanes as numpy arrays, which is what makes tracing many issuances affordable."""

    def __init__(self, keys: Sequence[bytes], backbone_id: str, layer: str, purpose: str) -> None:
        info = _info(backbone_id, layer, purpose)
        seeds = [_seed(key, info) for key in keys]
        self._keystreams = [k for k, _, _ in seeds]
        self._x = np.array([x for _, x, _ in seeds], dtype=np.uint64)
        self._s = np.array([s for _, _, s in seeds], dtype=np.uint64)
        self._produced = 0

    def __len__(self) -> int:
        return len(self._keystreams)

    def words(self, n: int) -> np.ndarray:
        """Next n output words of every lane: uint64 [lanes, n], row i = lane i's ChaosStream.words(n)."""
        if n < 0:
            raise ValueError("negative word count")
        if self._produced + n > MAX_WORDS:
            raise ValueError("chaos stream exhausted for this context")
        out = np.empty((len(self), n), dtype=np.uint64)
        for done in range(0, n, _LANE_STEPS):  # bounded keystream buffers however many lanes
            m = min(_LANE_STEPS, n - done)
            out[:, done:done + m] = self._block(m)
        return out

    def _block(self, m: int) -> np.ndarray:
        zeros = bytes(16 * m)
        ks = np.frombuffer(b"".join(k.update(zeros) for k in self._keystreams), dtype="<u8")
        ks = ks.reshape(len(self), m, 2).transpose(1, 0, 2)  # [step, lane, (k_t, w_t)]
        perturb = ks[:, :, 0] & np.uint64(PERTURB_MASK)
        xs = np.empty((m, len(self)), dtype=np.uint64)
        ss = np.empty((m, len(self)), dtype=np.uint64)
        x, s = self._x, self._s
        for t in range(m):  # the step of spec/chaos.md for all lanes at once
            x = logistic_step(x) ^ perturb[t]
            s = (np.uint64(5) * s + (x >> np.uint64(61)) + np.uint64(1)) & np.uint64(N_STATES - 1)
            xs[t] = x
            ss[t] = s
        self._x, self._s = x, s
        self._produced += m
        return _rotate_whiten(xs, ss, ks[:, :, 1]).T
