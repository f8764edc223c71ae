"""Seal/unseal throughput against raw AES-256-GCM, why unsealing costs what it does, and
mount-to-first-inference latency.

    ./run bench seal                      # 100 MiB, 1 MiB chunks, x25519, 5 shuffled rounds
    .venv/bin/python bench/seal.py --size-mib 200 --suite mlkem768-x25519 --chunk-kib 4096

Baselines (same bytes, same run): one-shot AESGCM.encrypt / AESGCM.decrypt from `cryptography` on
the whole buffer (the API as a caller uses it: it allocates a fresh output buffer), and the cipher
alone (`*_into` a preallocated, already-touched buffer). Target (issue #6): seal and unseal
>= 80 % of the one-shot baseline for a 100 MiB core. Every variant runs once per round,
in a shuffled order, so load from other processes falls on all of them alike; best and median
are printed with the load average.

Unseal is measured for every memory kind (memfd_secret, mlock'ed memfd, mlock'ed anonymous memory
with huge pages), from bytes and from a file. The
"first touch" study times what dominates unsealing: making 100 MiB of fresh memory present, for
each kind and each way of asking the kernel to do it in bulk (MAP_POPULATE, MADV_POPULATE_WRITE,
fallocate, two threads).

Mount-to-first-inference: on the tiny fixture Llama (fixtures/tiny-llama, issue #4) with a synthetic
LoRA core on every q/v projection: time from "blob on disk" to the first generated token
(read + HPKE unwrap + decrypt into secret memory + parse + merge + one forward pass), against the
same merge + forward pass from a plaintext core already in memory.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import io
import json
import mmap
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emshield.core import LoraFactors, core_to_bytes  # noqa: E402
from emshield.tee.blobformat import CONTENT_CORE, SUITES  # noqa: E402
from emshield.tee.device import init_device  # noqa: E402
from emshield.tee.errors import SealError  # noqa: E402
from emshield.tee.mount import mount  # noqa: E402
from emshield.tee.secmem import KIND_LOCKED, KIND_PRIVATE, KIND_SECRET, SYS_MEMFD_SECRET, _address  # noqa: E402
from emshield.tee.seal import seal_stream  # noqa: E402

FIXTURE = ROOT / "fixtures" / "tiny-llama"


class NullSink(io.RawIOBase):
    """Counts bytes and drops them: seal throughput without a disk or a growing buffer."""

    def __init__(self) -> None:
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.n += len(b)
        return len(b)


def rounds(variants: dict[str, Callable[[], object]], n: int) -> dict[str, list[float]]:
    """Seconds of every variant, each round running every variant once in a fresh (seeded) random
    order, so that load from other processes on the shared cores falls on all of them alike, and
    no variant always inherits the memory state the same predecessor left (freeing 100 MiB of
    4 KiB pages just before a huge-page allocation forces the kernel to compact memory first)."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    shuffle = random.Random(6).shuffle
    for _ in range(n):
        shuffle(order)
        for name in order:
            t = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t)
    return times


