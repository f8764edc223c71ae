// One entry in full: its bytes and leaf hash, its decoded fields, its RFC 9162 inclusion proof
// verified against the trusted checkpoint, its issuer signature, and its side record checked
// against the fingerprint hash it commits to (spec/explorer.md §3.5).

import { equal, toBase64, toHex, uuidText } from "../../verify/bytes.js";
import { describe } from "../../verify/cbor.js";
import {
  ATTRIBUTION, decodeEntry, decodeFingerprint, fingerprintHash, ISSUANCE, markingParamsDigest, REGISTRATION, secretMarkCommitment,
} from "../../verify/entry.js";
import * as api from "../api.js";
import { $, check, code, el, NotChecked, replace, settle, when } from "../ui.js";
import { paramsDetails } from "./issuers.js";
import { issuerSigned } from "./issuances.js";
import { decode, score } from "./rows.js";

let shown = 0; // the latest render: an older one still finishing must not draw into the section

export async function renderEntry(session, index) {
  const mine = ++shown;
  const section = $("#entry");
  const body = $("#entry-body");
  section.hidden = false;
  $("#entry-title").textContent = `Entry ${index}`;
  const inc = check("entry-inclusion");
  const sig = check("entry-signature");
  const side = check("entry-side-record");
  const checks = el("div", { class: "checks" }, inc, sig, side);
  replace(body, checks);
  section.scrollIntoView();
  let bytes;
  try {
    bytes = await api.leaf(index);
  } catch (e) {
    for (const c of [inc, sig, side]) settle(c, async () => { throw e; });
    return;
  }
  if (mine !== shown) return;
  const decoded = decode(session, index, bytes);
  const proofBox = el("div");
  const proved = session.proveLeaf(bytes, index);
  proved.catch(() => {});
  settle(inc, async () => {
    const p = await proved;
    return `leaf ${index} is in the checkpoint's tree of ${p.size} (RFC 9162 proof of ${p.proof.length} hashes checked)`;
  }).then(() => showProof(proofBox, proved, index));
  settle(sig, async () => {
    await proved; // an entry that is not proved in the log is not shown as signed
    return issuerSigned(session, decoded);
  });
  const sideBox = el("div");
  settle(side, () => checkSideRecord(session, index, decoded, proved, sideBox));
  if (decoded.entry?.type === ATTRIBUTION) {
    const opening = check("entry-opening");
    checks.append(opening);
    settle(opening, () => checkOpening(session, decoded.entry, proved));
  }
  if (decoded.entry && !decoded.entry.known) {
    proved.then(() => session.noteUnknown(index, decoded.entry, "proved"), () => session.noteUnknown(index, decoded.entry, "not proved"));
  }
  body.append(fieldsOf(decoded), sideBox, proofBox,
    el("details", {}, el("summary", {}, `leaf bytes (${bytes.length}, deterministic CBOR)`), el("pre", { id: "entry-hex" }, toHex(bytes))));
  if (decoded.entry?.type === REGISTRATION) {
    const { list } = await session.issuers;
    const i = list.find((x) => x.index === index);
    if (i && mine === shown) body.append(paramsDetails(i));
  }
}

