"""RFC 9162 Merkle core: published vectors, and the optimized code against a literal reference."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from pathlib import Path

import pytest

from emshield.tlog import merkle
from emshield.tlog.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MissingNodeError,
    NodeID,
    ProofError,
    consistency_node_ids,
    consistency_proof,
    inclusion_node_ids,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    root_from_nodes,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "tlog" / "rfc9162-proofs"
# The RFC 6962 reference data set (Certificate Transparency's and transparency-dev's tests).
RFC6962_DATA = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                           "606162636465666768696a6b6c6d6e6f"]]


# --- reference implementation: RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1 written out literally ----------


def ref_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


# --- a node store built from the data, the way the server stores perfect subtrees ----------------


class NodeStore:
    """Hashes of every complete perfect subtree of ``data``; counts batched reads."""

    def __init__(self, data: list[bytes]) -> None:
        self.nodes: dict[NodeID, bytes] = {}
        level_hashes = [leaf_hash(x) for x in data]
        level = 0
        while level_hashes:
            for i, h in enumerate(level_hashes):
                self.nodes[(level, i)] = h
            level_hashes = [node_hash(level_hashes[i], level_hashes[i + 1]) for i in range(0, len(level_hashes) - 1, 2)]
            level += 1
        self.calls: list[list[NodeID]] = []

    def __call__(self, ids: list[NodeID]) -> dict[NodeID, bytes]:
        self.calls.append(list(ids))
        return {i: self.nodes[i] for i in ids if i in self.nodes}


def leaves(n: int, seed: int = 0) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(rnd.randrange(0, 40)) for _ in range(n)]


# --- published vectors ---------------------------------------------------------------------------


def _b64(v: str) -> bytes:
    return base64.b64decode(v)


def _vector_files(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).rglob("*.json"))


def test_vector_set_is_complete() -> None:
    assert len(_vector_files("inclusion")) + len(_vector_files("consistency")) == 196  # 98 inclusion + 98 consistency files (ARCHITECTURE.md says 184)
    assert (VECTORS / "LICENSE").is_file() and (VECTORS / "README.md").is_file()


@pytest.mark.parametrize("path", _vector_files("inclusion"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_inclusion_vectors(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b64(h) for h in v["proof"] or []]
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], proof, _b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", _vector_files("consistency"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_consistency_vectors(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b64(h) for h in v["proof"] or []]
    args = (v["size1"], v["size2"], proof, _b64(v["root1"]), _b64(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_happy_path_vectors_match_our_generator() -> None:
    """The vectors' trees are built from the RFC 6962 reference data set; our generated proofs
    must equal the accepted vector proofs byte for byte."""
    store = NodeStore(RFC6962_DATA)
    checked = 0
    for path in _vector_files("inclusion") + _vector_files("consistency"):
        v = json.loads(path.read_text())
        incl = "treeSize" in v
        size, root = (v["treeSize"], v["root"]) if incl else (v["size2"], v["root2"])
        if v["wantErr"] or size > len(RFC6962_DATA) or _b64(root) != ref_mth(RFC6962_DATA[:size]):
            continue
        got = inclusion_proof(v["leafIdx"], size, store) if incl else consistency_proof(v["size1"], size, store)
        assert got == [_b64(h) for h in v["proof"] or []], path
        checked += 1
    assert checked == 10, checked  # every accepted vector built from this data set


def test_known_roots_of_rfc6962_reference_data() -> None:
    """Roots from the Certificate Transparency reference tests (data set of 8 leaves)."""
    data = RFC6962_DATA
    assert root_from_leaf_hashes([]) == EMPTY_ROOT == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert root_from_leaf_hashes([leaf_hash(x) for x in data]) == bytes.fromhex(
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
    assert root_from_leaf_hashes([leaf_hash(data[0])]) == bytes.fromhex(
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")


# --- cross-checks against the reference ----------------------------------------------------------


def _sizes() -> list[int]:
    rnd = random.Random(7)
    return list(range(1, 71)) + [rnd.randrange(71, 3000) for _ in range(6)] + [1024, 1025, 4095]


@pytest.mark.parametrize("n", _sizes())
def test_roots_and_proofs_agree_with_reference(n: int) -> None:
    data = leaves(n, seed=n)
    hashes = [leaf_hash(x) for x in data]
    store = NodeStore(data)
    root = ref_mth(data)
    assert root_from_leaf_hashes(hashes) == root
    assert root_from_nodes(n, store) == root
    levels = merkle.tree_levels(hashes)
    assert levels[0] == hashes and levels[-1] == [root]
    paths = merkle.inclusion_paths(levels)
    rnd = random.Random(n)
    indexes = range(n) if n <= 70 else sorted({0, n - 1, *(rnd.randrange(n) for _ in range(8))})
    for m in indexes:
        store.calls.clear()
        proof = inclusion_proof(m, n, store)
        assert len(store.calls) == (n > 1) and sum(map(len, store.calls)) <= 2 * n.bit_length()
        assert proof == ref_path(m, data) == list(paths[m])
        verify_inclusion(hashes[m], m, n, proof, root)
        assert len(inclusion_node_ids(m, n)) == sum(map(len, store.calls))
    for m in indexes:
        size1 = m + 1
        store.calls.clear()
        proof = consistency_proof(size1, n, store)
        assert len(store.calls) <= 1
        assert proof == ref_proof(size1, data)
        verify_consistency(size1, n, proof, ref_mth(data[:size1]), root)
        assert len(consistency_node_ids(size1, n)) == sum(len(c) for c in store.calls)


def test_compact_range_matches_reference_and_reports_every_node() -> None:
    data = leaves(300, seed=3)
    store = NodeStore(data)
    rng = CompactRange()
    assert rng.root() == EMPTY_ROOT and rng.size == 0
    persisted: dict[NodeID, bytes] = {}
    for i, x in enumerate(data):
        for node, h in rng.append(leaf_hash(x)):
            assert node not in persisted, "a perfect node is completed only once"
            persisted[node] = h
        assert rng.size == i + 1
        assert rng.root() == ref_mth(data[: i + 1])
        assert dict(rng.border_nodes()) == {n: store.nodes[n] for n in merkle.root_node_ids(i + 1)}
        if i % 37 == 0:  # rebuilding from the store gives the same range, and it keeps going
            again = CompactRange.from_nodes(i + 1, store)
            assert again.root() == rng.root() and again.border_nodes() == rng.border_nodes()
    assert persisted == store.nodes


def test_compact_range_extend_equals_appending_one_by_one() -> None:
    """``extend`` completes exactly the nodes above the leaves that ``append`` reports, for runs of
    every shape (empty, one leaf, odd and even starts, runs that cross several powers of two)."""
    rnd = random.Random(11)
    data = leaves(700, seed=13)
    store = NodeStore(data)
    one, many = CompactRange(), CompactRange()
    start = 0
    for n in [0, 1, 1, 2, 3, 0, 5, 7, 8, 16, 31, 33, 64, 1, 127, *[rnd.randint(0, 40) for _ in range(12)]]:
        hashes = [leaf_hash(x) for x in data[start:start + n]]
        expected = [node for h in hashes for node in one.append(h) if node[0][0] > 0]
        got = many.extend(hashes)
        assert sorted(got) == sorted(expected)
        assert all(store.nodes[node] == h for node, h in got)
        start += n
        assert many.size == one.size == start
        assert many.root() == ref_mth(data[:start]) and many.border_nodes() == one.border_nodes()
    with pytest.raises(ValueError):
        CompactRange().extend([bytes(32), b"short"])


def test_compact_range_from_nodes_continues_identically() -> None:
    data = leaves(100, seed=5)
    store = NodeStore(data[:45])
    rng = CompactRange.from_nodes(45, store)
    for x in data[45:]:
        rng.append(leaf_hash(x))
    assert rng.root() == ref_mth(data)
    assert CompactRange.from_nodes(0, store).root() == EMPTY_ROOT


# --- edge cases and bad input -------------------------------------------------------------------


def test_out_of_range_parameters_raise_value_error() -> None:
    store = NodeStore(leaves(5))
    for bad in [(0, 0), (5, 5), (-1, 5), (6, 5)]:
        with pytest.raises(ValueError):
            inclusion_proof(*bad, store)
    for bad in [(0, 5), (6, 5), (0, 0), (-1, 3)]:
        with pytest.raises(ValueError):
            consistency_proof(*bad, store)
    with pytest.raises(ValueError):
        merkle.root_node_ids(-1)
    with pytest.raises(ValueError):
        CompactRange().append(b"short")


def test_equal_sizes_and_single_leaf() -> None:
    data = leaves(9)
    store = NodeStore(data)
    assert consistency_proof(9, 9, store) == []
    assert store.calls == []
    root = ref_mth(data)
    verify_consistency(9, 9, [], root, root)
    with pytest.raises(ProofError):
        verify_consistency(9, 9, [], root, EMPTY_ROOT)
    one = NodeStore(data[:1])
    assert inclusion_proof(0, 1, one) == []
    verify_inclusion(leaf_hash(data[0]), 0, 1, [], leaf_hash(data[0]))


def test_missing_or_corrupt_store_nodes_are_reported() -> None:
    store = NodeStore(leaves(13))
    del store.nodes[(3, 0)]
    with pytest.raises(MissingNodeError):
        inclusion_proof(12, 13, store)
    with pytest.raises(MissingNodeError):
        CompactRange.from_nodes(13, store)
    store.nodes[(3, 0)] = b"\x00" * 31
    with pytest.raises(MissingNodeError):
        root_from_nodes(13, store)


def test_tampered_proofs_are_rejected() -> None:
    data = leaves(21, seed=9)
    store = NodeStore(data)
    root = ref_mth(data)
    proof = inclusion_proof(6, 21, store)
    h = leaf_hash(data[6])
    for bad in ([*proof[:-1]], [*proof, proof[0]], [proof[0][:31], *proof[1:]],
                [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]):
        with pytest.raises(ProofError):
            verify_inclusion(h, 6, 21, bad, root)
    with pytest.raises(ProofError):
        verify_inclusion(h, 7, 21, proof, root)
    cproof = consistency_proof(6, 21, store)
    root6 = ref_mth(data[:6])
    verify_consistency(6, 21, cproof, root6, root)
    # (A proof does not pin size2 by itself when a neighbouring size has the same proof shape:
    # the checkpoint signature binds size and root together.)
    for size1, r1, r2 in [(6, root, root), (6, root6, root6), (7, root6, root)]:
        with pytest.raises(ProofError):
            verify_consistency(size1, 21, cproof, r1, r2)
    with pytest.raises(ProofError):
        verify_consistency(6, 21, [], root6, root)
