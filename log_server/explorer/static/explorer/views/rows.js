// One table row per entry, shared by browsing, searching and scanning.

import { toHex, uuidText } from "../../verify/bytes.js";
import { ATTRIBUTION, decodeEntry, ISSUANCE, REGISTRATION } from "../../verify/entry.js";
import { check, code, el, hexShort, when } from "../ui.js";

export const HEADINGS = ["leaf", "type", "device UUID / name", "policy", "issued", "issuer", "checks"];

export function table(id) {
  return el("table", { id }, el("tr", {}, HEADINGS.map((h) => el("th", {}, h))));
}

/** Decode `bytes` (leaf `index`): {entry} or {error}. Unknown types are reported to the session. */
export function decode(session, index, bytes) {
  try {
    const entry = decodeEntry(bytes);
    if (!entry.known) session.noteUnknown(index, entry, "seen");
    return { entry };
  } catch (e) {
    return { error: e.message };
  }
}

/** A row for leaf `index`; `checks` are check nodes to show in it. `names` maps key id hex to
 * an issuer name proved in the log. */
export function row(index, decoded, names, checks) {
  const open = () => { location.hash = `entry=${index}`; };
  const { entry, error } = decoded;
  let cells;
  if (error) {
    cells = [el("td", { colspan: 5, class: "warn" }, `malformed entry: ${error}`)];
  } else if (!entry.known) {
    cells = [el("td", { class: "warn" }, `unknown type ${JSON.stringify(entry.type)}`),
      el("td", { colspan: 4, class: "note" }, `not interpreted (entry version ${entry.version})`)];
  } else if (entry.type === ISSUANCE) {
    const f = entry.fields;
    const kid = toHex(f.issuer_key_id);
    cells = [el("td", {}, "issuance"), el("td", {}, code(uuidText(f.device_uuid))), el("td", {}, f.policy),
      el("td", {}, when(f.issued_at)), el("td", {}, names.get(kid) ?? code(hexShort(kid, 12)))];
  } else if (entry.type === ATTRIBUTION) {
    const f = entry.fields;
    const kid = toHex(f.issuer_key_id);
    cells = [el("td", {}, "attribution"),
      el("td", {}, "of issuance ", el("a", { href: `#entry=${f.issuance_index}`, onclick: (ev) => ev.stopPropagation() },
        `leaf ${f.issuance_index}`)),
      el("td", {}, `T = ${score(f.score_e6)}`), el("td", {}, when(f.attributed_at)),
      el("td", {}, names.get(kid) ?? code(hexShort(kid, 12)))];
  } else if (entry.type === REGISTRATION) {
    cells = [el("td", {}, "issuer registration"), el("td", {}, entry.fields.name), el("td", {}, "—"),
      el("td", {}, when(entry.fields.registered_at)), el("td", {}, "(itself)")];
  }
  return el("tr", { class: "row", dataset: { leaf: String(index) }, onclick: open },
    el("td", {}, el("a", { href: `#entry=${index}` }, String(index))), cells, el("td", {}, el("div", { class: "checks" }, checks)));
}

/** An attribution's claimed presence score T = score_e6 / 10^6, exactly (score_e6 may exceed 2^53). */
export function score(scoreE6) {
  const n = BigInt(scoreE6);
  return `${n / 1000000n}.${String(n % 1000000n).padStart(6, "0")}`;
}

export async function issuerNames(session) {
  const { list } = await session.issuers;
  const names = new Map();
  for (const i of list) {
    if (i.name === undefined || i.problem || !i.signatureOk) continue;
    try {
      await i.inclusion;
      names.set(i.keyIdHex, i.name);
    } catch {
      /* not proved: shown by key id */
    }
  }
  return names;
}

export function inclusionCheck(index) {
  return check(`inclusion:${index}`);
}
