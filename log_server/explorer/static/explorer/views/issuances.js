// Issuances: browsing the log one entry bundle at a time over the tile API, searching the log's
// index by device UUID, commitment or fingerprint hash, and scanning bundles for one issuer
// (spec/explorer.md §3.3–3.4). Every row's inclusion is verified; search hits are also checked
// against the query and against their issuer's proved registration key.

import { equal, fromHex, toHex, uuidText } from "../../verify/bytes.js";
import { ISSUANCE, REGISTRATION, verifyEntrySignature } from "../../verify/entry.js";
import { proveBundle } from "../../verify/log.js";
import { TILE_WIDTH } from "../../verify/tiles.js";
import * as api from "../api.js";
import { $, check, el, NotChecked, replace, settle } from "../ui.js";
import { decode, inclusionCheck, issuerNames, row, table } from "./rows.js";

const SCAN_STEP = 16; // bundles per click when scanning for an issuer: 4,096 leaves

/** The tree size to page over: the trusted one, else the size the note claims (all grey/red). */
async function browseSize(session) {
  const v = await session.verdict;
  return v.checkpoint?.size ?? v.claimed?.size ?? 0;
}

/** Fetch bundle `tile` and prove it: {first, leaves, proof (promise of leaf hashes)}. */
async function provedBundle(session, tile, size) {
  const b = await api.entryBundle(tile, size);
  const proof = (async () => {
    const cp = await session.trusted();
    if (cp.size !== size) throw new Error("the checkpoint changed");
    const { hashes } = await api.inclusionProof(b.first, cp.size);
    return proveBundle(b.leaves, b.first, cp, hashes);
  })();
  proof.catch(() => {});
  return { ...b, proof };
}

function proofText(p) {
  return p.then(() => "in the checkpoint's tree (entry bundle verified)");
}

export async function renderBrowse(session, tile) {
  const box = $("#browse");
  const size = await browseSize(session);
  if (!size) {
    replace(box, el("p", { class: "note" }, "The log is empty."));
    return;
  }
  const last = Math.floor((size - 1) / TILE_WIDTH);
  const t = tile === undefined || tile > last || tile < 0 ? last : tile;
  const pager = el("div", { class: "pager" },
    el("button", { type: "button", id: "browse-newer", disabled: t >= last, onclick: () => { location.hash = `tile=${t + 1}`; } }, "← newer"),
    el("span", { id: "browse-range" }, `leaves ${t * TILE_WIDTH}–${Math.min(size, (t + 1) * TILE_WIDTH) - 1} of ${size}`),
    el("button", { type: "button", id: "browse-older", disabled: t <= 0, onclick: () => { location.hash = `tile=${t - 1}`; } }, "older →"));
  const tbl = table("browse-table");
  replace(box, pager, tbl);
  let b;
  try {
    b = await provedBundle(session, t, size);
  } catch (e) {
    tbl.append(el("tr", {}, el("td", { colspan: 7 }, check("browse-fetch", "fail", e.message))));
    return;
  }
  const names = await issuerNames(session);
  for (let k = b.leaves.length - 1; k >= 0; k--) {
    const index = b.first + k;
    const c = inclusionCheck(index);
    settle(c, () => proofText(b.proof));
    tbl.append(row(index, decode(session, index, b.leaves[k]), names, [c]));
  }
}

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

async function kindOf(session, kind, q) {
  if (kind !== "auto") return kind;
  if (UUID.test(q)) return "device_uuid";
  if (/^[0-9]+$/.test(q)) return "index";
  if (/^[0-9a-fA-F]{64}$/.test(q)) {
    const { list } = await session.issuers;
    return list.some((i) => i.keyIdHex === q.toLowerCase()) ? "issuer" : "commitment";
  }
  throw new Error("give a device UUID, a leaf index, or 64 hex digits (commitment, fingerprint hash or issuer key id)");
}

let searches = 0;

/** Search, then mark the results box with the query it answers (data-query) once drawn. Each
 * search draws into its own box, swapped in only while it is the latest one. */
export async function runSearch(session, kindIn, qIn) {
  const mine = ++searches;
  const box = el("div", { id: "search-results" });
  $("#search-results").replaceWith(box);
  await search(session, kindIn, qIn.trim(), box);
  if (mine === searches) box.dataset.query = qIn.trim();
}

