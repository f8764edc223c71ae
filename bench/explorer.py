"""Log explorer benchmark (issue #21): first paint and a search on a log of 10^5 entries, in real
headless Chromium (Debian's, driven by Playwright), on a log served by this tree's server.

    python bench/explorer.py [--size 100000] [--repeat 5]

The log is filled through the server's own write path (`bulk_fill`: Sequencer.integrate, real
signed entries, no HTTP). Every visit is a new browser context (empty cache and localStorage), the
log key pinned before the page's scripts run, so each figure is a reader's first visit; a
"repeat visit" (same context: cached scripts and full tiles, one consistency proof against the
checkpoint it verified before) is timed too. Figures, median and worst of --repeat:
- first contentful paint of /explore/ [target <= 1 s], and the time until the checkpoint is
  verified and the newest entry bundle (<= 256 rows) is drawn and proved;
- a search by device UUID, from submitting the form to the hit's three checks settled (inclusion
  proof, field match, issuer signature) [target <= 1 s];
- one issuer-scan step (16 entry bundles, 4,096 leaves, each bundle proved);
Baselines measured in the same run and browser: the first contentful paint of GET /checkpoint (a
plain-text answer of the same server), and the same two requests the search makes (index
look-up, inclusion proof) fetched from the page without decoding, verifying or drawing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test kit's Chromium launcher

from log_append import Conn, OwnServer, _key, _pub, _unsigned, bulk_fill, registration  # noqa: E402

from _kit.browser import VIEWPORT, chromium  # noqa: E402
from emshield.tlog import entry as E  # noqa: E402

TARGET_MS = 1000.0
SEED = b"explorer-bench"

PIN = """([key]) => { if (!localStorage.getItem("emshield-explorer/v1/pins"))
    localStorage.setItem("emshield-explorer/v1/pins", JSON.stringify({log: key, witnesses: []})); }"""
SETTLED = """() => document.querySelector("#browse [data-check]") && !document.querySelector("[data-check][data-state=wait]")
    && document.querySelector("#banner").dataset.state !== "wait" """
# Submit the search form in the page and time it there, until the results for this query have no
# pending check (polled once per animation frame).
SEARCH = """async ([q, scope]) => {
    const box = document.querySelector("#search-results");
    const t0 = performance.now();
    document.querySelector("#search-input").value = q;
    document.querySelector("#search-button").click();
    for (;;) {
        await new Promise(requestAnimationFrame);
        if (box.dataset.query === q && box.querySelector("[data-check]") &&
            !box.querySelector("[data-check][data-state=wait]")) break;
    }
    const states = [...box.querySelectorAll("[data-check]")].map((n) => n.dataset.state);
    return [performance.now() - t0, states];
}"""
RAW = """async ([uuid, size]) => {
    const t0 = performance.now();
    const hits = await (await fetch(`../v1/issuances?device_uuid=${uuid}`, {cache: "no-store"})).json();
    const index = hits.issuances[0].index;
    await (await fetch(`../v1/proof/inclusion?index=${index}&tree_size=${size}`, {cache: "no-store"})).json();
    return performance.now() - t0;
}"""
FCP = "() => performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null"


def visit(browser, url: str, key: str, context=None) -> tuple[object, object, float, float]:
    """Open the explorer; (context, page, first contentful paint ms, ms until verified and drawn)."""
    ctx = context or browser.new_context(viewport=VIEWPORT)
    ctx.add_init_script(script=f"({PIN})([{json.dumps(key)}])")
    page = ctx.new_page()
    page.goto(url + "/explore/")
    page.wait_for_function(SETTLED, timeout=60_000)
    ready = page.evaluate("performance.now()")
    page.wait_for_function(f"() => ({FCP})() !== null")
    if page.get_attribute("#banner", "data-state") != "pass":
        raise RuntimeError(f"the page did not verify the log: {page.text_content('#banner')}")
    return ctx, page, page.evaluate(FCP), ready


def stats(values: list[float]) -> str:
    return f"median {statistics.median(values):7.1f} ms, worst {max(values):7.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000, help="log size in entries (default 10^5)")
    ap.add_argument("--repeat", type=int, default=5, help="visits and searches to time (default 5)")
    ap.add_argument("--server", default="granian", choices=["granian", "gunicorn"], help="WSGI server (default granian)")
    args = ap.parse_args()
    key = _key(SEED)
    kid = E.issuer_key_id(_pub(key))
    with tempfile.TemporaryDirectory(prefix="emshield-bench-explorer-") as tmp:
        server = OwnServer(Path(tmp), workers=1, threads=8, server=args.server)
        try:
            Conn(server.url, server.token).json("POST", "/v1/issuers", body=registration(SEED),
                                                ctype="application/cbor", auth=True)
            secs = bulk_fill(server.db, SEED, 0, args.size - 1)
            print(f"log of {args.size:,} entries (bulk-filled in {secs:.1f} s); Chromium, server {args.server}, 1 worker", flush=True)
            devices = [_unsigned(SEED, n, kid).device_uuid_text for n in
                       ((args.size // 2 + 7919 * k) % (args.size - 1) for k in range(args.repeat))]
            fcp, ready, search, raw, base_fcp, repeat_fcp, repeat_ready, scan = [], [], [], [], [], [], [], []
            with chromium() as browser:
                for k in range(args.repeat):
                    base = browser.new_context(viewport=VIEWPORT)
                    bp = base.new_page()
                    bp.goto(server.url + "/checkpoint")
                    bp.wait_for_function(f"() => ({FCP})() !== null")
                    base_fcp.append(bp.evaluate(FCP))
                    base.close()

                    ctx, page, paint, done = visit(browser, server.url, server.verifier_key)
                    fcp.append(paint)
                    ready.append(done)
                    ms, states = page.evaluate(SEARCH, [devices[k], "#search-results"])
                    if states != ["pass"] * 3:
                        raise RuntimeError(f"search checks: {states}")
                    search.append(ms)
                    raw.append(page.evaluate(RAW, [devices[k], args.size]))
                    ms, states = page.evaluate(SEARCH, [kid.hex(), "#search-results"])
                    if not states or set(states) != {"pass"}:
                        raise RuntimeError(f"scan checks: {set(states)}")
                    scan.append(ms)
                    page.close()
                    _, page, paint, done = visit(browser, server.url, server.verifier_key, ctx)
                    repeat_fcp.append(paint)
                    repeat_ready.append(done)
                    ctx.close()
        finally:
            server.stop()
    med = statistics.median
    print(f"first contentful paint of /explore/ (first visit): {stats(fcp)} (target {TARGET_MS:.0f} ms: "
          f"x{max(fcp) / TARGET_MS:.2f} worst); baseline GET /checkpoint as a page: {stats(base_fcp)} "
          f"(ratio x{med(fcp) / med(base_fcp):.2f})")
    print(f"  until the checkpoint is verified and the newest bundle drawn and proved: {stats(ready)}")
    print(f"  repeat visit (cached, consistency proof against the last checkpoint): paint {stats(repeat_fcp)}, "
          f"verified {stats(repeat_ready)}")
    print(f"search by device UUID, submit to all checks settled: {stats(search)} (target {TARGET_MS:.0f} ms: "
          f"x{max(search) / TARGET_MS:.2f} worst); baseline: the same two requests without verifying or drawing "
          f"{stats(raw)} (ratio x{med(search) / med(raw):.2f})")
    print(f"issuer scan step (16 bundles, 4,096 leaves, each bundle proved, {min(4096, args.size):,} rows drawn): {stats(scan)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
