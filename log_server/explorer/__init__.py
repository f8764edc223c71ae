"""The log explorer: a read-only page that verifies what it shows in the reader's browser
(spec/explorer.md). The server only ships static files; every check runs in the page."""

from .blueprint import explorer

__all__ = ["explorer"]
