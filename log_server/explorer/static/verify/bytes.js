// Byte helpers shared by every verification module: strict base64 and hex, concatenation,
// comparison. Pure functions over Uint8Array; no DOM, no network (spec/explorer.md §2).

export class FormatError extends Error {}

export const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** UTF-8 text of `bytes`; invalid UTF-8 is a FormatError (never replaced by U+FFFD). */
export function decodeUtf8(bytes, what) {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new FormatError(`${what} is not valid UTF-8`);
  }
}

export function concat(...parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function equal(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** -1, 0 or 1: bytewise lexicographic order (a proper prefix sorts first). */
export function compare(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

export function toHex(bytes) {
  let s = "";
  for (const b of bytes) s += HEX[b];
  return s;
}

/** Lower- or upper-case hex of exactly `size` bytes (any size when `size` is undefined). */
export function fromHex(text, what, size) {
  if (!/^(?:[0-9a-fA-F]{2})*$/.test(text)) throw new FormatError(`${what} is not hex`);
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(2 * i, 2), 16);
  if (size !== undefined && out.length !== size) throw new FormatError(`${what} must be ${size} bytes, got ${out.length}`);
  return out;
}

export function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** Standard padded base64 (RFC 4648 §4), canonical only: atob alone also takes missing padding,
 * white space and non-zero trailing bits, so the result is re-encoded and compared. */
export function fromBase64(text, what) {
  if (typeof text !== "string" || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) {
    throw new FormatError(`${what} is not valid base64`);
  }
  let bin;
  try {
    bin = atob(text);
  } catch {
    throw new FormatError(`${what} is not valid base64`);
  }
  const out = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  if (toBase64(out) !== text) throw new FormatError(`${what} is not canonical base64`);
  return out;
}

/** uint64 big-endian of a non-negative safe integer or BigInt. */
export function u64be(n) {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(n));
  return out;
}

/** The canonical 8-4-4-4-12 text of a 16-byte UUID. */
export function uuidText(bytes) {
  const h = toHex(bytes);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
