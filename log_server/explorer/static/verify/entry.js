// EMShield log entries (spec/entry.md, spec/entry.cddl), their issuer signatures, and the public
// records they point to: marking parameters (spec/watermark.md "Marking parameters") and
// fingerprint side records (spec/fingerprint.md). Decoding follows spec/entry.md's rules; an entry
// whose `type` this version does not know is returned as such (`known: false`), never interpreted.

import { concat, equal, FormatError, u64be, utf8 } from "./bytes.js";
import { CborMap, decodeStrict, encodeHead } from "./cbor.js";
import { inclusionProofLength, leafHash, rootFromInclusionProof } from "./merkle.js";
import { ed25519Verify, sha256 } from "./webcrypto.js";

export class EntryError extends FormatError {}

export const MAX_ENTRY_SIZE = 65535;
export const MAX_MARKING_PARAMS_SIZE = 60 * 1024;
export const MAX_SIGNING_BATCH = 65536;
const MAX_TIME = (1n << 63n) - 1n;
const MAX_NAME_BYTES = 128;
const ENTRY_DEPTH = 3;
const PARAMS_DEPTH = 16;
const UNKNOWN_DEPTH = 16;

export const SIGNATURE_LABEL = concat(utf8.encode("emshield/entry-signature/v1"), new Uint8Array([0]));
export const BATCH_SIGNATURE_LABEL = concat(utf8.encode("emshield/entry-batch-signature/v1"), new Uint8Array([0]));
const ISSUER_KEY_ID_LABEL = concat(utf8.encode("emshield/issuer-key-id/v1"), new Uint8Array([0]));
const FINGERPRINT_LABEL = concat(utf8.encode("emshield/fingerprint/v1"), new Uint8Array([0]));
const PARAMS_LABEL = concat(utf8.encode("emshield/marking-params/v1"), new Uint8Array([0]));
const SECRET_COMMITMENT_LABEL = concat(utf8.encode("emshield/secret-mark-commitment/v1"), new Uint8Array([0]));

export const REGISTRATION = "issuer-registration";
export const ISSUANCE = "issuance";
export const ATTRIBUTION = "attribution";
const MAX_TERMS = 65535;
const POLICIES = { watermark: [true, false], fingerprint: [false, true], both: [true, true] };

const FIELDS = {
  [REGISTRATION]: { required: ["issuer_public_key", "name", "marking_params", "registered_at"], optional: [] },
  [ISSUANCE]: {
    required: ["device_uuid", "backbone_id", "policy", "issued_at", "issuer_key_id"],
    optional: ["watermark_commitment", "fingerprint_hash", "secret_mark_salt", "secret_mark_commitment", "batch"],
  },
  // never batch-signed: "batch" on an attribution is an unknown field
  [ATTRIBUTION]: {
    required: ["issuer_key_id", "issuance_index", "issuance_leaf_hash", "detection_key", "detection_nonce",
      "suspect_sha256", "score_e6", "terms", "attributed_at"],
    optional: [],
  },
};

export function issuerKeyId(publicKey) {
  return sha256(concat(ISSUER_KEY_ID_LABEL, publicKey));
}

export function fingerprintHash(sideRecord) {
  return sha256(concat(FINGERPRINT_LABEL, sideRecord));
}

/** The secret-tier commitment an attribution's disclosed nonce and key must open (spec/watermark.md,
 * "Secret tier"): SHA-256(label ‖ 0x00 ‖ nonce ‖ key). */
export function secretMarkCommitment(nonce, key) {
  return sha256(concat(SECRET_COMMITMENT_LABEL, nonce, key));
}

export function markingParamsDigest(blob) {
  return sha256(concat(PARAMS_LABEL, blob));
}

function bstr(name, value, size) {
  if (!(value instanceof Uint8Array)) throw new EntryError(`field '${name}' must be a byte string`);
  if (size !== undefined && value.length !== size) throw new EntryError(`field '${name}' must be ${size} bytes, got ${value.length}`);
  return value;
}

function uint(name, value, max, min = 0n) {
  const ok = (typeof value === "number" && Number.isInteger(value) && value >= 0) || (typeof value === "bigint" && value >= 0n);
  if (!ok) throw new EntryError(`field '${name}' must be an unsigned integer`);
  if (BigInt(value) > max) throw new EntryError(`field '${name}' must be at most ${max}, got ${value}`);
  if (BigInt(value) < min) throw new EntryError(`field '${name}' must be at least ${min}, got ${value}`);
  return value;
}

