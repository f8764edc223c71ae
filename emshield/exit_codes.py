"""The exit codes every EMShield command shares (spec/cli.md): `emshield`, `emshield-log`,
`emshield-verify`, `emshield-audit` and `emshield-witness` give a code the same meaning, so a
script can tell "retry later" from "your input is wrong" from "the log lies" without knowing
which command it ran.

`Failure` is how a command refuses: one line for the user on stderr, and the code. Click's own
usage errors (an unknown option, a missing argument) exit with `BAD_INPUT` too.
"""

from __future__ import annotations

import click

OK = 0  # done (emshield-verify: a device is named by per-device evidence)
NEGATIVE = 1  # the check ran and the answer is no (verify: nothing named) or not all of it was done (issue: refusals)
BAD_INPUT = 2  # an option, file, key or URL is missing, malformed, unsafe or not what it must be
LOG_MISBEHAVING = 3  # the log contradicts its own signed statements; the evidence is reported
UNAVAILABLE = 4  # the log (or another server) could not be reached, timed out or failed: retry later
INTERNAL = 5  # a bug: reported as such, never as a verdict
CORE_ONLY = 6  # emshield-verify: a core lineage is identified, no device is named
LOCAL_STATE = 7  # this machine's state is unusable: a corrupt or locked state file, a pinned key that differs

NAMES = {OK: "ok", NEGATIVE: "negative", BAD_INPUT: "bad_input", LOG_MISBEHAVING: "log_misbehaving",
         UNAVAILABLE: "log_unavailable", INTERNAL: "internal_error", CORE_ONLY: "core_only", LOCAL_STATE: "local_state"}


class Failure(click.ClickException):
    """A refusal with one of the shared exit codes (default: bad input)."""

    def __init__(self, message: str, exit_code: int = BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @property
    def kind(self) -> str:
        return NAMES[self.exit_code]