def throughput(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, str]]:
    size = args.size_mib << 20
    data = hashlib.shake_256(b"emshield/bench/seal").digest(1 << 20) * args.size_mib
    key, nonce = AESGCM.generate_key(256), os.urandom(12)
    aead = AESGCM(key)
    raw_ct = aead.encrypt(nonce, data, None)
    out = bytearray(size + 16)
    errors: dict[str, str] = {}
    variants: dict[str, Callable[[], object]] = {
        # baseline 1: the one-shot API as a caller uses it (allocates a fresh output buffer each time)
        "raw_encrypt": lambda: aead.encrypt(nonce, data, None),
        "raw_decrypt": lambda: aead.decrypt(nonce, raw_ct, None),
        # baseline 2: the cipher alone, into a preallocated, already-touched buffer (upper bound)
        "raw_encrypt_into": lambda: aead.encrypt_into(nonce, data, None, out),
        "raw_decrypt_into": lambda: aead.decrypt_into(nonce, raw_ct, None, memoryview(out)[:size]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        device = init_device(Path(tmp) / "device", "file")
        binding = device.binding(bytes(32), bytes(32))

        def seal_to(sink):
            return seal_stream(io.BytesIO(data), sink, size, device.record.public, binding,
                               suite=args.suite, chunk_size=args.chunk_kib << 10)

        variants["seal"] = lambda: seal_to(NullSink())
        buf = io.BytesIO()
        seal_to(buf)
        blob = buf.getvalue()
        del buf
        blob_path = Path(tmp) / "bench.sealed"
        blob_path.write_bytes(blob)

        def unseal(source, kind: str) -> None:
            with mount(source, device, bytes(32), bytes(32), memory_kinds=(kind,)) as m:
                assert m.memory_kind == kind

        for label, kind in (("secret", KIND_SECRET), ("locked", KIND_LOCKED), ("private", KIND_PRIVATE)):
            try:
                unseal(blob, kind)
            except SealError as e:
                errors[f"unseal_{label}"] = str(e)
                continue
            variants[f"unseal_{label}"] = lambda k=kind: unseal(blob, k)
            variants[f"unseal_{label}_file"] = lambda k=kind: unseal(blob_path, k)
        times = rounds(variants, args.repeats)
    return times, errors


# -- why unsealing is slower than the cipher: the first touch of fresh memory, by kind and method --

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.mlock2.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint)
_libc.munlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
MADV_POPULATE_WRITE = 23  # Linux 5.14; not in the mmap module of Python 3.11


def _secret_fd(size: int) -> int:
    fd = _libc.syscall(SYS_MEMFD_SECRET, os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "memfd_secret: " + os.strerror(ctypes.get_errno()))
    os.ftruncate(fd, size)
    return fd


def _memfd(size: int) -> int:
    fd = os.memfd_create("bench", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def _first_touch(size: int, kind: str, how: str) -> None:
    """Map `size` fresh bytes of `kind` and make every page present by `how`; then release them."""
    fd = {"secret": _secret_fd, "memfd": _memfd, "anon": lambda n: -1, "anon-thp": lambda n: -1}[kind](size)
    flags = (mmap.MAP_SHARED if fd >= 0 else mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if how == "fallocate":
        os.posix_fallocate(fd, 0, size)
    m = mmap.mmap(fd, size, flags | (mmap.MAP_POPULATE if how == "MAP_POPULATE" else 0))
    try:
        addr = _address(m)
        if kind == "anon-thp":
            m.madvise(mmap.MADV_HUGEPAGE)
        if how == "MADV_POPULATE_WRITE":
            if _libc.madvise(addr, size, MADV_POPULATE_WRITE) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        elif how == "mlock (populates)":
            if _libc.mlock2(addr, size, 0) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            _libc.munlock(addr, size)
        elif how.startswith("memset"):
            threads = 2 if "2 threads" in how else 1
            step = size // threads
            workers = [threading.Thread(target=ctypes.memset, args=(addr + i * step, 0, step)) for i in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        # MAP_POPULATE and fallocate only pre-fault if the kernel honours them: memset checks that
        if how in ("MAP_POPULATE", "fallocate"):
            ctypes.memset(addr, 0, size)
    finally:
        m.close()
        if fd >= 0:
            os.close(fd)


FAULT_CASES = [
    ("anon", "memset"), ("anon-thp", "memset"), ("anon-thp", "mlock (populates)"),
    ("memfd", "memset"), ("memfd", "mlock (populates)"), ("memfd", "MADV_POPULATE_WRITE"), ("memfd", "fallocate"),
    ("secret", "memset"), ("secret", "memset, 2 threads"), ("secret", "MAP_POPULATE"),
    ("secret", "MADV_POPULATE_WRITE"), ("secret", "fallocate"),
]


def fault_study(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, str]]:
    size = args.size_mib << 20
    variants, errors = {}, {}
    for kind, how in FAULT_CASES:
        name = f"{kind}: {how}"
        try:
            _first_touch(size, kind, how)
            variants[name] = lambda k=kind, h=how: _first_touch(size, k, h)
        except OSError as e:
            errors[name] = f"refused by the kernel ({e.strerror or e})"
    return rounds(variants, args.repeats), errors


def synthetic_core(model, rank: int, seed: int) -> dict[str, LoraFactors]:
    rng = np.random.default_rng(seed)
    core = {}
    for name, p in model.named_parameters():
        if name.endswith(("q_proj.weight", "v_proj.weight")):
            out_dim, in_dim = p.shape
            core[name] = LoraFactors(
                (rng.standard_normal((rank, in_dim)) * 0.01).astype(np.float32),
                (rng.standard_normal((out_dim, rank)) * 0.01).astype(np.float32), 2.0)
    return core


def first_inference(args: argparse.Namespace) -> dict:
    if not (FIXTURE / "config.json").exists():
        return {"skipped": f"fixture model not found at {FIXTURE} (issue #4 builds it)"}
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(FIXTURE, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(FIXTURE)
    fixture = json.loads((FIXTURE / "FIXTURE.json").read_text())
    backbone_id = bytes.fromhex(fixture["backbone_id"])
    leaf = hashlib.sha256(b"bench leaf").digest()
    core = synthetic_core(model, args.rank, 1)
    params = dict(model.named_parameters())
    originals = {k: params[k].detach().clone() for k in core}
    inputs = tok("Account holder:", return_tensors="pt")

    def merge_and_infer(c) -> int:
        with torch.no_grad():
            for name, f in c.items():
                params[name].add_(torch.from_numpy(f.delta()).to(torch.float32))
            token = int(model(**inputs).logits[0, -1].argmax())
            for name in c:  # restore the public backbone: no core-derived weights stay behind
                params[name].copy_(originals[name])
        return token

    merge_and_infer(core)  # warm-up (allocator, kernels)
    with tempfile.TemporaryDirectory() as tmp:
        device = init_device(Path(tmp) / "device", "file")
        plaintext = core_to_bytes(core)
        blob_path = Path(tmp) / "core.sealed"
        with open(blob_path, "wb") as f:
            seal_stream(io.BytesIO(plaintext), f, len(plaintext), device.record.public,
                        device.binding(backbone_id, leaf), suite=args.suite, content_type=CONTENT_CORE)

        def sealed_path() -> int:
            with mount(blob_path, device, backbone_id, leaf) as m:
                return merge_and_infer(m.core)

        plain_times, sealed_times = [], []
        for _ in range(args.inference_repeats):
            t = time.perf_counter()
            a = merge_and_infer(core)
            plain_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            b = sealed_path()
            sealed_times.append(time.perf_counter() - t)
            assert a == b, "sealed and plaintext cores gave different tokens"
    p, s = statistics.median(plain_times), statistics.median(sealed_times)
    return {"model": str(FIXTURE.relative_to(ROOT)), "core_bytes": len(plaintext), "tensors": len(core),
            "suite": args.suite, "plaintext_merge_first_token_ms": p * 1e3,
            "mount_to_first_token_ms": s * 1e3, "sealing_overhead_ms": (s - p) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=100)
    ap.add_argument("--chunk-kib", type=int, default=1024)
    ap.add_argument("--suite", choices=sorted(SUITES), default="x25519")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; every variant runs once per round, in a shuffled order")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank of the synthetic core for the inference test")
    ap.add_argument("--inference-repeats", type=int, default=20)
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--skip-fault-study", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    load_before = os.getloadavg()
    tp, tp_errors = throughput(args)
    faults, fault_errors = ({}, {}) if args.skip_fault_study else fault_study(args)
    inf = {"skipped": "--skip-inference"} if args.skip_inference else first_inference(args)
    load_after = os.getloadavg()
    size = args.size_mib << 20
    if args.json:
        mbps = {k: {"best": size / min(v) / 1e6, "median": size / statistics.median(v) / 1e6} for k, v in tp.items()}
        print(json.dumps({"load_average": [load_before, load_after], "cpus": os.cpu_count(), "throughput_MBps": mbps,
                          "errors": {**tp_errors, **fault_errors},
                          "first_touch_s": {k: min(v) for k, v in faults.items()}, "first_inference": inf}, indent=2))
        return
    print(f"seal/unseal throughput: {args.size_mib} MiB, {args.chunk_kib} KiB chunks, suite {args.suite}, MB/s "
          f"(best and median of {args.repeats} rounds, variants shuffled); {os.cpu_count()} CPUs, load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")

    def row(label: str, key: str, base: str | None = None) -> None:
        if key not in tp:
            print(f"  {label:50s} n/a: {tp_errors.get(key, 'not measured')}")
            return
        best, med = size / min(tp[key]) / 1e6, size / statistics.median(tp[key]) / 1e6
        line = f"  {label:50s} {best:6.0f} {med:6.0f}"
        if base:
            r1 = min(tp[base]) / min(tp[key])
            r2 = statistics.median(tp[base]) / statistics.median(tp[key])
            r3 = min(tp[base + "_into"]) / min(tp[key])
            line += (f"  {r1:5.0%} {r2:5.0%} of one-shot [{'PASS' if r1 >= 0.8 else 'FAIL'}],"
                     f" {r3:5.0%} of cipher-only")
        print(line)

    print(f"  {'':50s} {'best':>6s} {'median':>6s}  (ratios: best, median)")
    row("raw AES-256-GCM encrypt, one-shot", "raw_encrypt")
    row("raw AES-256-GCM encrypt_into (cipher only)", "raw_encrypt_into")
    row("seal (stream to a null sink)", "seal", "raw_encrypt")
    row("raw AES-256-GCM decrypt, one-shot", "raw_decrypt")
    row("raw AES-256-GCM decrypt_into (cipher only)", "raw_decrypt_into")
    for label, key in (("memfd_secret", "secret"), ("mlock'ed memfd", "locked"), ("mlock'ed anon (THP)", "private")):
        row(f"unseal = mount into {label}", f"unseal_{key}", "raw_decrypt")
        row("  ... from a file", f"unseal_{key}_file", "raw_decrypt")
    print("  (target: unseal >= 80% of one-shot raw; mount times include HPKE unwrap, memory allocation and wipe)")
    if faults or fault_errors:
        print(f"first touch of {args.size_mib} MiB of fresh memory (map, make every page present, unmap), "
              f"best of {args.repeats}:")
        for kind, how in FAULT_CASES:
            name = f"{kind}: {how}"
            if name in faults:
                t = min(faults[name])
                print(f"  {name:40s} {t * 1e3:8.1f} ms  {t / (size >> 12) * 1e6:6.2f} µs per 4 KiB page")
            else:
                print(f"  {name:40s} {fault_errors[name]}")
    if "skipped" in inf:
        print(f"mount-to-first-inference: skipped: {inf['skipped']}")
    else:
        print(f"mount-to-first-inference on {inf['model']} ({inf['tensors']} LoRA tensors, {inf['core_bytes']} bytes, "
              f"{inf['suite']}), median of {args.inference_repeats}:")
        print(f"  plaintext core: merge + first token (baseline) {inf['plaintext_merge_first_token_ms']:7.2f} ms")
        print(f"  sealed core: mount + merge + first token       {inf['mount_to_first_token_ms']:7.2f} ms  "
              f"(+{inf['sealing_overhead_ms']:.2f} ms for sealing)")


if __name__ == "__main__":
    main()