const PRINTABLE = /^[\p{L}\p{M}\p{N}\p{P}\p{S} ]+$/u;

function name(value) {
  if (typeof value !== "string") throw new EntryError("field 'name' must be a text string");
  const size = utf8.encode(value).length;
  if (size < 1 || size > MAX_NAME_BYTES) throw new EntryError(`field 'name' must be 1..${MAX_NAME_BYTES} UTF-8 bytes, got ${size}`);
  if (!PRINTABLE.test(value)) throw new EntryError("field 'name' must not contain control or unprintable characters");
  return value;
}

function batchProof(value) {
  if (!Array.isArray(value) || value.length !== 3) throw new EntryError("field 'batch' must be an array [index, size, proof]");
  const [index, size, proof] = value;
  if (typeof size !== "number" || !Number.isInteger(size) || size < 1 || size > MAX_SIGNING_BATCH) {
    throw new EntryError(`batch size must be an integer in 1..${MAX_SIGNING_BATCH}, got ${size}`);
  }
  if (typeof index !== "number" || !Number.isInteger(index) || index < 0 || index >= size) {
    throw new EntryError(`batch index ${index} is out of range for batch size ${size}`);
  }
  if (!Array.isArray(proof) || proof.some((h) => !(h instanceof Uint8Array) || h.length !== 32)) {
    throw new EntryError("batch proof must be a sequence of 32-byte hashes");
  }
  const want = inclusionProofLength(index, size);
  if (proof.length !== want) {
    throw new EntryError(`batch inclusion proof has ${proof.length} hashes; index ${index} in a batch of ${size} needs exactly ${want} (RFC 9162 §2.1.3)`);
  }
  return { index, size, proof };
}

/** Decode one log leaf. Returns {known: true, type, fields, sig, batch, signingBytes} for the
 * types of spec/entry.md, {known: false, type, version, value} for a well-formed deterministic CBOR
 * map of another type or version; throws EntryError for anything else. */
