// Consistency between two tree sizes (spec/explorer.md §3.6): each size's root is either one this
// browser verified in a signed checkpoint, or derived from the server's proofs and then bound to
// the trusted checkpoint by a consistency proof; then the RFC 9162 proof between the two is checked.

import { toHex } from "../../verify/bytes.js";
import { rootFromInclusionProof, verifyConsistency } from "../../verify/merkle.js";
import * as api from "../api.js";
import * as store from "../store.js";
import { $, check, code, el, replace, settle } from "../ui.js";

export async function renderConsistencyForm(session) {
  const v = await session.verdict;
  const seen = session.pins.log ? store.seen(session.pins.log) : [];
  const latest = v.checkpoint?.size ?? "";
  const earlier = seen.filter((c) => c.size < latest && c.size > 0);
  if (!$("#consistency-first").value) $("#consistency-first").value = earlier.length ? earlier[earlier.length - 1].size : latest ? 1 : "";
  if (!$("#consistency-second").value) $("#consistency-second").value = latest;
}

/** The root of size `s` and how it is known; throws unless it is bound to the trusted checkpoint. */
async function rootOf(session, cp, s) {
  if (s === cp.size) return { root: cp.root, how: "the latest checkpoint (signed)" };
  const known = store.seen(session.pins.log).find((c) => c.size === s);
  if (known) return { root: known.root, how: `a signed checkpoint this browser verified at ${known.seenAt}` };
  const { hashes, leafHash } = await api.inclusionProof(s - 1, s);
  if (!leafHash) throw new Error(`the server gave no leaf hash for leaf ${s - 1}`);
  const root = await rootFromInclusionProof(leafHash, s - 1, s, hashes);
  await verifyConsistency(s, cp.size, await api.consistencyProof(s, cp.size), root, cp.root);
  return { root, how: `derived from the server's proofs, bound to the latest checkpoint by the consistency proof ${s} → ${cp.size}` };
}

export async function renderConsistency(session, first, second) {
  const body = $("#consistency-body");
  const c = check("consistency-proof");
  const detail = el("div");
  replace(body, el("div", { class: "checks" }, c), detail);
  await settle(c, async () => {
    const cp = await session.trusted();
    if (!(Number.isSafeInteger(first) && Number.isSafeInteger(second) && 1 <= first && first <= second && second <= cp.size)) {
      throw new Error(`need 1 ≤ first ≤ second ≤ ${cp.size} (there is no proof from size 0)`);
    }
    const [a, b] = await Promise.all([rootOf(session, cp, first), rootOf(session, cp, second)]);
    const proof = await api.consistencyProof(first, second);
    replace(detail, el("dl", { class: "fields" },
      el("dt", {}, `root at ${first}`), el("dd", {}, code(toHex(a.root)), ` — ${a.how}`),
      el("dt", {}, `root at ${second}`), el("dd", {}, code(toHex(b.root)), ` — ${b.how}`)),
    el("h3", {}, `RFC 9162 consistency proof ${first} → ${second}`),
    proof.length ? el("ol", { id: "consistency-hashes", start: 0 }, proof.map((h) => el("li", {}, code(toHex(h)))))
      : el("p", { class: "note" }, "(empty: the sizes are equal)"));
    await verifyConsistency(first, second, proof, a.root, b.root);
    return `the tree of size ${second} extends the tree of size ${first}`;
  });
}
