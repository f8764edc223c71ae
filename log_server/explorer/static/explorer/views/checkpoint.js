// The latest checkpoint: its note verified with the pinned key, its witness cosignatures, and its
// consistency with the checkpoints this browser verified before (spec/explorer.md §3.1–3.2).

import { toBase64, toHex } from "../../verify/bytes.js";
import * as store from "../store.js";
import { $, check, code, el, replace, setCheck, when } from "../ui.js";

export async function renderCheckpoint(session) {
  const body = $("#checkpoint-body");
  const sig = check("checkpoint-signature");
  const cons = check("checkpoint-consistency");
  replace(body, el("div", { class: "checks" }, sig, cons));
  const v = await session.verdict;
  const banner = $("#banner");
  if (v.unpinned || (v.problem && v.signature === null)) {
    const why = v.unpinned ? "not verified: no log key is pinned" : `not verified: ${v.problem}`;
    setCheck(sig, v.unpinned ? "skip" : "fail", why);
    setCheck(cons, v.unpinned ? "skip" : "fail", why);
  } else {
    setCheck(sig, v.signature === true ? "pass" : "fail",
      v.signature === true ? "signed by the pinned log key; origin is the key's name" : v.signature);
    if (v.signature !== true) setCheck(cons, "fail", "not checked: the checkpoint itself is rejected");
    else if (v.consistency === true) setCheck(cons, "pass", relationText(v));
    else setCheck(cons, "fail", v.consistency);
  }
  banner.dataset.state = v.trusted ? "pass" : v.unpinned ? "skip" : "fail";
  banner.textContent = v.trusted
    ? `Checkpoint of size ${v.checkpoint.size} verified with the pinned key; every proof below is checked against it.`
    : v.unpinned ? "No log key is pinned: nothing on this page is verified."
      : `FAILED: ${v.problem}. Nothing on this page is trusted.`;

  const dl = el("dl", { class: "fields" });
  const cp = v.checkpoint;
  const fields = cp
    ? [["origin", code(cp.origin)], ["tree size", el("span", { id: "checkpoint-size" }, String(cp.size))],
      ["root hash", code(toHex(cp.root))], ["root (base64)", code(toBase64(cp.root))]]
    : [];
  fields.push(["fetched", new Date().toISOString().replace(/\.\d+Z$/, "Z") + " (a checkpoint states no time; witnesses' cosignatures do)"]);
  for (const [k, val] of fields) dl.append(el("dt", {}, k), el("dd", {}, val));
  body.append(dl);
  body.append(witnessTable(v));
  body.append(el("details", {}, el("summary", {}, "the signed note as served"), el("pre", { id: "checkpoint-note" }, v.note ?? "")));
  body.append(seenList(session, v));
}

function relationText(v) {
  if (v.relation === "first") return "first checkpoint this browser verified for this key (nothing to compare yet)";
  if (v.relation === "same") return `the same checkpoint this browser verified before (size ${v.checkpoint.size})`;
  return `extends size ${v.previous.size} that this browser verified before (RFC 9162 consistency proof checked)`;
}

function witnessTable(v) {
  const rows = (v.witnesses || []).map((w) => {
    const state = w.state === "pass" ? "pass" : w.state === "fail" ? "fail" : "skip";
    const text = { pass: "cosignature verified with the pinned witness key", fail: "cosignature does not verify with the pinned witness key",
      skip: "not checked: this witness's key is not pinned" }[state];
    return el("tr", {}, el("td", {}, w.name), el("td", {}, code(w.keyIdHex)),
      el("td", {}, w.timestamp === null ? "—" : when(w.timestamp)), el("td", {}, check(`witness:${w.name}`, state, text)));
  });
  if (!rows.length) return el("p", { class: "note" }, "No witness cosignatures on this checkpoint.");
  return el("table", { id: "witnesses" }, el("tr", {}, el("th", {}, "witness"), el("th", {}, "key ID"),
    el("th", {}, "cosigned at (as claimed)"), el("th", {}, "check")), rows);
}

function seenList(session, v) {
  const key = session.pins.log;
  if (!key) return el("span");
  const seen = store.seen(key);
  const ev = store.evidence(key);
  const out = el("details", { id: "seen" }, el("summary", {}, `checkpoints this browser verified for this key: ${seen.length}` +
    (ev.length ? `; evidence of misbehaviour: ${ev.length}` : "")));
  if (seen.length) {
    out.append(el("table", {}, el("tr", {}, el("th", {}, "size"), el("th", {}, "root"), el("th", {}, "first verified")),
      seen.slice().reverse().map((c) => el("tr", {}, el("td", {}, String(c.size)), el("td", {}, code(toHex(c.root))), el("td", {}, c.seenAt)))));
  }
  for (const e of ev) {
    out.append(el("div", { class: "unknown" }, el("p", {}, `${e.at}: ${e.reason}`),
      el("p", {}, "Two notes signed by the log's key that no consistency proof joins prove a fork or a rollback:"),
      el("pre", {}, e.oldNote), el("pre", {}, e.newNote)));
  }
  if (v && !v.trusted && ev.length) out.open = true;
  return out;
}
