"""Why an issuance is refused (spec/issue.md §6): one exception with a stable reason name."""

from __future__ import annotations


class IssueError(Exception):
    """Issuance refused or impossible; ``reason`` is a short stable name (spec/issue.md, "Refusals")."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class LogMisbehavingError(IssueError):
    """The log answered something its own signed checkpoint contradicts (a bad proof or checkpoint).
    A batch stops on it: no further device is issued through a log that cannot be trusted."""

    def __init__(self, detail: str) -> None:
        super().__init__("log-misbehaving", detail)
