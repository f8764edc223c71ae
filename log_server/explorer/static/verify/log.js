// What the explorer proves about what it shows, as pure functions over a *trusted* checkpoint
// {size, root} (one whose note verified with the pinned key, spec/explorer.md §3) and the bytes
// and hashes a server sent. Nothing here fetches or draws, so a page that embeds its evidence (a
// forensic report) can run the same checks.

import { equal, fromHex, toHex } from "./bytes.js";
import { leafHash, pathFromLevels, ProofError, treeLevels, verifyConsistency, verifyInclusion } from "./merkle.js";

const EMPTY_ROOT = fromHex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "empty root", 32);

/** Leaf `index` of the checkpoint's tree holds exactly `leafBytes`; returns its leaf hash. */
export async function proveLeaf(leafBytes, index, checkpoint, proof) {
  const h = await leafHash(leafBytes);
  await verifyInclusion(h, index, checkpoint.size, proof, checkpoint.root);
  return h;
}

/** The leaves of one entry bundle, `first` .. `first + leaves.length - 1`, are exactly these bytes
 * in the checkpoint's tree. `proofOfFirst` is the server's RFC 9162 inclusion proof of leaf
 * `first`; its first hashes must be the bundle's own inner path, which is computed here from the
 * leaves (a bundle of the checkpoint's tree is one subtree of it, spec/explorer.md §3.3). Then one
 * RFC 9162 verification covers every leaf. Returns the leaf hashes. */
export async function proveBundle(leaves, first, checkpoint, proofOfFirst) {
  if (first % 256 !== 0 || first + leaves.length > checkpoint.size) {
    throw new ProofError(`leaves ${first}..${first + leaves.length - 1} are not one entry bundle of a tree of ${checkpoint.size}`);
  }
  if (leaves.length !== Math.min(256, checkpoint.size - first)) {
    throw new ProofError(`the bundle at leaf ${first} must hold ${Math.min(256, checkpoint.size - first)} leaves, got ${leaves.length}`);
  }
  const hashes = await Promise.all(leaves.map((l) => leafHash(l)));
  const levels = await treeLevels(hashes);
  const inner = pathFromLevels(levels, 0);
  if (proofOfFirst.length < inner.length || inner.some((h, k) => !equal(h, proofOfFirst[k]))) {
    throw new ProofError(`the inclusion proof of leaf ${first} does not start with the bundle's own hashes`);
  }
  await verifyInclusion(hashes[0], first, checkpoint.size, proofOfFirst, checkpoint.root);
  return hashes;
}

/** How a newly verified checkpoint relates to the largest one this reader trusted before:
 * "first" (none before), "same", "extends" (proof checked), or throws ProofError for a rollback,
 * a fork at the same size, or a consistency proof that does not verify. */
export async function checkAgainstSeen(previous, checkpoint, proof) {
  if (!previous) return "first";
  if (previous.size > checkpoint.size) {
    throw new ProofError(`rollback: the log now serves size ${checkpoint.size}, but this browser verified size ${previous.size} before`);
  }
  if (previous.size === checkpoint.size) {
    if (!equal(previous.root, checkpoint.root)) {
      throw new ProofError(`fork: two signed checkpoints of size ${checkpoint.size} with different roots (${toHex(previous.root)} and ${toHex(checkpoint.root)})`);
    }
    return "same";
  }
  if (previous.size === 0) {
    // Every tree extends the empty one; there is no proof from size 0 (spec/tlog.md §2).
    if (!equal(previous.root, EMPTY_ROOT)) throw new ProofError("a signed checkpoint of size 0 had a root other than SHA-256(\"\")");
    return "extends";
  }
  await verifyConsistency(previous.size, checkpoint.size, proof, previous.root, checkpoint.root);
  return "extends";
}
