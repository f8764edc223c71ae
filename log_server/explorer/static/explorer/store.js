// What this browser remembers (localStorage), per pinned log key: the keys the reader pinned,
// the checkpoints it verified (spec/explorer.md §3.2), and evidence of a log's misbehaviour.
// Nothing here comes from a server unverified: only checkpoints whose note verified are kept.

import { fromBase64, toBase64 } from "../verify/bytes.js";

const PREFIX = "emshield-explorer/v1/";
const MAX_SEEN = 200;

function read(key, fallback) {
  try {
    const v = JSON.parse(localStorage.getItem(PREFIX + key));
    return v ?? fallback;
  } catch {
    return fallback;
  }
}

function write(key, value) {
  localStorage.setItem(PREFIX + key, JSON.stringify(value));
}

export function pinned() {
  return read("pins", { log: "", witnesses: [] });
}

export function pin(log, witnesses) {
  write("pins", { log, witnesses });
}

export function unpin() {
  localStorage.removeItem(PREFIX + "pins");
}

/** Checkpoints verified under `logKey` (its full verifier key text), oldest first. */
export function seen(logKey) {
  return read(`seen/${logKey}`, []).map((c) => ({ ...c, root: fromBase64(c.root, "stored root") }));
}

export function largestSeen(logKey) {
  const all = seen(logKey);
  return all.length ? all.reduce((a, b) => (b.size > a.size ? b : a)) : null;
}

export function remember(logKey, checkpoint, note) {
  const all = read(`seen/${logKey}`, []);
  if (all.some((c) => c.size === checkpoint.size)) return;
  all.push({ size: checkpoint.size, root: toBase64(checkpoint.root), note, seenAt: new Date().toISOString() });
  all.sort((a, b) => a.size - b.size);
  // Keep the first and the latest ones: the largest is what the next check is against.
  write(`seen/${logKey}`, all.length > MAX_SEEN ? [all[0], ...all.slice(all.length - MAX_SEEN + 1)] : all);
}

export function evidence(logKey) {
  return read(`evidence/${logKey}`, []);
}

export function recordEvidence(logKey, item) {
  const all = evidence(logKey);
  if (all.some((e) => e.newNote === item.newNote && e.oldNote === item.oldNote)) return;
  all.push({ ...item, at: new Date().toISOString() });
  write(`evidence/${logKey}`, all.slice(-20));
}
