// The issuers: each registration leaf decoded, its key id recomputed, its self-signature and its
// inclusion verified, its marking parameters decoded (spec/entry.md, spec/watermark.md).

import { toHex } from "../../verify/bytes.js";
import { $, check, code, el, hexShort, replace, settle, when } from "../ui.js";

export async function renderIssuers(session) {
  const body = $("#issuers-body");
  replace(body, el("p", { class: "note" }, "loading…"));
  const { list, problem } = await session.issuers;
  if (problem) {
    replace(body, el("p", {}, check("issuers", "fail", problem)));
    return;
  }
  if (!list.length) {
    replace(body, el("p", { class: "note" }, "The log lists no issuers."));
    return;
  }
  const table = el("table", { id: "issuer-table" }, el("tr", {}, ["name", "key id", "registration leaf", "backbone", "registered",
    "checks"].map((h) => el("th", {}, h))));
  for (const i of list) {
    const inc = check(`issuer-inclusion:${i.keyIdHex}`);
    const sig = check(`issuer-signature:${i.keyIdHex}`);
    const checks = el("div", { class: "checks" }, inc, sig);
    settle(sig, async () => {
      if (i.problem) throw new Error(i.problem);
      await i.inclusion; // a registration that is not proved in the log is not shown as signed
      if (!i.signatureOk) throw new Error("the registration's self-signature does not verify");
      return "self-signed by the registered key; key id recomputed";
    });
    settle(inc, async () => {
      if (i.problem) throw new Error(i.problem);
      await i.inclusion;
      return `registration leaf ${i.index} is in the checkpoint's tree`;
    });
    if (i.revoked) checks.append(el("span", { class: "note" }, "revoked (server state, not a log entry: unproved)"));
    table.append(el("tr", {}, el("td", {}, i.name ?? "?"), el("td", {}, code(hexShort(i.keyIdHex, 16))),
      el("td", {}, el("a", { href: `#entry=${i.index}` }, String(i.index))), el("td", {}, i.params ? code(i.params.backbone_id) : "—"),
      el("td", {}, i.registeredAt !== undefined ? when(i.registeredAt) : "—"), el("td", {}, checks)));
    table.append(el("tr", {}, el("td", { colspan: 6 }, paramsDetails(i))));
  }
  replace(body, table);
}

export function paramsDetails(i) {
  if (i.paramsProblem) return el("p", { class: "warn" }, `marking parameters are not those of spec/watermark.md v1: ${i.paramsProblem}`);
  if (!i.params) return el("span");
  const p = i.params;
  const dl = el("dl", { class: "fields" });
  const rows = [["backbone_id", code(p.backbone_id)], ["verification key (vk)", code(toHex(p.vk))],
    ["Reed–Solomon parity bytes", p.rs_nsym], ["embedding margin τ", p.tau_milli / 1000],
    ["acceptance threshold", `p-value ≤ 10^${p.accept_log10_p}`], ["fingerprint", `${p.fp_k} singular values, ${p.fp_probes} probes per side, match ≤ ${p.fp_threshold_milli / 1000}`],
    ["marked layers", `${p.layers.length}`]];
  for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, v));
  const layers = el("table", {}, el("tr", {}, el("th", {}, "layer"), el("th", {}, "out"), el("th", {}, "in")),
    p.layers.slice(0, 64).map((l) => el("tr", {}, el("td", {}, code(l.name)), el("td", {}, l.out), el("td", {}, l.in))));
  return el("details", {}, el("summary", {}, "marking parameters"), dl, layers,
    p.layers.length > 64 ? el("p", { class: "note" }, `… and ${p.layers.length - 64} more layers`) : "");
}
