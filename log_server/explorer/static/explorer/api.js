// The log's public read API (spec/api.md, spec/tiles.md), fetched with a size bound on every
// answer. Nothing a server sends is trusted here: callers verify it (../verify/). The page is
// served at <prefix>/explore/, so the API is one level up, under whatever prefix a proxy adds.

import { concat, fromBase64 } from "../verify/bytes.js";
import { bundle, decodeBundle } from "../verify/tiles.js";

const BASE = new URL("../", document.baseURI);

export const LIMITS = {
  checkpoint: 256 * 1024, // MAX_NOTE_SIZE
  json: 8 * 1024 * 1024,
  bundle: 256 * (2 + 65535),
  sideRecord: 1 << 20,
};

export class FetchError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

async function readLimited(response, limit, what) {
  const declared = Number(response.headers.get("Content-Length"));
  if (declared > limit) throw new FetchError(`${what}: the answer is ${declared} bytes, over the ${limit}-byte limit`);
  const reader = response.body.getReader();
  const chunks = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > limit) {
      await reader.cancel();
      throw new FetchError(`${what}: the answer is over the ${limit}-byte limit`);
    }
    chunks.push(value);
  }
  return concat(...chunks);
}

/** The bytes at `path` (relative to the log's base URL); non-2xx answers are FetchErrors that
 * carry the server's one-line error detail. */
export async function getBytes(path, limit, { fresh = false } = {}) {
  const url = new URL(path, BASE);
  let response;
  try {
    // Default credentials mode on purpose: "omit" would open a second pool of connections beside the
    // page's own, and a log served by Granian with N threads stalls ~30 s once N keep-alive
    // connections are open (measured; see spec/notes/explorer.md). The log sets no cookies.
    response = await fetch(url, { cache: fresh ? "no-store" : "default", redirect: "error" });
  } catch (e) {
    throw new FetchError(`GET ${url.pathname}${url.search}: ${e.message || "network error"}`);
  }
  const body = await readLimited(response, limit, `GET ${url.pathname}`);
  if (!response.ok) {
    let detail = "";
    try {
      detail = JSON.parse(new TextDecoder().decode(body)).detail || "";
    } catch {
      /* not our JSON error shape */
    }
    throw new FetchError(`GET ${url.pathname}${url.search}: ${response.status}${detail ? ` — ${detail}` : ""}`, response.status);
  }
  return body;
}

export async function getJSON(path) {
  const body = await getBytes(path, LIMITS.json);
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch {
    throw new FetchError(`GET ${path}: the answer is not JSON`);
  }
}

export function getCheckpoint() {
  return getBytes("checkpoint", LIMITS.checkpoint, { fresh: true });
}

function hashes(list, what) {
  if (!Array.isArray(list)) throw new FetchError(`${what}: no list of hashes`);
  return list.map((h, k) => fromBase64(h, `${what} hash ${k}`));
}

export async function inclusionProof(index, treeSize) {
  const j = await getJSON(`v1/proof/inclusion?index=${index}&tree_size=${treeSize}`);
  return { hashes: hashes(j.hashes, "inclusion proof"), leafHash: typeof j.leaf_hash === "string" ? fromBase64(j.leaf_hash, "leaf hash") : null };
}

export async function consistencyProof(first, second) {
  if (first === second) return [];
  const j = await getJSON(`v1/proof/consistency?first=${first}&second=${second}`);
  return hashes(j.hashes, "consistency proof");
}

/** The leaf at `index`, from the paged entries API. */
export async function leaf(index) {
  const j = await getJSON(`v1/entries?start=${index}&end=${index + 1}`);
  const e = Array.isArray(j.entries) ? j.entries[0] : null;
  if (!e || e.index !== index || typeof e.leaf !== "string") throw new FetchError(`GET v1/entries: no leaf ${index} in the answer`);
  return fromBase64(e.leaf, `leaf ${index}`);
}

/** Entry bundle `tile` as the tree of `treeSize` leaves determines it: {first, leaves}. */
export async function entryBundle(tile, treeSize) {
  const b = bundle(tile, treeSize);
  const data = await getBytes(b.path, LIMITS.bundle);
  return { first: b.first, leaves: decodeBundle(data, b.width, b.path) };
}

export async function issuers() {
  const j = await getJSON("v1/issuers");
  if (!Array.isArray(j.issuers)) throw new FetchError("GET v1/issuers: no issuer list");
  return j.issuers;
}

/** Look-up by an indexed field (spec/api.md §2.5): {hits: [{index, leaf}], truncated}. */
export async function lookUp(field, value) {
  const j = await getJSON(`v1/issuances?${field}=${encodeURIComponent(value)}`);
  if (!Array.isArray(j.issuances)) throw new FetchError("GET v1/issuances: no result list");
  const hits = j.issuances.map((r) => {
    if (!Number.isSafeInteger(r.index) || typeof r.leaf !== "string") throw new FetchError("GET v1/issuances: a malformed hit");
    return { index: r.index, leaf: fromBase64(r.leaf, `leaf ${r.index}`) };
  });
  return { hits, truncated: j.truncated === true };
}

/** The side record of entry `index`, or null when none is published (404). */
export async function sideRecord(index) {
  try {
    return await getBytes(`v1/entries/${index}/side-record`, LIMITS.sideRecord);
  } catch (e) {
    if (e instanceof FetchError && e.status === 404) return null;
    throw e;
  }
}
