"""Tree-building speed: our RFC 9162 code against merkletools and pymerkle, same leaves, same run.

Two workloads on the same random leaves (fixed seed):
  bulk         hash every leaf and compute one root over all of them;
  incremental  append in batches of --batch leaves and compute the root after every batch, which
               is what the log's sequencer does (one signed checkpoint per batch).
Every library hashes the same leaf data; roots are compared with ours (merkletools does not use
RFC 9162's 0x00/0x01 prefixes, so its root is expected to differ and is reported, not used).

    ./run bench merkle_build            # 10^5 leaves
    .venv/bin/python bench/merkle_build.py --leaves 1000000 --batch 10000
"""

from __future__ import annotations

import argparse
import hashlib
import random
import warnings

from _util import timed

from emshield.tlog.merkle import CompactRange, leaf_hash, root_from_leaf_hashes

with warnings.catch_warnings():  # merkletools warns that its optional sha3 module is missing
    warnings.simplefilter("ignore")
    import merkletools
import pymerkle


def bulk_ours(data: list[bytes]) -> bytes:
    return root_from_leaf_hashes([leaf_hash(d) for d in data])


def bulk_compact(data: list[bytes]) -> bytes:
    rng = CompactRange()
    rng.extend([leaf_hash(d) for d in data])
    return rng.root()


def bulk_merkletools(data: list[bytes]) -> bytes:
    mt = merkletools.MerkleTools(hash_type="sha256")
    # Its API takes hex strings (do_hash=True would hash their UTF-8 text, not our bytes).
    mt.add_leaf([hashlib.sha256(b"\x00" + d).hexdigest() for d in data], False)
    mt.make_tree()
    return bytes.fromhex(mt.get_merkle_root())


def bulk_pymerkle(data: list[bytes]) -> bytes:
    tree = pymerkle.InmemoryTree(algorithm="sha256")
    tree.append_entries(data)
    return tree.get_root()


def incr_compact(data: list[bytes], batch: int) -> bytes:
    rng = CompactRange()
    root = rng.root()
    for start in range(0, len(data), batch):
        rng.extend([leaf_hash(d) for d in data[start:start + batch]])
        root = rng.root()
    return root


def incr_merkletools(data: list[bytes], batch: int) -> bytes:
    mt = merkletools.MerkleTools(hash_type="sha256")
    root = b""
    for start in range(0, len(data), batch):
        mt.add_leaf([hashlib.sha256(b"\x00" + d).hexdigest() for d in data[start:start + batch]], False)
        mt.make_tree()  # rebuilds the whole tree: it has no incremental update
        root = bytes.fromhex(mt.get_merkle_root())
    return root


def incr_pymerkle(data: list[bytes], batch: int) -> bytes:
    tree = pymerkle.InmemoryTree(algorithm="sha256")
    root = b""
    for start in range(0, len(data), batch):
        tree.append_entries(data[start:start + batch])
        root = tree.get_root()
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--leaves", type=int, default=100_000, help="number of leaves (default 10^5)")
    ap.add_argument("--leaf-bytes", type=int, default=300, help="bytes per leaf (an issuance entry is ~300)")
    ap.add_argument("--batch", type=int, default=1_000, help="leaves per root in the incremental workload")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    data = [rnd.randbytes(args.leaf_bytes) for _ in range(args.leaves)]
    print(f"{args.leaves} leaves of {args.leaf_bytes} bytes, incremental batches of {args.batch}")

    bulk = {
        "ours root_from_leaf_hashes": lambda: bulk_ours(data),
        "ours CompactRange": lambda: bulk_compact(data),
        "merkletools 1.0.3": lambda: bulk_merkletools(data),
        "pymerkle 7.0.0 InmemoryTree": lambda: bulk_pymerkle(data),
    }
    incremental = {
        "ours CompactRange": lambda: incr_compact(data, args.batch),
        "merkletools 1.0.3": lambda: incr_merkletools(data, args.batch),
        "pymerkle 7.0.0 InmemoryTree": lambda: incr_pymerkle(data, args.batch),
    }
    for title, runs, ours in [("bulk build", bulk, "ours root_from_leaf_hashes"),
                              ("incremental (root per batch)", incremental, "ours CompactRange")]:
        print(f"\n{title}")
        results = {name: timed(fn) for name, fn in runs.items()}
        ref_t, ref_root = results[ours]
        for name, (t, root) in results.items():
            same = "RFC 9162 root" if root == ref_root else "root differs (not RFC 9162 hashing)"
            ratio = t / ref_t
            print(f"  {name:30s} {t:8.3f} s  {args.leaves / t:12,.0f} leaves/s  {ratio:6.2f}x ours' time  {same}")


if __name__ == "__main__":
    main()
