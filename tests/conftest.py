"""Shared test set-up: no network to any hub, fixed seeds, and the store fixtures every package's
tests may use (`_kit.logs`: each store test runs on SQLite and on PostgreSQL)."""

import os

from _kit import postgres as _pg
from _kit.logs import postgres, sqlite_log_files, store_kind, store_location  # noqa: F401  (fixtures)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_terminal_summary(terminalreporter) -> None:
    """Say loudly, at the end, when the PostgreSQL half of the store tests did not run."""
    if _pg.skipped_reason is not None:
        skipped = len([r for r in terminalreporter.stats.get("skipped", []) if "postgresql" in r.nodeid])
        terminalreporter.write_sep("!", f"PostgreSQL NOT TESTED: {skipped} PostgreSQL store tests skipped", red=True)
        terminalreporter.write_line(f"reason: {_pg.skipped_reason}", red=True)
