// The explorer page: one Session per visit, the sections, and hash routes
// (#entry=I, #tile=N, #q=...&kind=..., #first=A&second=B).

import { Session } from "./session.js";
import { $ } from "./ui.js";
import { renderCheckpoint } from "./views/checkpoint.js";
import { renderConsistency, renderConsistencyForm } from "./views/consistency.js";
import { renderEntry } from "./views/entry.js";
import { renderBrowse, runSearch } from "./views/issuances.js";
import { renderIssuers } from "./views/issuers.js";
import { renderOther } from "./views/other.js";
import { renderPin } from "./views/pin.js";

const session = new Session();
session.listeners.push(() => renderOther(session));

const shown = {}; // what each part of the page shows now: a route change redraws only what changed

function changed(part, value) {
  if (shown[part] === value) return false;
  shown[part] = value;
  return true;
}

function route() {
  const h = new URLSearchParams(location.hash.slice(1));
  const entry = h.has("entry") && /^[0-9]+$/.test(h.get("entry")) ? Number(h.get("entry")) : null;
  if (entry === null) $("#entry").hidden = true;
  if (changed("entry", entry) && entry !== null) renderEntry(session, entry);
  if (h.has("q") && changed("q", `${h.get("kind")}:${h.get("q")}`)) {
    $("#search-input").value = h.get("q");
    $("#search-kind").value = h.get("kind") || "auto";
    runSearch(session, $("#search-kind").value, h.get("q"));
  }
  if (h.has("first") && h.has("second") && changed("consistency", `${h.get("first")}-${h.get("second")}`)) {
    $("#consistency-first").value = h.get("first");
    $("#consistency-second").value = h.get("second");
    renderConsistency(session, Number(h.get("first")), Number(h.get("second")));
  }
  const tile = h.has("tile") ? Number(h.get("tile")) : undefined;
  if (changed("tile", tile ?? "latest")) renderBrowse(session, tile);
}

$("#search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  location.hash = new URLSearchParams({ q: $("#search-input").value.trim(), kind: $("#search-kind").value }).toString();
});
$("#consistency-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  location.hash = new URLSearchParams({ first: $("#consistency-first").value.trim(), second: $("#consistency-second").value.trim() }).toString();
});
window.addEventListener("hashchange", route);

renderPin(session);
renderCheckpoint(session);
renderIssuers(session);
renderOther(session);
renderConsistencyForm(session);
route();
