"""Seal/unseal throughput against raw AES-256-GCM, and mount-to-first-inference latency.

    ./run bench seal                      # 100 MiB, 1 MiB chunks, x25519, 3 repeats
    .venv/bin/python bench/seal.py --size-mib 200 --suite mlkem768-x25519 --chunk-kib 4096

Baseline (same bytes, same run): one-shot AESGCM.encrypt / AESGCM.decrypt from `cryptography` on the
whole buffer — the cost of the cipher alone, with no framing, no key wrap, no secret memory.
Target (issue #6): seal and unseal >= 80 % of the baseline for a 100 MiB core.

Mount-to-first-inference: on the tiny fixture Llama (fixtures/tiny-llama, issue #4) with a synthetic
LoRA core on every q/v projection: time from "blob on disk" to the first generated token
(read + HPKE unwrap + decrypt into secret memory + parse + merge + one forward pass), against the
same merge + forward pass from a plaintext core already in memory.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
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
from emshield.tee.secmem import KIND_LOCKED, KIND_SECRET  # noqa: E402
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


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def throughput(args: argparse.Namespace) -> dict:
    size = args.size_mib << 20
    data = hashlib.shake_256(b"emshield/bench/seal").digest(1 << 20) * args.size_mib
    key, nonce = AESGCM.generate_key(256), os.urandom(12)
    aead = AESGCM(key)
    raw_ct = aead.encrypt(nonce, data, None)
    out = bytearray(size + 16)
    res = {
        # baseline 1: the one-shot API as a caller uses it (allocates a fresh output buffer each time)
        "raw_encrypt": best(lambda: aead.encrypt(nonce, data, None), args.repeats),
        "raw_decrypt": best(lambda: aead.decrypt(nonce, raw_ct, None), args.repeats),
        # baseline 2: the cipher alone, into a preallocated, already-touched buffer (upper bound)
        "raw_encrypt_into": best(lambda: aead.encrypt_into(nonce, data, None, out), args.repeats),
        "raw_decrypt_into": best(lambda: aead.decrypt_into(nonce, raw_ct, None, memoryview(out)[:size]), args.repeats),
    }
    del raw_ct, out

    with tempfile.TemporaryDirectory() as tmp:
        device = init_device(Path(tmp) / "device", "file")
        binding = device.binding(bytes(32), bytes(32))

        def seal_to(sink):
            return seal_stream(io.BytesIO(data), sink, size, device.record.public, binding,
                               suite=args.suite, chunk_size=args.chunk_kib << 10)

        res["seal"] = best(lambda: seal_to(NullSink()), args.repeats)
        buf = io.BytesIO()
        seal_to(buf)
        blob = buf.getvalue()
        del buf
        blob_path = Path(tmp) / "bench.sealed"
        blob_path.write_bytes(blob)

        def unseal(source, kinds):
            with mount(source, device, bytes(32), bytes(32), allow_unlocked=args.allow_unlocked,
                       memory_kinds=kinds) as m:
                assert m.memory_kind in kinds

        for label, kinds in (("secret", (KIND_SECRET,)), ("locked", (KIND_LOCKED,))):
            try:
                res[f"unseal_{label}"] = best(lambda k=kinds: unseal(blob, k), args.repeats)
                res[f"unseal_{label}_file"] = best(lambda k=kinds: unseal(blob_path, k), args.repeats)
            except SealError as e:
                res[f"unseal_{label}_error"] = str(e)
    return {k: (size / v / 1e6 if isinstance(v, float) else v) for k, v in res.items()}


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
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank of the synthetic core for the inference test")
    ap.add_argument("--inference-repeats", type=int, default=20)
    ap.add_argument("--allow-unlocked", action="store_true", help="permit swappable memory if memlock is too small")
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tp = throughput(args)
    inf = {"skipped": "--skip-inference"} if args.skip_inference else first_inference(args)
    if args.json:
        print(json.dumps({"throughput_MBps": tp, "first_inference": inf}, indent=2))
        return
    print(f"seal/unseal throughput: {args.size_mib} MiB, {args.chunk_kib} KiB chunks, suite {args.suite}, "
          f"MB/s, best of {args.repeats}")

    def row(label: str, key: str, base: str | None = None) -> None:
        if key not in tp:
            print(f"  {label:44s} n/a: {tp.get(key + '_error', 'not measured')}")
            return
        line = f"  {label:44s} {tp[key]:7.0f}"
        if base:
            r1, r2 = tp[key] / tp[base], tp[key] / tp[base + "_into"]
            line += (f"   {r1:5.0%} of one-shot [{'PASS' if r1 >= 0.8 else 'FAIL'}],"
                     f" {r2:5.0%} of cipher-only [{'PASS' if r2 >= 0.8 else 'FAIL'}]")
        print(line)

    row("raw AES-256-GCM encrypt, one-shot", "raw_encrypt")
    row("raw AES-256-GCM encrypt_into (cipher only)", "raw_encrypt_into")
    row("seal (stream to a null sink)", "seal", "raw_encrypt")
    row("raw AES-256-GCM decrypt, one-shot", "raw_decrypt")
    row("raw AES-256-GCM decrypt_into (cipher only)", "raw_decrypt_into")
    row("unseal = mount into memfd_secret", "unseal_secret", "raw_decrypt")
    row("unseal = mount into memfd_secret, from file", "unseal_secret_file", "raw_decrypt")
    row("unseal = mount into mlock'ed memfd", "unseal_locked", "raw_decrypt")
    row("unseal = mount into mlock'ed memfd, from file", "unseal_locked_file", "raw_decrypt")
    print("  (target: >= 80% of raw; mount times include HPKE unwrap, secret-memory allocation and wipe)")
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
