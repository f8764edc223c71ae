// C2SP tlog-tiles paths and entry bundles (spec/tiles.md): pure functions over integers and bytes.

import { FormatError } from "./bytes.js";

export const TILE_WIDTH = 256;

/** `<N>` of a tile path: zero-padded 3-digit elements, all but the last prefixed with "x". */
export function encodeIndex(n) {
  if (!Number.isSafeInteger(n) || n < 0) throw new FormatError(`tile index must be a non-negative integer, got ${n}`);
  let digits = String(n);
  digits = "0".repeat((3 - (digits.length % 3)) % 3) + digits;
  const groups = digits.match(/.../g);
  return groups.map((g, i) => (i < groups.length - 1 ? `x${g}` : g)).join("/");
}

/** The entry bundle holding leaf `index` in a tree of `size` leaves: {tile, first, width, path}. */
export function bundleOf(index, size) {
  if (!(0 <= index && index < size)) throw new FormatError(`leaf ${index} is not in a tree of ${size} leaves`);
  const tile = Math.floor(index / TILE_WIDTH);
  return bundle(tile, size);
}

/** Entry bundle number `tile` as a tree of `size` leaves determines it (partial at the edge). */
export function bundle(tile, size) {
  const first = tile * TILE_WIDTH;
  const width = Math.min(TILE_WIDTH, size - first);
  if (width < 1) throw new FormatError(`entry bundle ${tile} is beyond a tree of ${size} leaves`);
  const path = `tile/entries/${encodeIndex(tile)}${width === TILE_WIDTH ? "" : `.p/${width}`}`;
  return { tile, first, width, path };
}

/** The `width` entries of a bundle (uint16 big-endian length, then the leaf), exactly. */
export function decodeBundle(data, width, what) {
  const out = [];
  let at = 0;
  while (at < data.length) {
    if (at + 2 > data.length) throw new FormatError(`${what}: truncated length prefix at byte ${at}`);
    const size = (data[at] << 8) | data[at + 1];
    const end = at + 2 + size;
    if (end > data.length) throw new FormatError(`${what}: entry ${out.length} is truncated`);
    out.push(data.subarray(at + 2, end));
    at = end;
    if (out.length > width) throw new FormatError(`${what}: more than ${width} entries`);
  }
  if (out.length !== width) throw new FormatError(`${what}: ${out.length} entries, want ${width}`);
  return out;
}
