// RFC 9162 §2.1 Merkle tree hashing and proof verification (spec/tlog.md §1–2), computed in the
// browser with WebCrypto's SHA-256. A port of emshield/tlog/merkle.py's verifiers: the same
// decomposition of a path into "inner" and "border" parts, the same rejections (wrong length,
// hashes that are not 32 bytes, index out of range, any proof from size 0), checked against the
// transparency-dev vectors by tests/log_server/test_explorer_vectors.py.

import { concat, equal, toHex } from "./bytes.js";
import { sha256 } from "./webcrypto.js";

export const HASH_SIZE = 32;

export class ProofError extends Error {}

const LEAF = new Uint8Array([0]);
const NODE = new Uint8Array([1]);

export function leafHash(data) {
  return sha256(concat(LEAF, data));
}

export function nodeHash(left, right) {
  return sha256(concat(NODE, left, right));
}

function big(n, what) {
  if (typeof n === "bigint") return n;
  if (!Number.isSafeInteger(n)) throw new ProofError(`${what} must be an integer, got ${n}`);
  return BigInt(n);
}

function bitLength(n) {
  return n === 0n ? 0 : n.toString(2).length;
}

function popcount(n) {
  let c = 0;
  for (const d of n.toString(2)) if (d === "1") c++;
  return c;
}

/** Where the paths to `index` and `size - 1` meet: [inner, border] proof lengths. */
function decompose(index, size) {
  const inner = bitLength(index ^ (size - 1n));
  return [inner, popcount(index >> BigInt(inner))];
}

export function inclusionProofLength(index, size) {
  const [inner, border] = decompose(big(index, "index"), big(size, "size"));
  return inner + border;
}

function checkHash(h, what) {
  if (!(h instanceof Uint8Array) || h.length !== HASH_SIZE) {
    throw new ProofError(`${what} must be ${HASH_SIZE} bytes, got ${h?.length}`);
  }
}

/** The root `proof` implies for leaf hash `leaf` at `index` in a tree of `size` leaves. */
export async function rootFromInclusionProof(leaf, index, size, proof) {
  const i = big(index, "index");
  const n = big(size, "size");
  if (i < 0n || i >= n) throw new ProofError(`leaf index ${index} is out of range for tree size ${size}`);
  checkHash(leaf, "leaf hash");
  const [inner, border] = decompose(i, n);
  if (proof.length !== inner + border) {
    throw new ProofError(`inclusion proof has ${proof.length} hashes, want ${inner + border}`);
  }
  proof.forEach((h, k) => checkHash(h, `proof[${k}]`));
  let acc = leaf;
  for (let k = 0; k < inner; k++) {
    acc = (i >> BigInt(k)) & 1n ? await nodeHash(proof[k], acc) : await nodeHash(acc, proof[k]);
  }
  for (let k = inner; k < proof.length; k++) acc = await nodeHash(proof[k], acc);
  return acc;
}

function match(calculated, expected, what) {
  if (!(expected instanceof Uint8Array) || !equal(calculated, expected)) {
    throw new ProofError(`${what}: calculated root ${toHex(calculated)} does not match ${expected ? toHex(expected) : expected}`);
  }
}

/** Throws ProofError unless `proof` shows that leaf `index` of the tree (size, root) is `leaf`. */
export async function verifyInclusion(leaf, index, size, proof, root) {
  match(await rootFromInclusionProof(leaf, index, size, proof), root, "inclusion proof");
}

/** Throws ProofError unless `proof` shows that tree (size2, root2) extends tree (size1, root1).
 * A proof from size 0 is always rejected: every tree extends the empty tree (spec/tlog.md §2). */
export async function verifyConsistency(size1, size2, proof, root1, root2) {
  const m = big(size1, "size1");
  const n = big(size2, "size2");
  if (m < 0n || n < m) throw new ProofError(`sizes must satisfy 0 <= size1 <= size2, got ${size1}, ${size2}`);
  if (m === 0n) throw new ProofError("a consistency proof from the empty tree proves nothing");
  if (m === n) {
    if (proof.length) throw new ProofError("sizes are equal, so the proof must be empty");
    match(root1, root2, "consistency proof between equal sizes");
    return;
  }
  if (!proof.length) throw new ProofError("consistency proof is empty");
  proof.forEach((h, k) => checkHash(h, `proof[${k}]`));
  let [inner, border] = decompose(m - 1n, n);
  const shift = bitLength(m & -m) - 1;
  inner -= shift;
  // The proof starts with the hash of the old tree's last perfect subtree, unless that subtree is
  // the whole old tree, whose root the verifier already has.
  const whole = m === 1n << BigInt(shift);
  const seed = whole ? root1 : proof[0];
  const rest = whole ? proof : proof.slice(1);
  if (whole) checkHash(root1, "root1");
  if (rest.length !== inner + border) {
    throw new ProofError(`consistency proof has ${proof.length} hashes, want ${proof.length - rest.length + inner + border}`);
  }
  const mask = (m - 1n) >> BigInt(shift);
  let old = seed;
  let now = seed;
  for (let k = 0; k < inner; k++) {
    if ((mask >> BigInt(k)) & 1n) {
      old = await nodeHash(rest[k], old);
      now = await nodeHash(rest[k], now);
    } else {
      now = await nodeHash(now, rest[k]);
    }
  }
  for (let k = inner; k < rest.length; k++) {
    old = await nodeHash(rest[k], old);
    now = await nodeHash(rest[k], now);
  }
  match(old, root1, "consistency proof (old tree)");
  match(now, root2, "consistency proof (new tree)");
}

/** Every level of the tree over `leaves` (leaf hashes), bottom first; an odd last node moves up
 * unchanged, which gives RFC 9162's tree (spec/tlog.md §1). For small trees: one tile's leaves. */
export async function treeLevels(leaves) {
  if (!leaves.length) throw new ProofError("a tree needs at least one leaf");
  const levels = [leaves];
  while (levels[levels.length - 1].length > 1) {
    const below = levels[levels.length - 1];
    const pairs = [];
    for (let j = 0; j + 1 < below.length; j += 2) pairs.push(nodeHash(below[j], below[j + 1]));
    const up = await Promise.all(pairs);
    if (below.length % 2) up.push(below[below.length - 1]);
    levels.push(up);
  }
  return levels;
}

/** RFC 9162 PATH(j, D[n]) read off `treeLevels`: the siblings that exist, bottom first. */
export function pathFromLevels(levels, j) {
  const path = [];
  for (let level = 0; level < levels.length - 1; level++, j >>= 1) {
    const sibling = j ^ 1;
    if (sibling < levels[level].length) path.push(levels[level][sibling]);
  }
  return path;
}
