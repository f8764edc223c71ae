"""The report printed to PDF by headless Chromium (``page.pdf``), the same engine its tests render
it with. Chromium is found where Debian installs it; without it (or without playwright) the PDF is
refused with a clear error, never silently skipped (spec/report.md, "PDF").

The page is loaded with every request refused: the report is self-contained, so printing it must
not reach anything either.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM_PATHS = (Path("/usr/bin/chromium"), Path("/usr/bin/chromium-browser"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


class PdfUnavailable(Exception):
    """No Chromium or no playwright here: the PDF cannot be made."""


def find_chromium() -> Path:
    for path in CHROMIUM_PATHS:
        if path.exists():
            return path
    found = shutil.which("chromium")
    if found is None:
        raise PdfUnavailable("--report-pdf needs Chromium, which is not installed (Debian: apt-get install chromium)")
    return Path(found)


def check_available() -> Path:
    """The Chromium to print with (raises PdfUnavailable before any work is done)."""
    chromium = find_chromium()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        raise PdfUnavailable("--report-pdf needs the playwright package (pip install playwright==1.65.2)") from exc
    return chromium


def write_pdf(html: str, out: Path) -> None:
    """Print ``html`` to ``out`` (A4, backgrounds kept)."""
    from playwright.sync_api import sync_playwright

    chromium = check_available()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.route("**/*", lambda route: route.abort())
            page.set_content(html, wait_until="load")
            page.pdf(path=str(out), format="A4", print_background=True,
                     margin={"top": "12mm", "bottom": "12mm", "left": "10mm", "right": "10mm"})
        finally:
            browser.close()