export function decodeEntry(bytes) {
  if (!bytes.length) throw new EntryError("entry is empty");
  if (bytes.length > MAX_ENTRY_SIZE) throw new EntryError(`entry is ${bytes.length} bytes, over the ${MAX_ENTRY_SIZE}-byte limit`);
  const map = decodeStrict(bytes, "entry", UNKNOWN_DEPTH);
  if (!(map instanceof CborMap)) throw new EntryError("entry is not a CBOR map");
  if (map.entries.some(([k]) => typeof k !== "string")) throw new EntryError("entry map keys must be text strings");
  const version = map.get("v");
  const type = map.get("type");
  if (!Number.isInteger(version) || version < 0) throw new EntryError("entry has no unsigned integer field 'v'");
  if (typeof type !== "string") throw new EntryError("entry has no text field 'type'");
  if (version !== 1 || !Object.hasOwn(FIELDS, type)) {
    return { known: false, type, version, value: map };
  }
  decodeStrict(bytes, "entry", ENTRY_DEPTH); // rule 2: a known entry nests at most 3 deep
  const spec = FIELDS[type];
  const allowed = new Set(["v", "type", "sig", ...spec.required, ...spec.optional]);
  for (const k of map.keys()) if (!allowed.has(k)) throw new EntryError(`unknown field '${k}' in ${type}`);
  for (const k of ["sig", ...spec.required]) if (!map.has(k)) throw new EntryError(`missing field '${k}' in ${type}`);
  const sig = bstr("sig", map.get("sig"), 64);
  const f = {};
  if (type === REGISTRATION) {
    f.issuer_public_key = bstr("issuer_public_key", map.get("issuer_public_key"), 32);
    f.name = name(map.get("name"));
    f.marking_params = bstr("marking_params", map.get("marking_params"));
    if (f.marking_params.length < 1 || f.marking_params.length > MAX_MARKING_PARAMS_SIZE) {
      throw new EntryError(`field 'marking_params' must be 1..${MAX_MARKING_PARAMS_SIZE} bytes, got ${f.marking_params.length}`);
    }
    decodeStrict(f.marking_params, "field 'marking_params'", PARAMS_DEPTH);
    f.registered_at = uint("registered_at", map.get("registered_at"), MAX_TIME);
  } else if (type === ATTRIBUTION) {
    f.issuer_key_id = bstr("issuer_key_id", map.get("issuer_key_id"), 32);
    f.issuance_index = uint("issuance_index", map.get("issuance_index"), MAX_TIME);
    for (const k of ["issuance_leaf_hash", "detection_key", "detection_nonce", "suspect_sha256"]) f[k] = bstr(k, map.get(k), 32);
    f.score_e6 = uint("score_e6", map.get("score_e6"), MAX_TIME);
    f.terms = uint("terms", map.get("terms"), BigInt(MAX_TERMS), 1n);
    f.attributed_at = uint("attributed_at", map.get("attributed_at"), MAX_TIME);
  } else {
    f.device_uuid = bstr("device_uuid", map.get("device_uuid"), 16);
    f.backbone_id = bstr("backbone_id", map.get("backbone_id"), 32);
    const policy = map.get("policy");
    if (!(typeof policy === "string" && Object.hasOwn(POLICIES, policy))) {
      throw new EntryError(`field 'policy' must be one of ${Object.keys(POLICIES).join(", ")}`);
    }
    f.policy = policy;
    const needs = POLICIES[policy];
    for (const [k, need] of [["watermark_commitment", needs[0]], ["fingerprint_hash", needs[1]]]) {
      if (need && !map.has(k)) throw new EntryError(`field '${k}' is required with policy '${policy}'`);
      if (!need && map.has(k)) throw new EntryError(`field '${k}' must be absent with policy '${policy}'`);
      if (need) f[k] = bstr(k, map.get(k), 32);
    }
    // Secret tier (spec/entry.md): salt and commitment together, only with a watermark policy.
    if (map.has("secret_mark_salt") || map.has("secret_mark_commitment")) {
      if (!(map.has("secret_mark_salt") && map.has("secret_mark_commitment"))) {
        throw new EntryError("fields 'secret_mark_salt' and 'secret_mark_commitment' must be present together");
      }
      if (!needs[0]) throw new EntryError(`the secret-mark fields must be absent with policy '${policy}'`);
      f.secret_mark_salt = bstr("secret_mark_salt", map.get("secret_mark_salt"), 16);
      f.secret_mark_commitment = bstr("secret_mark_commitment", map.get("secret_mark_commitment"), 32);
    }
    f.issued_at = uint("issued_at", map.get("issued_at"), MAX_TIME);
    f.issuer_key_id = bstr("issuer_key_id", map.get("issuer_key_id"), 32);
  }
  const batch = map.has("batch") ? batchProof(map.get("batch")) : null;
  // The map without "sig" and "batch", cut from the exact bytes: deterministic order is kept.
  const kept = [];
  map.entries.forEach(([k], i) => {
    if (k !== "sig" && k !== "batch") kept.push(bytes.subarray(...map.spans[i]));
  });
  const signingBytes = concat(SIGNATURE_LABEL, encodeHead(5, kept.length), ...kept);
  return { known: true, type, fields: f, sig, batch, signingBytes };
}

/** Whether `entry` (from decodeEntry) carries a valid Ed25519 signature by `publicKey`: over its
 * signing bytes, or over the batch message of the batch tree its `batch` proof places it in. */
export async function verifyEntrySignature(entry, publicKey) {
  if (entry.type === REGISTRATION && !equal(entry.fields.issuer_public_key, publicKey)) return false;
  if (entry.type !== REGISTRATION && !equal(entry.fields.issuer_key_id, await issuerKeyId(publicKey))) return false;
  if (entry.batch === null) return ed25519Verify(publicKey, entry.sig, entry.signingBytes);
  const { index, size, proof } = entry.batch;
  const root = await rootFromInclusionProof(await leafHash(entry.signingBytes), index, size, proof);
  return ed25519Verify(publicKey, entry.sig, concat(BATCH_SIGNATURE_LABEL, u64be(size), root));
}

// --- marking parameters (spec/watermark.md) -------------------------------------------------------

const PARAMS_ALGS = { chaos: "emshield-chaos-fsm-v1", wm: "emshield-wm-uv-rs-v1", fp: "emshield-fp-spectrum-probes-v1" };
const PARAMS_RANGES = {
  rs_nsym: [2, 32], tau_milli: [100, 100000], accept_log10_p: [-300, -1],
  fp_k: [1, 256], fp_probes: [1, 256], fp_threshold_milli: [1, 10000],
};
const PARAMS_KEYS = ["v", "chaos", "wm", "fp", "backbone_id", "vk", "layers", ...Object.keys(PARAMS_RANGES)];

