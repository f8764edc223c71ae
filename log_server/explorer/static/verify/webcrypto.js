// The only cryptography the explorer uses: WebCrypto's SHA-256 and Ed25519 (spec/explorer.md §2).
// WebCrypto exists only in secure contexts (HTTPS, or http://localhost / 127.0.0.1), so a page
// served over plain HTTP elsewhere cannot verify anything and must say so (`webCryptoProblem`).

const keyCache = new Map();

/** Why this browser cannot verify, or null when SHA-256 and Ed25519 both work. */
export async function webCryptoProblem() {
  if (!globalThis.crypto?.subtle) {
    return "this browser offers no WebCrypto here (it needs HTTPS, or http://localhost)";
  }
  try {
    // RFC 8032 §7.1, test 1: the empty message.
    const pk = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    const sig = hex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b");
    if (!(await ed25519Verify(pk, sig, new Uint8Array(0)))) return "this browser's Ed25519 rejects the RFC 8032 test vector";
    if (await ed25519Verify(pk, sig, new Uint8Array([0]))) return "this browser's Ed25519 accepts a wrong message";
  } catch (e) {
    return `this browser's WebCrypto has no Ed25519 (${e.message || e})`;
  }
  return null;
}

function hex(s) {
  return Uint8Array.from(s.match(/../g), (b) => parseInt(b, 16));
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

/** Ed25519 (RFC 8032) verification of `signature` over `message` with a raw 32-byte key. False
 * for a wrong signature and for a key WebCrypto refuses to import (not a point): fail closed. */
export async function ed25519Verify(publicKey, signature, message) {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  const id = Array.from(publicKey).join(",");
  let key = keyCache.get(id);
  if (key === undefined) {
    try {
      key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
    } catch {
      return false;
    }
    keyCache.set(id, key);
  }
  return crypto.subtle.verify({ name: "Ed25519" }, key, signature, message);
}
