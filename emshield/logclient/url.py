"""What a log's base URL must be, checked before any request (one rule for every command's `--log`)."""

from __future__ import annotations

from urllib.parse import urlsplit


def log_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a log's base URL (for the user, after the option's name), or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"must be an http(s) URL, got {url[:80]!r}"
    return None
