// C2SP signed notes, tlog-checkpoint bodies and tlog-cosignatures, verified in the browser
// (spec/tlog.md §4, spec/witness.md). A port of emshield/tlog/checkpoint.py's strict parsing:
// the same size and signature-count limits, canonical base64, no control characters, no repeated
// signature line; signatures by keys the reader did not pin are reported but never trusted.

import { concat, decodeUtf8, equal, FormatError, fromBase64, toHex, utf8 } from "./bytes.js";
import { ed25519Verify, sha256 } from "./webcrypto.js";

export class NoteError extends FormatError {}

export const SIG_ED25519 = 0x01;
export const SIG_COSIGNATURE = 0x04;
export const MAX_NOTE_SIZE = 256 * 1024;
export const MAX_SIGNATURES = 100;
const SIG_PREFIX = "\u2014 ";
// What Python's str.isspace() calls white space (the C0 ones are control characters anyway).
const SPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/u;
const CONTROL = /[\x00-\x09\x0b-\x1f]/;

export function isValidKeyName(name) {
  return typeof name === "string" && name.length > 0 && !name.includes("+") && !SPACE.test(name) && !CONTROL.test(name);
}

/** SHA-256(name || 0x0A || type || public key)[:4]: the signed-note key ID. */
export async function keyId(name, sigType, publicKey) {
  return (await sha256(concat(utf8.encode(name), new Uint8Array([0x0a, sigType]), publicKey))).slice(0, 4);
}

/** Strict parse of a verifier key `name+<8 hex key ID>+base64(type || 32-byte key)` of one type. */
export async function parseVerifierKey(vkey, sigType) {
  const text = String(vkey).trim();
  const first = text.indexOf("+");
  const second = first < 0 ? -1 : text.indexOf("+", first + 1);
  if (first < 0 || second < 0) throw new NoteError("malformed verifier key: want NAME+KEYID+BASE64KEY");
  const name = text.slice(0, first);
  const id = text.slice(first + 1, second);
  if (!isValidKeyName(name)) throw new NoteError("malformed verifier key: the name is not a valid key name");
  if (!/^[0-9a-f]{8}$/.test(id)) throw new NoteError("malformed verifier key: the key ID must be 8 lowercase hex digits");
  const key = fromBase64(text.slice(second + 1), "verifier key");
  if (key.length === 0 || key[0] !== sigType) {
    throw new NoteError(`verifier key has algorithm ${key.length ? key[0] : "none"}, want ${sigType}`);
  }
  if (key.length !== 33) throw new NoteError(`verifier key has ${key.length - 1} key bytes, want 32`);
  const publicKey = key.slice(1);
  const computed = await keyId(name, sigType, publicKey);
  if (toHex(computed) !== id) throw new NoteError("verifier key ID does not match its name and key");
  return { name, keyId: computed, publicKey, sigType, text };
}

/** A note's text (bytes, up to and including the newline before the blank line) and its
 * signature lines [{name, keyId, signature}], parsed strictly, nothing verified. */
export function splitNote(note) {
  if (note.length > MAX_NOTE_SIZE) throw new NoteError(`note is ${note.length} bytes, over the ${MAX_NOTE_SIZE}-byte limit`);
  const s = decodeUtf8(note, "note");
  const ctl = s.match(CONTROL);
  if (ctl) throw new NoteError(`note contains the control character U+${ctl[0].charCodeAt(0).toString(16).padStart(4, "0").toUpperCase()}`);
  const split = s.lastIndexOf("\n\n");
  if (split < 0) throw new NoteError("note has no blank line before its signatures");
  const text = s.slice(0, split + 1);
  const block = s.slice(split + 2);
  if (!block || !block.endsWith("\n")) throw new NoteError("note has no signature lines, or they do not end with a newline");
  const lines = block.slice(0, -1).split("\n");
  if (lines.length > MAX_SIGNATURES) throw new NoteError(`note has ${lines.length} signatures, over the limit of ${MAX_SIGNATURES}`);
  const sigs = [];
  const seen = new Set();
  lines.forEach((line, k) => {
    const n = k + 1;
    if (!line.startsWith(SIG_PREFIX)) throw new NoteError(`signature line ${n} does not start with an em dash and a space`);
    const rest = line.slice(SIG_PREFIX.length);
    const sp = rest.indexOf(" ");
    const name = sp < 0 ? "" : rest.slice(0, sp);
    if (sp < 0 || !isValidKeyName(name)) throw new NoteError(`signature line ${n} has no valid key name`);
    const raw = fromBase64(rest.slice(sp + 1), `signature line ${n}`);
    if (raw.length < 5) throw new NoteError(`signature line ${n} is too short to hold a key ID and a signature`);
    const id = `${name}+${toHex(raw.subarray(0, 4))}`;
    if (seen.has(id)) throw new NoteError(`signature line ${n} repeats key ${id}`);
    seen.add(id);
    sigs.push({ name, keyId: raw.slice(0, 4), signature: raw.slice(4) });
  });
  return { text: utf8.encode(text), sigs };
}

