"""Real headless Chromium for page tests: Debian's /usr/bin/chromium driven by Playwright (from PyPI;
its own browser download is never used). Launch flags are the ones known to work on these machines:
without the background-networking flags Chromium keeps trying hosts this closed network refuses.
Playwright gives every launch a new, empty profile directory.

Screenshots go to tests/_output/ (gitignored), which CI keeps as artefacts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .ci import require
from .paths import TESTS

CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = TESTS / "_output"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}


def screenshot_dir(name: str) -> Path:
    path = OUTPUT / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium (Playwright Browser); fails in CI and skips elsewhere if it is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    require(sync_playwright is not None, "playwright is not installed (pip install -e .[test])")
    require(CHROMIUM.exists() or shutil.which("chromium") is not None,
            "Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()
