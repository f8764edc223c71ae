// One visit's verified state: the pinned keys, the latest checkpoint and whether it is trusted
// (its note verifies with the pinned key and it is consistent with every checkpoint this browser
// verified before, spec/explorer.md §3), and the issuers whose registrations were proved.
// Every other check awaits `trusted()`, so nothing turns green against an untrusted root.

import { equal, FormatError, toHex } from "../verify/bytes.js";
import { decodeEntry, decodeMarkingParams, issuerKeyId, REGISTRATION, verifyEntrySignature } from "../verify/entry.js";
import { checkAgainstSeen, proveLeaf } from "../verify/log.js";
import { parseCheckpoint, parseVerifierKey, SIG_COSIGNATURE, SIG_ED25519, splitNote, verifyCheckpointNote } from "../verify/note.js";
import { webCryptoProblem } from "../verify/webcrypto.js";
import * as api from "./api.js";
import * as store from "./store.js";
import { NotChecked } from "./ui.js";

export class Session {
  constructor() {
    this.pins = store.pinned();
    this.unknown = new Map(); // leaf index -> {type, version, state}
    this.listeners = [];
    this.keys = this.#parseKeys();
    this.verdict = this.#verifyCheckpoint();
    this.issuers = this.#proveIssuers();
  }

  async #parseKeys() {
    const problem = await webCryptoProblem();
    if (problem) return { problem };
    if (!this.pins.log) return { unpinned: true };
    try {
      const log = await parseVerifierKey(this.pins.log, SIG_ED25519);
      const witnesses = [];
      for (const w of this.pins.witnesses) witnesses.push(await parseVerifierKey(w, SIG_COSIGNATURE));
      return { log, witnesses };
    } catch (e) {
      return { problem: `the pinned key is not usable: ${e.message}` };
    }
  }

  /** {trusted, checkpoint, note, witnesses, relation, problem, unpinned, signature, consistency}:
   * `signature` and `consistency` are each null (not checked), true, or an error message. */
  async #verifyCheckpoint() {
    const keys = await this.keys;
    const out = { trusted: false, signature: null, consistency: null };
    let noteBytes;
    try {
      noteBytes = await api.getCheckpoint();
    } catch (e) {
      return { ...out, problem: e.message, signature: e.message };
    }
    out.note = new TextDecoder().decode(noteBytes);
    try {
      out.claimed = parseCheckpoint(splitNote(noteBytes).text); // unverified: only to page over, all checks grey or red
    } catch {
      out.claimed = null;
    }
    if (keys.problem || keys.unpinned) return { ...out, problem: keys.problem, unpinned: keys.unpinned };
    let verified;
    try {
      verified = await verifyCheckpointNote(noteBytes, keys.log, keys.witnesses);
    } catch (e) {
      return { ...out, signature: e.message, problem: `the checkpoint is rejected: ${e.message}` };
    }
    Object.assign(out, { signature: true, checkpoint: verified.checkpoint, witnesses: verified.witnesses });
    const previous = store.largestSeen(this.pins.log);
    try {
      const proof = previous && previous.size > 0 && previous.size < verified.checkpoint.size
        ? await api.consistencyProof(previous.size, verified.checkpoint.size) : [];
      out.relation = await checkAgainstSeen(previous, verified.checkpoint, proof);
      out.previous = previous;
      out.consistency = true;
    } catch (e) {
      out.consistency = e.message;
      out.problem = `the checkpoint is not consistent with what this browser saw before: ${e.message}`;
      if (previous) store.recordEvidence(this.pins.log, { oldNote: previous.note, newNote: out.note, reason: e.message });
      return out;
    }
    store.remember(this.pins.log, verified.checkpoint, out.note);
    out.trusted = true;
    return out;
  }

  /** The trusted checkpoint {origin, size, root}, or throws: NotChecked when no key is pinned,
   * an Error naming the problem when the checkpoint was rejected. */
  async trusted() {
    const v = await this.verdict;
    if (v.trusted) return v.checkpoint;
    if (v.unpinned) throw new NotChecked("not verified: no log key is pinned");
    throw new Error(`no trusted checkpoint: ${v.problem}`);
  }

  /** Leaf `index` is `leafBytes` in the trusted tree (fetches the inclusion proof). */
  async proveLeaf(leafBytes, index) {
    const cp = await this.trusted();
    if (index >= cp.size) throw new Error(`leaf ${index} is not in the checkpoint's tree of ${cp.size}`);
    const { hashes } = await api.inclusionProof(index, cp.size);
    const h = await proveLeaf(leafBytes, index, cp, hashes);
    return { leafHash: h, proof: hashes, size: cp.size };
  }

  /** Every issuer the server lists, each with what was proved about its registration:
   * [{keyIdHex, index, name, publicKey, params, paramsBlob, revoked, proved, problem}]. */
  async #proveIssuers() {
    let listed;
    try {
      listed = await api.issuers();
    } catch (e) {
      return { problem: e.message, list: [] };
    }
    const list = await Promise.all(listed.map((i) => this.#proveIssuer(i)));
    return { list };
  }

  async #proveIssuer(listed) {
    const out = { keyIdHex: String(listed.key_id), index: listed.index, revoked: listed.revoked === true, checks: {} };
    try {
      if (!Number.isSafeInteger(listed.index) || listed.index < 0) throw new FormatError("the server gave no registration leaf index");
      const bytes = await api.leaf(listed.index);
      const entry = decodeEntry(bytes);
      if (!entry.known || entry.type !== REGISTRATION) throw new FormatError(`leaf ${listed.index} is not an issuer registration`);
      Object.assign(out, { name: entry.fields.name, publicKey: entry.fields.issuer_public_key,
                           paramsBlob: entry.fields.marking_params, registeredAt: entry.fields.registered_at, entry });
      const kid = toHex(await issuerKeyId(entry.fields.issuer_public_key));
      if (kid !== out.keyIdHex) throw new FormatError(`the registration's key has id ${kid}, not the listed ${out.keyIdHex}`);
      out.signatureOk = await verifyEntrySignature(entry, entry.fields.issuer_public_key);
      try {
        out.params = decodeMarkingParams(entry.fields.marking_params);
      } catch (e) {
        out.paramsProblem = e.message;
      }
      out.inclusion = this.proveLeaf(bytes, listed.index);
      out.inclusion.catch(() => {}); // awaited by whoever shows or relies on it
    } catch (e) {
      out.problem = e.message;
    }
    return out;
  }

  /** The proved registration of the issuer with key id `keyId` (bytes), or throws. */
  async issuer(keyId) {
    const { list } = await this.issuers;
    const hex = toHex(keyId);
    const i = list.find((x) => x.keyIdHex === hex);
    if (!i) throw new Error(`no registration of issuer ${hex.slice(0, 16)}… is listed by the log`);
    if (i.problem) throw new Error(`the registration of issuer ${hex.slice(0, 16)}… is not valid: ${i.problem}`);
    if (!i.signatureOk) throw new Error(`the registration of issuer ${hex.slice(0, 16)}… is not self-signed`);
    await i.inclusion; // throws unless the registration leaf is proved in the trusted tree
    if (!equal(await issuerKeyId(i.publicKey), keyId)) throw new Error("issuer key id mismatch");
    return i;
  }

  noteUnknown(index, entry, state) {
    this.unknown.set(index, { type: entry.type, version: entry.version, state });
    for (const f of this.listeners) f();
  }
}
