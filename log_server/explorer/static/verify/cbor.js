// Strict, bounded decoder of deterministic CBOR (RFC 8949 §4.2.1), the encoding of every EMShield
// entry, marking-parameter blob and fingerprint (spec/entry.md "Encoding"). It accepts exactly one
// byte string per value: definite lengths only, every head in its shortest form, map keys in
// strictly increasing bytewise order of their encodings (so no duplicates), no tags, no floats or
// simple values, valid UTF-8 text, bounded depth, no trailing bytes. Checking each of these while
// parsing is the same as spec/entry.md's "re-encode and compare", without an encoder.
//
// Values: unsigned and negative integers as Number when safe, else BigInt; byte strings as
// Uint8Array; text as string; arrays as Array; maps as CborMap (entries in encoded order, with the
// byte span of every key/value item, so a caller can cut a signed sub-map out of the exact bytes).

import { compare, decodeUtf8, FormatError } from "./bytes.js";

export class CborError extends FormatError {}

export class CborMap {
  constructor() {
    this.entries = []; // [key, value] in encoded order
    this.spans = []; // [start, end) of each key/value item in the input
  }

  get(key) {
    for (const [k, v] of this.entries) if (k === key) return v;
    return undefined;
  }

  has(key) {
    return this.entries.some(([k]) => k === key);
  }

  keys() {
    return this.entries.map(([k]) => k);
  }
}

/** The deterministic head of major type `major` with argument `n` (a safe integer or BigInt). */
export function encodeHead(major, n) {
  const v = BigInt(n);
  const m = major << 5;
  if (v < 24n) return new Uint8Array([m | Number(v)]);
  const [ai, size] = v < 0x100n ? [24, 1] : v < 0x10000n ? [25, 2] : v < 0x100000000n ? [26, 4] : [27, 8];
  const out = new Uint8Array(1 + size);
  out[0] = m | ai;
  for (let k = size; k >= 1; k--) {
    out[k] = Number(v >> BigInt(8 * (size - k)) & 0xffn);
  }
  return out;
}

const MIN_FOR = { 24: 24n, 25: 0x100n, 26: 0x10000n, 27: 0x100000000n };

class Reader {
  constructor(bytes, what, maxDepth) {
    this.b = bytes;
    this.at = 0;
    this.what = what;
    this.maxDepth = maxDepth;
  }

  fail(msg) {
    throw new CborError(`${this.what}: ${msg} (byte ${this.at})`);
  }

  need(n) {
    if (this.at + n > this.b.length) this.fail("is truncated");
  }

  head() {
    this.need(1);
    const ib = this.b[this.at++];
    const major = ib >> 5;
    const ai = ib & 31;
    if (ai < 24) return [major, BigInt(ai)];
    if (ai === 31) this.fail("uses an indefinite length (not deterministic)");
    if (ai > 27) this.fail(`uses reserved additional information ${ai}`);
    const size = 1 << (ai - 24);
    this.need(size);
    let v = 0n;
    for (let k = 0; k < size; k++) v = (v << 8n) | BigInt(this.b[this.at++]);
    if (v < MIN_FOR[ai]) this.fail("has an integer or length not in its shortest form");
    return [major, v];
  }

  length(v) {
    if (v > BigInt(this.b.length - this.at)) this.fail("is truncated");
    return Number(v);
  }

  item(depth) {
    const [major, v] = this.head();
    switch (major) {
      case 0:
        return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
      case 1: {
        const n = -1n - v;
        return n >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(n) : n;
      }
      case 2: {
        const n = this.length(v);
        const out = this.b.slice(this.at, this.at + n);
        this.at += n;
        return out;
      }
      case 3: {
        const n = this.length(v);
        const text = decodeUtf8(this.b.subarray(this.at, this.at + n), `${this.what}: a text string`);
        this.at += n;
        return text;
      }
      case 4: {
        if (depth >= this.maxDepth) this.fail(`nests deeper than ${this.maxDepth}`);
        const n = this.length(v); // every item is at least one byte
        const out = [];
        for (let k = 0; k < n; k++) out.push(this.item(depth + 1));
        return out;
      }
      case 5: {
        if (depth >= this.maxDepth) this.fail(`nests deeper than ${this.maxDepth}`);
        const n = this.length(v * 2n);
        const map = new CborMap();
        let lastKey = null;
        for (let k = 0; k < n / 2; k++) {
          const start = this.at;
          const key = this.item(depth + 1);
          const keyBytes = this.b.subarray(start, this.at);
          if (lastKey !== null && compare(lastKey, keyBytes) >= 0) {
            this.fail(compare(lastKey, keyBytes) === 0 ? "has a duplicate map key" : "has map keys out of deterministic order");
          }
          lastKey = keyBytes;
          const value = this.item(depth + 1);
          map.entries.push([key, value]);
          map.spans.push([start, this.at]);
        }
        return map;
      }
      case 6:
        return this.fail("has a tag (tags are not allowed)");
      default:
        return this.fail("has a float or simple value (not allowed)");
    }
  }
}

/** One deterministic CBOR item filling all of `bytes`; CborError names what is wrong. */
export function decodeStrict(bytes, what, maxDepth) {
  if (!bytes.length) throw new CborError(`${what} is empty`);
  const r = new Reader(bytes, what, maxDepth);
  const value = r.item(0);
  if (r.at !== bytes.length) throw new CborError(`${what} has ${bytes.length - r.at} trailing bytes after the CBOR item`);
  return value;
}

/** A short human-readable rendering of a decoded value (for entries of unknown types). */
export function describe(value, depth = 0) {
  if (value instanceof Uint8Array) {
    const hex = Array.from(value.subarray(0, 48), (b) => b.toString(16).padStart(2, "0")).join("");
    return `h'${hex}${value.length > 48 ? "…" : ""}' (${value.length} bytes)`;
  }
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number" || typeof value === "bigint") return String(value);
  if (depth > 4) return "…";
  if (Array.isArray(value)) return `[${value.map((v) => describe(v, depth + 1)).join(", ")}]`;
  if (value instanceof CborMap) {
    return `{${value.entries.map(([k, v]) => `${describe(k, depth + 1)}: ${describe(v, depth + 1)}`).join(", ")}}`;
  }
  return String(value);
}
