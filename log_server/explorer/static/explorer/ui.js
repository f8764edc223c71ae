// DOM helpers. Text from the log (issuer names, unknown entries) only ever goes in as text nodes,
// never as HTML, and the page's Content-Security-Policy admits no inline script either.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export const $ = (sel) => document.querySelector(sel);

const MARK = { pass: "✓", fail: "✗", skip: "–", wait: "…" };

/** A check: computed by this page, shown as pass (green tick), fail (red cross), skip (grey:
 * not checked, e.g. no key pinned) or wait. `name` is its data-check name (tests read it). */
export function check(name, state = "wait", text = "checking…") {
  const node = el("span", { class: "check", dataset: { check: name } });
  setCheck(node, state, text);
  return node;
}

export function setCheck(node, state, text) {
  node.dataset.state = state;
  node.title = text;
  replace(node, el("span", { class: "mark", "aria-hidden": "true" }, MARK[state]), " ", text);
}

/** Why a check was not made (grey, not red): nothing to check it against, e.g. no pinned key. */
export class NotChecked extends Error {}

/** Run `work` (async, resolving to the text of a pass) into a check. A NotChecked error leaves it
 * grey; any other error, whatever threw it, is a fail: a check is green only if `work` returned. */
export async function settle(node, work) {
  try {
    setCheck(node, "pass", await work());
    return true;
  } catch (e) {
    setCheck(node, e instanceof NotChecked ? "skip" : "fail", e?.message || String(e));
    return false;
  }
}

export function hexShort(hex, n = 16) {
  return hex.length > n ? `${hex.slice(0, n)}…` : hex;
}

export function when(seconds) {
  const n = Number(seconds);
  if (!Number.isFinite(n) || n > 8.64e12) return `${seconds} (POSIX seconds)`;
  return `${new Date(n * 1000).toISOString().replace(".000Z", "Z")}`;
}

export function code(text, cls = "") {
  return el("code", { class: cls || undefined }, text);
}