async function search(session, kindIn, q, box) {
  let kind;
  try {
    kind = await kindOf(session, kindIn, q);
  } catch (e) {
    replace(box, el("p", { class: "warn" }, e.message));
    return;
  }
  if (kind === "index") {
    location.hash = `entry=${q}`;
    return;
  }
  if (kind === "issuer") return scanIssuer(session, q.toLowerCase(), box);
  const fields = kind === "commitment" ? ["watermark_commitment", "fingerprint_hash"] : [kind];
  replace(box, el("p", { class: "note" }, "searching…"));
  let value;
  try {
    value = kind === "device_uuid" ? q.toLowerCase() : toHex(fromHex(q, kind, 32));
    if (kind === "device_uuid" && !UUID.test(q)) throw new Error("not a UUID (8-4-4-4-12 hex digits)");
  } catch (e) {
    replace(box, el("p", { class: "warn" }, e.message));
    return;
  }
  const found = [];
  let truncated = false;
  try {
    for (const field of fields) {
      const r = await api.lookUp(field, value);
      truncated ||= r.truncated;
      for (const hit of r.hits) found.push({ ...hit, field });
    }
  } catch (e) {
    replace(box, el("p", {}, check("search-fetch", "fail", e.message)));
    return;
  }
  found.sort((a, b) => a.index - b.index);
  const names = await issuerNames(session);
  const tbl = table("search-table");
  for (const hit of found) {
    const decoded = decode(session, hit.index, hit.leaf);
    const inc = inclusionCheck(hit.index);
    const match = check(`match:${hit.index}`);
    const sig = check(`signature:${hit.index}`);
    // Nothing about an entry is shown as checked unless the entry itself is proved in the log.
    const proved = session.proveLeaf(hit.leaf, hit.index);
    proved.catch(() => {});
    settle(inc, async () => {
      await proved;
      return `leaf ${hit.index} is in the checkpoint's tree`;
    });
    settle(match, async () => {
      await proved;
      return matches(decoded, hit.field, value);
    });
    settle(sig, async () => {
      await proved;
      return issuerSigned(session, decoded);
    });
    tbl.append(row(hit.index, decoded, names, [inc, match, sig]));
  }
  replace(box, el("h3", {}, `${found.length} issuance(s) with ${fields.join(" or ")} ${value}`), found.length ? tbl : "",
    truncated ? el("p", { class: "warn" }, "The server says there may be more hits than it returned.") : "",
    el("p", { class: "note" }, "Hits come from the log's index, which is not proved complete: each hit shown is proved, " +
      "but a server could leave hits out (spec/api.md §7)."));
}

function matches(decoded, field, value) {
  if (decoded.error) throw new Error(`malformed entry: ${decoded.error}`);
  const e = decoded.entry;
  if (!e.known || e.type !== ISSUANCE) throw new Error(`the server returned a ${e.type}, not an issuance`);
  const got = field === "device_uuid" ? uuidText(e.fields.device_uuid) : e.fields[field] ? toHex(e.fields[field]) : null;
  if (got !== value) throw new Error(`the entry's ${field} is ${got ?? "absent"}, not the one searched for`);
  return `the entry's ${field} is the one searched for`;
}

/** The entry carries a valid signature by the issuer its key id names, whose registration is
 * proved in the trusted tree. */
export async function issuerSigned(session, decoded) {
  if (decoded.error) throw new Error(`malformed entry: ${decoded.error}`);
  const e = decoded.entry;
  if (!e.known) throw new NotChecked(`not checked: entry type ${JSON.stringify(e.type)} is unknown to this page`);
  const issuer = e.type !== REGISTRATION ? await session.issuer(e.fields.issuer_key_id) : null;
  const key = issuer ? issuer.publicKey : e.fields.issuer_public_key;
  if (!(await verifyEntrySignature(e, key))) throw new Error("the issuer's signature does not verify");
  if (issuer === null) return "self-signed by the key it registers";
  return `signed by ${issuer.name} (registration leaf ${issuer.index} proved)${e.batch ? `, batch signature over ${e.batch.size} entries` : ""}`;
}

async function scanIssuer(session, keyIdHex, box) {
  const size = await browseSize(session);
  const names = await issuerNames(session);
  const tbl = table("search-table");
  const status = el("p", { class: "note", id: "scan-status" });
  const more = el("button", { type: "button", id: "scan-more" }, `scan ${SCAN_STEP} more bundles`);
  const name = names.get(keyIdHex);
  replace(box, el("h3", {}, `issuances by ${name ?? keyIdHex} (scanning entry bundles, newest first)`), status, tbl, more,
    el("p", { class: "note" }, "The log has no index by issuer: bundles are read and proved one by one, " +
      `${SCAN_STEP} (${SCAN_STEP * TILE_WIDTH} leaves) per step, so a large log stays fast.`));
  let next = Math.floor((size - 1) / TILE_WIDTH);
  let hits = 0;
  const kid = fromHex(keyIdHex, "issuer key id", 32);
  const step = async () => {
    more.disabled = true;
    const stop = Math.max(-1, next - SCAN_STEP);
    const top = next;
    const tiles = [];
    for (let t = top; t > stop; t--) tiles.push(provedBundle(session, t, size)); // fetched side by side
    tiles.forEach((p) => p.catch(() => {}));
    for (; next > stop; next--) {
      let b;
      try {
        b = await tiles[top - next];
      } catch (e) {
        tbl.append(el("tr", {}, el("td", { colspan: 7 }, check("scan-fetch", "fail", e.message))));
        return;
      }
      for (let k = b.leaves.length - 1; k >= 0; k--) {
        const index = b.first + k;
        const d = decode(session, index, b.leaves[k]);
        if (!d.entry?.known || d.entry.type !== ISSUANCE || !equal(d.entry.fields.issuer_key_id, kid)) continue;
        hits++;
        const c = inclusionCheck(index);
        settle(c, () => proofText(b.proof));
        tbl.append(row(index, d, names, [c]));
      }
      status.textContent = `${hits} hit(s) in leaves ${next * TILE_WIDTH}–${size - 1}`;
    }
    status.textContent = `${hits} hit(s) in leaves ${(next + 1) * TILE_WIDTH}–${size - 1}${next < 0 ? " (the whole log)" : ""}`;
    more.disabled = next < 0;
    if (next < 0) more.hidden = true;
  };
  more.addEventListener("click", step);
  if (size) await step();
  else status.textContent = "The log is empty.";
}
