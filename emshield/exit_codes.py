"""The exit codes every EMShield command shares (spec/cli.md): `emshield`, `emshield-log`,
`emshield-verify`, `emshield-audit` and `emshield-witness` give a code the same meaning, so a
script can tell "retry later" from "your input is wrong" from "the log lies" without knowing
which command it ran.

`Failure` is how a command refuses: one line for the user on stderr, and the code. Click's own
usage errors (an unknown option, a missing argument) exit with `BAD_INPUT` too.
"""

from __future__ import annotations

import json
import traceback

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


def refuse(message: str, code: int = BAD_INPUT, *, as_json: bool = False, **extra: object) -> Failure:
    """The `Failure` to raise; with ``--json`` its object (spec/cli.md §2) is printed on stdout first, so
    a script reading stdout always gets JSON. ``extra`` adds fields (e.g. the work done before the failure)."""
    if as_json:
        click.echo(json.dumps({"ok": False, "error": NAMES[code], "detail": message, "exit_code": code, **extra},
                              indent=2, sort_keys=True))
    return Failure(message, code)


def _guarded_invoke(invoke, ctx: click.Context):
    try:
        return invoke(ctx)
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except Exception as exc:  # a bug: exit 5 with its traceback, never a code that reads as an answer
        traceback.print_exc()
        raise Failure(f"internal error (a bug in EMShield; please report it with the traceback above): "
                      f"{type(exc).__name__}: {exc}", INTERNAL) from exc


class Group(click.Group):
    """A command group whose unexpected exceptions exit with `INTERNAL` (Python's own status, 1, would
    read as `NEGATIVE`)."""

    def invoke(self, ctx: click.Context):
        return _guarded_invoke(super().invoke, ctx)


class Command(click.Command):
    """A command whose unexpected exceptions exit with `INTERNAL` (see `Group`)."""

    def invoke(self, ctx: click.Context):
        return _guarded_invoke(super().invoke, ctx)
