"""RFC 9162 §2.1 Merkle tree hashing, proofs and an incremental tree, over SHA-256.

Pure functions over bytes: no I/O. Storage is abstracted as ``get_nodes``, a callable that
returns the stored hashes of *perfect* subtrees, so a proof at any tree size costs one batched
read of O(log n) nodes (see spec/tlog.md, "Node storage model").

A ``NodeID`` is ``(level, index)``: the perfect subtree of 2**level leaves covering
``[index * 2**level, (index + 1) * 2**level)``; level 0 nodes are leaf hashes. Only complete
subtrees are ever stored, so a stored node never changes as the log grows. Subtrees on the right
border of a tree that are not yet complete are rehashed from the perfect nodes they consist of.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

NodeID = tuple[int, int]
GetNodes = Callable[[list[NodeID]], Mapping[NodeID, bytes]]


class ProofError(ValueError):
    """A proof, root or tree size failed verification."""


class MissingNodeError(LookupError):
    """The node store did not return a node that a complete tree of that size must have."""


def leaf_hash(data: bytes) -> bytes:
    """MTH of a one-leaf tree: SHA-256(0x00 || data). The prefix keeps leaves and nodes apart."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def tree_levels(hashes: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree over a non-empty list of leaf hashes, leaves first, root last: an
    unpaired last node moves up unchanged, which gives the same tree as RFC 9162's split at the
    largest power of two below n."""
    levels = [list(hashes)]
    while len(level := levels[-1]) > 1:
        up = _parents(level)
        if len(level) % 2:
            up.append(level[-1])
        levels.append(up)
    return levels


def _parents(level: Sequence[bytes]) -> list[bytes]:
    """The node hash of each pair (0, 1), (2, 3), ... of ``level``; an unpaired last node is left
    out. One comprehension over hashlib, without a call of `node_hash` per node: this is the inner
    loop of batch verification and of every commit's tree extension."""
    sha256, prefix = hashlib.sha256, _NODE_PREFIX
    return [sha256(prefix + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]


def inclusion_paths(levels: list[list[bytes]]) -> list[tuple[bytes, ...]]:
    """The RFC 9162 inclusion proof of every leaf of the tree ``tree_levels`` gave, in leaf order:
    the siblings that exist, bottom first (a promoted last node has none at its level). Built top
    down, one short tuple per node: the path of a node is its sibling followed by its parent's path."""
    paths: list[tuple[bytes, ...]] = [()]
    for level in reversed(levels[:-1]):
        width = len(level)
        paths = [((level[j ^ 1],) if j ^ 1 < width else ()) + paths[j >> 1] for j in range(width)]
    return paths


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of a whole list of leaf hashes."""
    return tree_levels(hashes)[-1][0] if hashes else EMPTY_ROOT


# --- which perfect nodes a tree, a proof or a compact range consists of --------------------------


def _range_node_ids(start: int, end: int) -> list[NodeID]:
    """Perfect nodes, left to right, that make up the right-border subtree [start, end).

    ``start`` is aligned to a power of two larger than ``end - start`` (true for every
    right-border subtree), so the range splits by the binary digits of its length, high first.
    """
    ids: list[NodeID] = []
    pos, length = start, end - start
    for level in range(length.bit_length() - 1, -1, -1):
        if length >> level & 1:
            ids.append((level, pos >> level))
            pos += 1 << level
    return ids


def root_node_ids(size: int) -> list[NodeID]:
    """The perfect nodes, left to right (decreasing level), whose right fold is MTH(D[size])."""
    if size < 0:
        raise ValueError(f"tree size must not be negative, got {size}")
    return _range_node_ids(0, size)


def _path_groups(level: int, index: int, size: int) -> list[list[NodeID]]:
    """Siblings on the path from node (level, index) up to the root of a tree of ``size`` leaves,
    bottom first. Each group of perfect nodes folds (right to left) into one proof hash; a group
    has more than one node only for a right sibling that is not complete yet."""
    groups: list[list[NodeID]] = []
    while True:
        width = (size + (1 << level) - 1) >> level  # nodes at this level, incomplete one included
        if width <= 1:
            return groups
        sibling = index ^ 1
        if sibling < width:
            start = sibling << level
            end = min(start + (1 << level), size)
            groups.append([(level, sibling)] if end - start == 1 << level else _range_node_ids(start, end))
        level, index = level + 1, index >> 1


def _inclusion_groups(index: int, size: int) -> list[list[NodeID]]:
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is out of range for tree size {size}")
    return _path_groups(0, index, size)


def _consistency_groups(size1: int, size2: int) -> list[list[NodeID]]:
    """SUBPROOF(size1, D[size2], true) of RFC 9162 §2.1.4.1 as groups of perfect nodes.

    The last perfect subtree of the old tree (level = trailing zeros of size1) is complete in both
    trees; the proof is its hash (omitted when it is the whole old tree) and then its path."""
    if size1 <= 0:
        raise ValueError(f"a consistency proof needs 0 < size1, got size1={size1}")
    if size1 > size2:
        raise ValueError(f"size1 ({size1}) must not exceed size2 ({size2})")
    if size1 == size2:
        return []
    level = (size1 & -size1).bit_length() - 1
    index = (size1 - 1) >> level
    groups = _path_groups(level, index, size2)
    if size1 != 1 << level:
        groups.insert(0, [(level, index)])
    return groups


def _flatten(groups: list[list[NodeID]]) -> list[NodeID]:
    return [node for group in groups for node in group]


def inclusion_node_ids(index: int, size: int) -> list[NodeID]:
    """Every stored node an inclusion proof for leaf ``index`` in a tree of ``size`` needs."""
    return _flatten(_inclusion_groups(index, size))


def consistency_node_ids(size1: int, size2: int) -> list[NodeID]:
    """Every stored node a consistency proof from ``size1`` to ``size2`` needs."""
    return _flatten(_consistency_groups(size1, size2))


def _fetch(get_nodes: GetNodes, ids: list[NodeID]) -> dict[NodeID, bytes]:
    """One batched read; every requested node must come back as a 32-byte hash."""
    if not ids:
        return {}
    got = get_nodes(list(ids))
    out: dict[NodeID, bytes] = {}
    for node in ids:
        value = got.get(node)
        if value is None:
            raise MissingNodeError(f"node store has no hash for node {node}")
        if len(value) != HASH_SIZE:
            raise MissingNodeError(f"node store returned {len(value)} bytes for node {node}")
        out[node] = bytes(value)
    return out


def _fold_right(hashes: Sequence[bytes]) -> bytes:
    """Hash of a right-border subtree from its perfect parts, left to right."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def _proof_from_groups(groups: list[list[NodeID]], get_nodes: GetNodes) -> list[bytes]:
    nodes = _fetch(get_nodes, _flatten(groups))
    return [_fold_right([nodes[n] for n in group]) for group in groups]


def inclusion_proof(index: int, size: int, get_nodes: GetNodes) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, bottom first, from one ``get_nodes`` call."""
    return _proof_from_groups(_inclusion_groups(index, size), get_nodes)


def consistency_proof(size1: int, size2: int, get_nodes: GetNodes) -> list[bytes]:
    """PROOF(size1, D[size2]) of RFC 9162 §2.1.4.1, from one ``get_nodes`` call."""
    return _proof_from_groups(_consistency_groups(size1, size2), get_nodes)


def root_from_nodes(size: int, get_nodes: GetNodes) -> bytes:
    """MTH(D[size]) from the stored perfect nodes (at most log2(size) + 1 of them)."""
    ids = root_node_ids(size)
    if not ids:
        return EMPTY_ROOT
    nodes = _fetch(get_nodes, ids)
    return _fold_right([nodes[n] for n in ids])


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) --------------------------------------------


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{name} must be {HASH_SIZE} bytes, got {len(value)}")


def _decompose(index: int, size: int) -> tuple[int, int]:
    """Proof length split where the paths to ``index`` and ``size - 1`` meet: (inner, border)."""
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    return inner, border


def inclusion_proof_length(index: int, size: int) -> int:
    """How many hashes RFC 9162's inclusion proof of leaf ``index`` in a tree of ``size`` has."""
    return sum(_decompose(index, size))


def _match(calculated: bytes, expected: bytes, what: str) -> None:
    if calculated != expected:
        raise ProofError(f"{what}: calculated root {calculated.hex()} does not match {expected.hex()}")


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` implies for leaf hash ``leaf`` at ``index`` in a tree of ``size``."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is out of range for tree size {size}")
    _check_hash("leaf hash", leaf)
    inner, border = _decompose(index, size)
    if len(proof) != inner + border:
        raise ProofError(f"inclusion proof has {len(proof)} hashes, want {inner + border}")
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            _check_hash(f"proof[{i}]", h)
    acc = leaf
    for i, h in enumerate(proof[:inner]):
        acc = node_hash(h, acc) if index >> i & 1 else node_hash(acc, h)
    for h in proof[inner:]:
        acc = node_hash(h, acc)
    return acc


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless ``proof`` shows leaf ``index`` of tree (size, root) is ``leaf_hash``."""
    _match(root_from_inclusion_proof(leaf_hash, index, size, proof), root, "inclusion proof")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Raise ProofError unless ``proof`` shows tree (size2, root2) extends tree (size1, root1).

    A proof from size 0 is rejected: every tree extends the empty tree, so there is nothing to
    prove and a caller must not treat such a "proof" as evidence (it checks root1 == EMPTY_ROOT
    itself). This matches the transparency-dev/merkle vectors (spec/vectors/tlog/rfc9162-proofs).
    """
    if size1 < 0 or size2 < size1:
        raise ProofError(f"sizes must satisfy 0 <= size1 <= size2, got {size1}, {size2}")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise ProofError("sizes are equal, so the proof must be empty")
        _match(root1, root2, "consistency proof between equal sizes")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    for i, h in enumerate(proof):
        _check_hash(f"proof[{i}]", h)
    inner, border = _decompose(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift
    # The proof starts with the hash of the old tree's last perfect subtree, unless that subtree
    # is the whole old tree, whose root the verifier already has.
    if size1 == 1 << shift:
        seed, rest = root1, list(proof)
    else:
        seed, rest = proof[0], list(proof[1:])
    if len(rest) != inner + border:
        raise ProofError(f"consistency proof has {len(proof)} hashes, want {len(proof) - len(rest) + inner + border}")
    mask = (size1 - 1) >> shift
    old, new = seed, seed
    for i, h in enumerate(rest[:inner]):
        if mask >> i & 1:
            old = node_hash(h, old)
            new = node_hash(h, new)
        else:
            new = node_hash(new, h)
    for h in rest[inner:]:
        old = node_hash(h, old)
        new = node_hash(h, new)
    _match(old, root1, "consistency proof (old tree)")
    _match(new, root2, "consistency proof (new tree)")


# --- incremental tree for the sequencer ----------------------------------------------------------


class CompactRange:
    """The right border of the tree [0, size): one perfect node per set bit of ``size``.

    Appending a leaf completes zero or more perfect nodes, which ``append`` returns so the store can
    persist them; the root is the right fold of the border. O(log n) memory and work per append.
    """

    def __init__(self) -> None:
        self._size = 0
        self._border: list[tuple[int, bytes]] = []  # (level, hash), levels strictly decreasing

    @property
    def size(self) -> int:
        return self._size

    @classmethod
    def from_nodes(cls, size: int, get_nodes: GetNodes) -> CompactRange:
        """Rebuild from the stored border nodes of a tree of ``size`` leaves (one batched read)."""
        ids = root_node_ids(size)
        nodes = _fetch(get_nodes, ids)
        rng = cls()
        rng._size = size
        rng._border = [(level, nodes[(level, index)]) for level, index in ids]
        return rng

    def append(self, leaf: bytes) -> list[tuple[NodeID, bytes]]:
        """Add one leaf hash; return every perfect node this completes, the leaf itself first."""
        index = self._size
        return [((0, index), bytes(leaf)), *self.extend([leaf])]

    def extend(self, leaves: Sequence[bytes]) -> list[tuple[NodeID, bytes]]:
        """Add leaf hashes in order; return every perfect node above the leaves that this completes.

        One level at a time: the new nodes of a level form one run of consecutive indices; an odd
        first index pairs with the border node at that level (all old leaves), an unpaired last
        node becomes the new border node of its level, and the pairs make the next level's run.
        Why not ``append`` per leaf: the same hashes, without a Python loop step per leaf and level
        (the sequencer extends by a few thousand leaves per commit on its serial path)."""
        run = [bytes(h) for h in leaves]
        if any(len(h) != HASH_SIZE for h in run):
            raise ValueError(f"leaf hashes must be {HASH_SIZE} bytes")
        old = dict(self._border)
        kept: list[tuple[int, bytes]] = []  # new border nodes, lowest level first
        done: list[tuple[NodeID, bytes]] = []
        level, start = 0, self._size
        while run:
            if start & 1:
                run.insert(0, old.pop(level))
                start -= 1
            if len(run) & 1:
                kept.append((level, run.pop()))
            run = _parents(run)
            level, start = level + 1, start >> 1
            done += [((level, start + i), h) for i, h in enumerate(run)]
        self._border = sorted([*old.items(), *kept], reverse=True)
        self._size += len(leaves)
        return done

    def root(self) -> bytes:
        """MTH(D[size]); EMPTY_ROOT for the empty tree."""
        if not self._border:
            return EMPTY_ROOT
        return _fold_right([h for _, h in self._border])

    def border_nodes(self) -> list[tuple[NodeID, bytes]]:
        """The perfect nodes of the border, left to right (what ``from_nodes`` reads back)."""
        return [(node, h) for node, (_, h) in zip(root_node_ids(self._size), self._border, strict=True)]
