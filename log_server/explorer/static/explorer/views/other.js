// Entries of types this page does not know (a later version's): listed as unknown, with their
// inclusion verified, never interpreted.

import { $, code, el, replace } from "../ui.js";

export function renderOther(session) {
  const body = $("#other-body");
  const rows = [...session.unknown.entries()].sort((a, b) => a[0] - b[0]);
  replace(body, el("p", {}, "This page knows the entry types of spec/entry.md version 1: ", code("issuer-registration"), ", ",
    code("issuance"), " and ", code("attribution"), " (shown like any entry). Entries of any other type or version ",
    "that this page meets while browsing or searching are listed here as unknown: their inclusion is verified, their meaning is not ",
    "interpreted."));
  if (!rows.length) {
    body.append(el("p", { class: "note", id: "other-none" }, "None met so far."));
    return;
  }
  body.append(el("table", { id: "other-table" }, el("tr", {}, el("th", {}, "leaf"), el("th", {}, "type"), el("th", {}, "version")),
    rows.map(([i, u]) => el("tr", { class: "unknown" }, el("td", {}, el("a", { href: `#entry=${i}` }, String(i))),
      el("td", {}, code(JSON.stringify(u.type))), el("td", {}, String(u.version))))));
}
