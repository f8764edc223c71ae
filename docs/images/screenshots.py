"""Make the README's screenshots from a real demo run: the log explorer on the demo's live log (its
key pinned, the leaking device's issuance opened) and the forensic report the demo writes.

    .venv/bin/python docs/images/screenshots.py [--model tiny|smollm2]

The committed images come from `--model tiny` (the default here: minutes, not the SmolLM2 training
run of a first `./run demo`).

Runs every stage of `./run demo`, then, while the demo's log still serves, drives Debian's Chromium
(tests/_kit/browser.py) over it. Writes explorer.png and report.png beside this file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tests"))

from _kit.browser import chromium  # noqa: E402

from emshield.demo import LEAKER, Demo, run_stages  # noqa: E402

SETTLED = """() => document.querySelector("[data-check]") && !document.querySelector("[data-check][data-state=wait]")
    && document.querySelector("#banner").dataset.state !== "wait\""""
VIEW = {"width": 1200, "height": 820}


def shoot(demo: Demo, report: Path) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport=VIEW)
        page.goto(demo.url + "/explore/")
        page.fill("#log-key", demo.vkey)
        page.click("#pin-button")
        page.wait_for_function(SETTLED, timeout=30_000)
        uuid = demo.devices[LEAKER]["uuid"]
        page.fill("#search-input", uuid)
        page.click("#search-button")
        page.wait_for_function("(q) => document.querySelector('#search-results').dataset.query === q", arg=uuid)
        page.click("#search-table tr[data-leaf] a")
        page.wait_for_function("() => document.querySelector('#entry-title')?.textContent.startsWith('Entry ')")
        page.wait_for_function(SETTLED, timeout=30_000)
        page.query_selector("#entry").scroll_into_view_if_needed()
        page.screenshot(path=str(HERE / "explorer.png"))
        page = browser.new_page(viewport=VIEW)
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else r.abort())
        page.goto(report.resolve().as_uri())
        page.screenshot(path=str(HERE / "report.png"))
        page.evaluate("document.querySelector('[data-plot=bits]').scrollIntoView()")
        page.screenshot(path=str(HERE / "report-plots.png"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", choices=["smollm2", "tiny"])
    args = ap.parse_args()
    report = Path(tempfile.mkdtemp(prefix="emshield-shots-")) / "report.html"
    demo = Demo(model=args.model, report=report)
    with demo.stack:
        if run_stages(demo.stages()) != 0:
            return 1
        shoot(demo, report)
    print(f"wrote {', '.join(str(p) for p in sorted(HERE.glob('*.png')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
