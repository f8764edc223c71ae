// The pinned keys: typed in by the reader, kept in localStorage, never taken from the server.

import { toHex } from "../../verify/bytes.js";
import * as store from "../store.js";
import { $, code, el, replace } from "../ui.js";

export async function renderPin(session) {
  const pins = session.pins;
  $("#log-key").value = pins.log;
  $("#witness-keys").value = pins.witnesses.join("\n");
  $("#pin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const witnesses = $("#witness-keys").value.split("\n").map((s) => s.trim()).filter(Boolean);
    store.pin($("#log-key").value.trim(), witnesses);
    location.reload();
  });
  $("#unpin-button").addEventListener("click", () => {
    store.unpin();
    location.reload();
  });
  const keys = await session.keys;
  const status = $("#pin-status");
  if (keys.problem) replace(status, el("p", { class: "warn" }, keys.problem));
  else if (keys.unpinned) replace(status, el("p", { class: "warn" }, "No log key is pinned: nothing below is verified. Pin the log's verifier key."));
  else {
    const witnesses = keys.witnesses.map((w, i) => [i ? ", " : "", code(`${w.name}+${toHex(w.keyId)}`)]);
    replace(status, el("p", { id: "pinned" }, "Log key ", code(keys.log.name), ", key ID ", code(toHex(keys.log.keyId)),
      witnesses.length ? [`; ${witnesses.length} witness key(s): `, witnesses] : "; no witness keys pinned"));
    $("#pin-details").open = false;
  }
}
