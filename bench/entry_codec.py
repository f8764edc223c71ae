"""Entry codec and signature costs per entry: strict decode, single vs batch-signed verify and sign.

What the log server pays per entry in its batch path is decode + verify (spec/entry.md). Every
figure is the best of --repeat runs over the same --entries issuances (fixed seed), in µs per
entry, with ratios against baselines measured in the same run:

  decode   decode_entry            vs  cbor2.loads + cbor2.dumps(canonical=True) (a bare canonical
                                       round trip: no schema, no strictness beyond re-encoding), and
                                       its two paths on the same entries: the issuance recognizer
                                       (fast) vs the generic decode, re-encode and compare (strict)
  verify   verify_entry_signature  vs  one raw Ed25519 verify (cryptography); batch-signed entries
                                       in batches of --batch with one `verified` set per run, as the
                                       server does per request, and without the set; a whole
                                       request (--batch entries) by verify_entry_signatures vs the
                                       per-entry loop with one set
  sign     sign_batch              vs  sign_entry (one Ed25519 signature per entry)

    ./run bench entry_codec
    .venv/bin/python bench/entry_codec.py --entries 4000 --batch 2000 --repeat 5 --json
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import uuid
from collections.abc import Callable

import cbor2
from _util import timed
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from emshield.tlog.entry import (
    Issuance,
    SignedEntry,
    _decode_strict,
    _match_issuance,
    decode_entry,
    issuer_key_id,
    sign_batch,
    sign_entry,
    signing_bytes,
    verify_entry_signature,
    verify_entry_signatures,
)

POLICIES = ["both", "watermark", "fingerprint"]


def issuances(n: int, key: Ed25519PrivateKey, seed: int) -> list[Issuance]:
    rnd = random.Random(seed)
    kid = issuer_key_id(key.public_key().public_bytes_raw())
    out = []
    for i in range(n):
        policy = "both" if i % 4 else POLICIES[rnd.randrange(3)]  # mostly "both": the typical issuance
        out.append(Issuance(uuid.UUID(int=rnd.getrandbits(128)).bytes, rnd.randbytes(32),
                            rnd.randbytes(32) if policy != "fingerprint" else None,
                            rnd.randbytes(32) if policy != "watermark" else None,
                            policy, 1_790_000_000 + i, kid))
    return out


def per_entry(fn: Callable[[], object], n: int, repeat: int) -> float:
    """Best-of-``repeat`` µs per entry of ``fn``, which handles ``n`` entries."""
    seconds, _ = timed(fn, repeat)
    return seconds / n * 1e6


def in_batches(entries: list[Issuance], size: int, key: Ed25519PrivateKey) -> list[SignedEntry]:
    out: list[SignedEntry] = []
    for start in range(0, len(entries), size):
        out.extend(sign_batch(entries[start:start + size], key))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=4000, help="issuances per measurement (default 4000)")
    ap.add_argument("--batch", type=int, default=2000, help="signing batch size (default 2000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure, best kept (default 5)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    if args.entries < 1 or not 1 <= args.batch <= args.entries or args.repeat < 1:
        sys.exit("need --entries >= 1, 1 <= --batch <= --entries and --repeat >= 1")

    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pk = key.public_key()
    entries = issuances(args.entries, key, args.seed)
    n = len(entries)

    single = [sign_entry(e, key) for e in entries]
    batched = in_batches(entries, args.batch, key)
    single_bytes = [s.encode() for s in single]
    batch_bytes = [s.encode() for s in batched]
    messages = [signing_bytes(e) for e in entries]
    sigs = [s.signature for s in single]
    mean_size = sum(map(len, single_bytes)) / n
    mean_batch_size = sum(map(len, batch_bytes)) / n

    dec_single = [decode_entry(d) for d in single_bytes]  # as the server has them after decoding
    dec_batch = [decode_entry(d) for d in batch_bytes]
    # As the log server does after start-up (log_server/serve.py), move everything long-lived out of
    # the collector's generations: otherwise every full collection triggered by the measured code
    # walks the ~10^5 objects of the inputs above, a cost of this script, not of the code measured.
    gc.collect()
    gc.freeze()

    f: dict[str, float] = {}
    # decode
    f["baseline_cbor_canonical_round_trip"] = per_entry(
        lambda: [cbor2.dumps(cbor2.loads(d), canonical=True) for d in single_bytes], n, args.repeat)
    f["decode_single"] = per_entry(lambda: [decode_entry(d) for d in single_bytes], n, args.repeat)
    f["decode_batch_signed"] = per_entry(lambda: [decode_entry(d) for d in batch_bytes], n, args.repeat)
    for name, data in (("single", single_bytes), ("batch_signed", batch_bytes)):
        f[f"decode_{name}_fast_path"] = per_entry(lambda d=data: [_match_issuance(x) for x in d], n, args.repeat)
        f[f"decode_{name}_strict_path"] = per_entry(lambda d=data: [_decode_strict(x) for x in d], n, args.repeat)
    # verify
    f["baseline_ed25519_verify"] = per_entry(lambda: [pk.verify(s, m) for s, m in zip(sigs, messages, strict=True)],
                                             n, args.repeat)
    f["verify_single"] = per_entry(lambda: [verify_entry_signature(s, pk) for s in dec_single], n, args.repeat)

    def verify_batch_with_memo() -> None:
        verified: set[tuple[bytes, bytes, bytes]] = set()  # one per run: every batch's signature once
        for s in dec_batch:
            verify_entry_signature(s, pk, verified)

    f["verify_batch_signed_memo"] = per_entry(verify_batch_with_memo, n, args.repeat)
    f["verify_batch_signed_no_memo"] = per_entry(lambda: [verify_entry_signature(s, pk) for s in dec_batch],
                                                 n, args.repeat)
    request, request_keys = dec_batch[:args.batch], [pk] * args.batch  # one request: a whole signing batch

    def verify_request_per_entry() -> None:
        verified: set[tuple[bytes, bytes, bytes]] = set()
        for s in request:
            verify_entry_signature(s, pk, verified)

    f["verify_request_per_entry"] = per_entry(verify_request_per_entry, args.batch, args.repeat)
    f["verify_request_whole"] = per_entry(lambda: verify_entry_signatures(request, request_keys), args.batch,
                                          args.repeat)
    f["decode_verify_single"] = f["decode_single"] + f["verify_single"]
    f["decode_verify_batch_signed"] = f["decode_batch_signed"] + f["verify_batch_signed_memo"]
    f["decode_verify_batch_signed_whole_request"] = f["decode_batch_signed"] + f["verify_request_whole"]
    # sign
    f["baseline_ed25519_sign"] = per_entry(lambda: [key.sign(m) for m in messages], n, args.repeat)
    f["sign_entry"] = per_entry(lambda: [sign_entry(e, key) for e in entries], n, args.repeat)
    f["sign_batch"] = per_entry(lambda: in_batches(entries, args.batch, key), n, args.repeat)

    ratios = {
        "decode_single / cbor_canonical_round_trip": f["decode_single"] / f["baseline_cbor_canonical_round_trip"],
        "decode_batch_signed / cbor_canonical_round_trip":
            f["decode_batch_signed"] / f["baseline_cbor_canonical_round_trip"],
        "decode_single: strict_path / fast_path": f["decode_single_strict_path"] / f["decode_single_fast_path"],
        "decode_batch_signed: strict_path / fast_path":
            f["decode_batch_signed_strict_path"] / f["decode_batch_signed_fast_path"],
        "verify_single / ed25519_verify": f["verify_single"] / f["baseline_ed25519_verify"],
        "verify_batch_signed_memo / ed25519_verify": f["verify_batch_signed_memo"] / f["baseline_ed25519_verify"],
        "verify_batch_signed_no_memo / ed25519_verify":
            f["verify_batch_signed_no_memo"] / f["baseline_ed25519_verify"],
        "verify_request: per_entry / whole": f["verify_request_per_entry"] / f["verify_request_whole"],
        "decode_verify: single / batch_signed": f["decode_verify_single"] / f["decode_verify_batch_signed"],
        "decode_verify_batch_signed: per_entry / whole_request":
            f["decode_verify_batch_signed"] / f["decode_verify_batch_signed_whole_request"],
        "sign_entry / ed25519_sign": f["sign_entry"] / f["baseline_ed25519_sign"],
        "sign_batch / sign_entry": f["sign_batch"] / f["sign_entry"],
    }
    ceilings = {  # entries/s one core could decode and verify if it did nothing else
        "single": 1e6 / f["decode_verify_single"],
        "batch_signed": 1e6 / f["decode_verify_batch_signed"],
        "batch_signed_whole_request": 1e6 / f["decode_verify_batch_signed_whole_request"],
    }
    if args.json:
        print(json.dumps({"entries": n, "batch": args.batch, "repeat": args.repeat, "mean_entry_bytes": mean_size,
                          "mean_batch_signed_entry_bytes": mean_batch_size, "us_per_entry": f, "ratios": ratios,
                          "one_core_decode_verify_entries_per_s": ceilings}, indent=2))
        return
    print(f"{n} issuances (mean {mean_size:.0f} bytes single-signed, {mean_batch_size:.0f} bytes batch-signed "
          f"in batches of {args.batch}), best of {args.repeat}; µs per entry")
    for name, value in f.items():
        print(f"  {name:40s} {value:9.2f}")
    print("ratios")
    for name, value in ratios.items():
        print(f"  {name:55s} {value:7.3f}")
    print("one core, decode + verify only: "
          f"{ceilings['single']:,.0f} single-signed entries/s, {ceilings['batch_signed']:,.0f} batch-signed entries/s "
          f"(per-entry verify), {ceilings['batch_signed_whole_request']:,.0f} (whole-request verify)")


if __name__ == "__main__":
    main()
