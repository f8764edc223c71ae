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
_U = {k: np.uint64(k) for k in (1, 2, 3, 5, 30, 32, 61, N_STATES - 1)}
_ROT_LEFT = np.array(ROTATIONS, dtype=np.uint64)
_ROT_RIGHT = np.uint64(64) - _ROT_LEFT


class _LaneStep:
    """The step of spec/chaos.md on uint64 arrays of one width, in place on preallocated buffers.

    numpy has no 128-bit product, so the high bits of x·(2^64 − x) come from four 32×32-bit limb
    products. The product is below 2^126 except at x = 2^63 (exactly 2^126, the clamp); at x = 0 the
    wrapped 2^64 − x is 0, which gives the right product 0. Working in place keeps every operand of
    a step in cache, which is most of the lock-step's cost at thousands of lanes."""

    def __init__(self, width: int) -> None:
        self._buf = np.empty((9, width), dtype=np.uint64)
        self._half = np.empty(width, dtype=bool)

    def logistic(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out = min(2^64 − 1, ⌊x·(2^64 − x) / 2^62⌋), without the perturbation (out may not be x)."""
        y, x0, x1, y0, y1, p, mid, t, _ = self._buf
        np.negative(x, out=y)  # 2^64 − x mod 2^64
        np.bitwise_and(x, _M32, out=x0)
        np.right_shift(x, _U[32], out=x1)
        np.bitwise_and(y, _M32, out=y0)
        np.right_shift(y, _U[32], out=y1)
        np.multiply(x1, y1, out=out)  # the high limb product, then the carries into it
        np.multiply(x0, y0, out=mid)
        np.right_shift(mid, _U[32], out=mid)
        for a, b in ((x0, y1), (x1, y0)):
            np.multiply(a, b, out=p)
            np.right_shift(p, _U[32], out=t)
            out += t
            p &= _M32
            mid += p
        np.right_shift(mid, _U[32], out=t)
        out += t
        np.right_shift(mid, _U[30], out=mid)  # bits 62, 63 of the product
        mid &= _U[3]
        np.left_shift(out, _U[2], out=out)
        out |= mid
        np.equal(x, _HALF, out=self._half)  # the only x whose result wrapped to 0 instead of 2^64 − 1
        out -= self._half
        return out

    def run(self, x: np.ndarray, s: np.ndarray, perturb: np.ndarray, words: np.ndarray) -> None:
        """len(perturb) steps from (x, s), updated in place; words[t] = the rotated map state of step t
        (before whitening)."""
        nxt, rot = self._buf[8], self._buf[0]
        for t in range(perturb.shape[0]):
            self.logistic(x, nxt)
            np.bitwise_xor(nxt, perturb[t], out=x)
            np.multiply(s, _U[5], out=s)
            np.right_shift(x, _U[61], out=nxt)
            s += nxt
            s += _U[1]
            s &= _U[N_STATES - 1]
            np.take(_ROT_LEFT, s, out=rot)
            np.left_shift(x, rot, out=nxt)
            np.take(_ROT_RIGHT, s, out=rot)
            np.right_shift(x, rot, out=words[t])
            words[t] |= nxt


def logistic_step(x: np.ndarray) -> np.ndarray:
    """min(2^64 − 1, ⌊x·(2^64 − x) / 2^62⌋) for a uint64 array, without the perturbation."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    return _LaneStep(x.size).logistic(x.ravel(), np.empty(x.size, dtype=np.uint64)).reshape(x.shape)


class ChaosLanes:
    """Many ChaosStreams of one context under different keys, evaluated in lock step.

    The same function as ChaosStream for every lane (spec/chaos.md): each lane keeps its own HKDF
    seed and ChaCha20 keystream; only the serial map-and-machine loop runs once per step over all
    lanes as numpy arrays, which is what makes tracing many issuances affordable. A call may
    advance a subset of the lanes (the others keep their place), so lanes that need different
    numbers of words never step for nothing."""

    def __init__(self, keys: Sequence[bytes], backbone_id: str, layer: str, purpose: str) -> None:
        info = _info(backbone_id, layer, purpose)
        seeds = [_seed(key, info) for key in keys]
        self._keystreams = [k for k, _, _ in seeds]
        self._x = np.array([x for _, x, _ in seeds], dtype=np.uint64)
        self._s = np.array([s for _, _, s in seeds], dtype=np.uint64)
        self._produced = np.zeros(len(seeds), dtype=np.int64)

    def __len__(self) -> int:
        return len(self._keystreams)

    def words(self, n: int, lanes: np.ndarray | None = None) -> np.ndarray:
        """Next n output words of every lane, or of the lanes at indices ``lanes`` (distinct) only:
        uint64 [lanes, n], row i = that lane's ChaosStream.words(n)."""
        if n < 0:
            raise ValueError("negative word count")
        idx = np.arange(len(self)) if lanes is None else np.asarray(lanes, dtype=np.intp)
        if idx.size and np.unique(idx).size != idx.size:
            raise ValueError("lanes must be distinct")
        if idx.size and int(self._produced[idx].max()) + n > MAX_WORDS:
            raise ValueError("chaos stream exhausted for this context")
        out = np.empty((idx.size, n), dtype=np.uint64)
        streams = [self._keystreams[i] for i in idx.tolist()]
        x, s = self._x[idx], self._s[idx]
        step = _LaneStep(idx.size)
        rotated = np.empty((min(_LANE_STEPS, n), idx.size), dtype=np.uint64)
        for done in range(0, n, _LANE_STEPS):  # bounded keystream buffers however many lanes
            m = min(_LANE_STEPS, n - done)
            zeros = bytes(16 * m)
            ks = np.frombuffer(b"".join(k.update(zeros) for k in streams), dtype="<u8").reshape(idx.size, m, 2)
            perturb = np.ascontiguousarray((ks[:, :, 0] & np.uint64(PERTURB_MASK)).T)  # [step, lane]
            step.run(x, s, perturb, rotated[:m])
            np.bitwise_xor(rotated[:m].T, ks[:, :, 1], out=out[:, done:done + m])
        self._x[idx], self._s[idx] = x, s
        self._produced[idx] += n
        return out