/** Strict tlog-checkpoint body: origin, decimal size without leading zeros, canonical base64
 * 32-byte root, optional extension lines. Sizes beyond 2^53 − 1 are refused (no such log). */
export function parseCheckpoint(textBytes) {
  const s = decodeUtf8(textBytes, "checkpoint");
  if (!s.endsWith("\n")) throw new NoteError("checkpoint must end with a newline");
  const lines = s.slice(0, -1).split("\n");
  if (lines.length < 3) throw new NoteError("checkpoint needs origin, size and root hash lines");
  if (lines.some((l) => !l)) throw new NoteError("checkpoint lines must not be empty");
  const [origin, sizeText, rootText, ...extensions] = lines;
  if (!/^(?:0|[1-9][0-9]*)$/.test(sizeText)) throw new NoteError(`checkpoint tree size ${JSON.stringify(sizeText)} is not a decimal without leading zeros`);
  const size = Number(sizeText);
  if (!Number.isSafeInteger(size)) throw new NoteError("checkpoint tree size is too large");
  const root = fromBase64(rootText, "checkpoint root hash");
  if (root.length !== 32) throw new NoteError("checkpoint root hash must be 32 bytes");
  return { origin, size, root, extensions };
}

function cosignedMessage(timestamp, text) {
  return concat(utf8.encode(`cosignature/v1\ntime ${timestamp}\n`), text);
}

/** Verify a checkpoint note against the pinned log key (`parseVerifierKey(..., SIG_ED25519)`) and
 * report every other signature line. Throws NoteError when the note is malformed, when no line
 * is by the pinned key, when that line does not verify, or when the origin is not the key name.
 * Witness lines are checked with `witnessKeys` (type 0x04) where the reader pinned that witness:
 * {name, keyIdHex, timestamp, state: "pass" | "fail" | "unpinned"}; a failing pinned witness
 * line does not reject the log's signature, it is reported as "fail". */
export async function verifyCheckpointNote(note, logKey, witnessKeys = []) {
  const { text, sigs } = splitNote(note);
  let logSig = null;
  const others = [];
  for (const sig of sigs) {
    if (sig.name === logKey.name && equal(sig.keyId, logKey.keyId)) logSig = sig;
    else others.push(sig);
  }
  if (logSig === null) throw new NoteError(`note has no signature by the pinned key ${logKey.name}+${toHex(logKey.keyId)}`);
  if (!(await ed25519Verify(logKey.publicKey, logSig.signature, text))) {
    throw new NoteError(`the signature by the pinned key ${logKey.name}+${toHex(logKey.keyId)} does not verify`);
  }
  const checkpoint = parseCheckpoint(text);
  if (checkpoint.origin !== logKey.name) {
    throw new NoteError(`checkpoint origin ${JSON.stringify(checkpoint.origin)} is not the pinned key's name ${JSON.stringify(logKey.name)}`);
  }
  const witnesses = [];
  for (const sig of others) {
    const w = witnessKeys.find((k) => k.name === sig.name && equal(k.keyId, sig.keyId));
    const timestamp = sig.signature.length === 72 ? new DataView(sig.signature.buffer, sig.signature.byteOffset).getBigUint64(0) : null;
    const row = { name: sig.name, keyIdHex: toHex(sig.keyId), timestamp, state: "unpinned" };
    if (w) {
      const ok = timestamp !== null && timestamp < 1n << 63n &&
        (await ed25519Verify(w.publicKey, sig.signature.subarray(8), cosignedMessage(timestamp, text)));
      row.state = ok ? "pass" : "fail";
    }
    witnesses.push(row);
  }
  return { checkpoint, text, witnesses };
}