/** The marking parameters of a registration (version 1), or throws EntryError saying why the
 * blob is not such parameters (the log only checks that it is deterministic CBOR). */
export function decodeMarkingParams(blob) {
  const map = decodeStrict(blob, "marking parameters", PARAMS_DEPTH);
  if (!(map instanceof CborMap)) throw new EntryError("marking parameters are not a CBOR map");
  const keys = map.keys();
  if (keys.length !== PARAMS_KEYS.length || PARAMS_KEYS.some((k) => !map.has(k))) {
    throw new EntryError(`marking parameters must have exactly the fields ${[...PARAMS_KEYS].sort().join(", ")}`);
  }
  if (map.get("v") !== 1) throw new EntryError(`unsupported marking parameters version ${map.get("v")}`);
  for (const [k, want] of Object.entries(PARAMS_ALGS)) {
    if (map.get(k) !== want) throw new EntryError(`unknown marking algorithm ${k} = ${JSON.stringify(map.get(k))}`);
  }
  const backbone = map.get("backbone_id");
  if (typeof backbone !== "string") throw new EntryError("field 'backbone_id' must be text");
  const vk = map.get("vk");
  if (!(vk instanceof Uint8Array) || vk.length !== 32) throw new EntryError("field 'vk' must be 32 bytes");
  const layers = map.get("layers");
  if (!Array.isArray(layers) || layers.length < 1 || layers.length > 4096) throw new EntryError("1..4096 layers required");
  const names = new Set();
  for (const l of layers) {
    const ok = Array.isArray(l) && l.length === 3 && typeof l[0] === "string" &&
      [l[1], l[2]].every((d) => Number.isInteger(d) && d >= 1 && d <= 1 << 20);
    if (!ok) throw new EntryError("each layer must be [name, out 1..2^20, in 1..2^20]");
    if (names.has(l[0])) throw new EntryError(`duplicate layer ${l[0]}`);
    names.add(l[0]);
  }
  const out = { backbone_id: backbone, vk, layers: layers.map(([n, o, i]) => ({ name: n, out: o, in: i })) };
  for (const [k, [lo, hi]] of Object.entries(PARAMS_RANGES)) {
    const v = map.get(k);
    if (!Number.isInteger(v) || v < lo || v > hi) throw new EntryError(`field '${k}' must be an integer in ${lo}..${hi}`);
    out[k] = v;
  }
  if (out.rs_nsym % 2) throw new EntryError("field 'rs_nsym' must be even");
  return out;
}

// --- fingerprint side records (spec/fingerprint.md) -----------------------------------------------

export const MAX_SIDE_RECORD = 1 << 20;

/** A published fingerprint: {params (32-byte digest), layers: [{name, features}]}. */
export function decodeFingerprint(blob) {
  if (blob.length > MAX_SIDE_RECORD) throw new EntryError(`side record is over ${MAX_SIDE_RECORD} bytes`);
  const map = decodeStrict(blob, "fingerprint", 4);
  const keys = map instanceof CborMap ? map.keys() : [];
  if (keys.length !== 4 || !["v", "alg", "params", "layers"].every((k) => map.has(k))) {
    throw new EntryError("a fingerprint is a map of exactly v, alg, params, layers");
  }
  if (map.get("v") !== 1 || map.get("alg") !== PARAMS_ALGS.fp) throw new EntryError("unsupported fingerprint version or algorithm");
  const params = map.get("params");
  if (!(params instanceof Uint8Array) || params.length !== 32 || !Array.isArray(map.get("layers"))) {
    throw new EntryError("bad params digest or layer list");
  }
  const layers = map.get("layers").map((l) => {
    if (!(Array.isArray(l) && l.length === 2 && typeof l[0] === "string" && Array.isArray(l[1]))) {
      throw new EntryError("each layer must be [name, [features]]");
    }
    if (!l[1].every((x) => Number.isInteger(x) && x >= 0 && x < 1 << 24)) throw new EntryError("features must be integers in [0, 2^24)");
    return { name: l[0], features: l[1] };
  });
  return { params, layers };
}