function fieldsOf(decoded) {
  if (decoded.error) return el("p", { class: "warn" }, `malformed entry: ${decoded.error}`);
  const e = decoded.entry;
  if (!e.known) {
    return el("div", { class: "unknown", id: "entry-unknown" },
      el("p", {}, `Unknown entry type ${JSON.stringify(e.type)} (version ${e.version}). This page does not interpret it; `,
        "its inclusion is still verified. Its content, as decoded CBOR:"),
      el("pre", {}, describe(e.value)));
  }
  const f = e.fields;
  const rows = [["type", e.type]];
  if (e.type === ISSUANCE) {
    rows.push(["device UUID", code(uuidText(f.device_uuid))], ["backbone id", code(toHex(f.backbone_id))], ["policy", f.policy]);
    if (f.watermark_commitment) rows.push(["watermark commitment", code(toHex(f.watermark_commitment))]);
    if (f.fingerprint_hash) rows.push(["fingerprint hash", code(toHex(f.fingerprint_hash))]);
    rows.push(["issued at", `${when(f.issued_at)} (as the issuer states)`], ["issuer key id", code(toHex(f.issuer_key_id))]);
  } else if (e.type === ATTRIBUTION) {
    rows.push(["attributed issuance", el("a", { href: `#entry=${f.issuance_index}`, id: "entry-attributed" }, `leaf ${f.issuance_index}`)],
      ["issuance leaf hash", code(toHex(f.issuance_leaf_hash))], ["suspect SHA-256", code(toHex(f.suspect_sha256))],
      ["score T (claimed)", `${score(f.score_e6)} over ${f.terms} terms (as the issuer measured it; a verifier recomputes it)`],
      ["detection key (disclosed)", code(toHex(f.detection_key))], ["detection nonce (disclosed)", code(toHex(f.detection_nonce))],
      ["attributed at", `${when(f.attributed_at)} (as the issuer states)`], ["signer key id", code(toHex(f.issuer_key_id))]);
  } else {
    rows.push(["name", f.name], ["issuer public key", code(toHex(f.issuer_public_key))],
      ["registered at", `${when(f.registered_at)} (as the issuer states)`], ["marking parameters", `${f.marking_params.length} bytes`]);
  }
  rows.push(["signature", code(toBase64(e.sig))]);
  if (e.batch) rows.push(["batch", `leaf ${e.batch.index} of a signing batch of ${e.batch.size} (${e.batch.proof.length} proof hashes)`]);
  const dl = el("dl", { class: "fields", id: "entry-fields" });
  for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, v));
  return dl;
}

async function showProof(box, proved, index) {
  try {
    const p = await proved;
    replace(box, el("h3", {}, "Inclusion proof"),
      el("p", {}, `leaf hash `, code(toHex(p.leafHash)), ` (SHA-256 of 0x00 ‖ leaf bytes, computed here); leaf ${index} of ${p.size}`),
      el("ol", { id: "entry-proof", start: 0 }, p.proof.map((h) => el("li", {}, code(toHex(h))))));
  } catch {
    /* the failing check says why */
  }
}

/** The attribution's disclosed nonce and key open the secret-mark commitment of the issuance it
 * names, whose leaf is proved in the trusted tree and hashes to the attribution's issuance leaf hash. */
async function checkOpening(session, e, proved) {
  await proved;
  const index = e.fields.issuance_index;
  const bytes = await api.leaf(index);
  const p = await session.proveLeaf(bytes, index);
  if (!equal(p.leafHash, e.fields.issuance_leaf_hash)) throw new Error(`leaf ${index} is not the issuance the attribution names (leaf hash differs)`);
  const issuance = decodeEntry(bytes);
  if (issuance.type !== ISSUANCE || !issuance.known) throw new Error(`leaf ${index} is not an issuance`);
  const want = issuance.fields.secret_mark_commitment;
  if (!want) throw new Error(`the issuance at leaf ${index} carries no secret mark`);
  if (!equal(await secretMarkCommitment(e.fields.detection_nonce, e.fields.detection_key), want)) {
    throw new Error(`the disclosed key and nonce do not open the secret-mark commitment of leaf ${index}`);
  }
  return `the disclosed key and nonce open the secret-mark commitment of the issuance at leaf ${index} (proved); ` +
    "whether the suspect carries the mark is for a verifier to recompute";
}

async function checkSideRecord(session, index, decoded, proved, box) {
  const e = decoded.entry;
  if (!e?.known || e.type !== ISSUANCE || !e.fields.fingerprint_hash) {
    throw new NotChecked("no side record: the entry commits to no fingerprint");
  }
  await proved;
  const data = await api.sideRecord(index);
  if (data === null) throw new NotChecked("no side record is published for this entry");
  const h = await fingerprintHash(data);
  if (!equal(h, e.fields.fingerprint_hash)) throw new Error("the side record's hash is not the entry's fingerprint hash");
  const fp = decodeFingerprint(data);
  const issuer = await session.issuer(e.fields.issuer_key_id);
  const digest = await markingParamsDigest(issuer.paramsBlob);
  const sameParams = equal(digest, fp.params);
  box.append(el("h3", {}, "Side record (published fingerprint)"),
    el("p", {}, `${data.length} bytes; ${fp.layers.length} layers of ${fp.layers[0]?.features.length ?? 0} features; parameters digest `,
      code(toHex(fp.params)), sameParams ? " = the issuer's marking parameters" : " ≠ the issuer's marking parameters"));
  if (!sameParams) throw new Error("the fingerprint was made with other parameters than its issuer registered");
  return "the published fingerprint hashes to the entry's fingerprint hash, with the issuer's parameters";
}
