"""The verifier's refusals and failures, one place for every module of `verifier` to raise and catch.

Each maps to one exit code (spec/cli.md): bad input (2, `BadSuspect`, `NotALog`), a misbehaving
log (3), an unavailable log (4). `Unreadable` is not a failure: the suspect carries nothing to read
under some parameters, and the verdict says so.
"""

from __future__ import annotations


class BadSuspect(ValueError):
    """The suspect (or backbone) file is missing, malformed, unsafe, or unusable as given."""


class Unreadable(ValueError):
    """Nothing to read under some parameters (e.g. a marked layer with ΔW = 0: the suspect is the
    backbone there). Not bad input: such a suspect carries no mark or fingerprint to match."""


class NotALog(ValueError):
    """No EMShield log answers at the URL given (a plain 404 for its checkpoint): the URL is wrong,
    which is bad input, not a log misbehaving."""


class LogMisbehaving(RuntimeError):
    """The log answered something its signed checkpoint, its own entries or its API contradict."""


class LogUnavailable(RuntimeError):
    """The log could not be reached, or failed with a server error: nothing can be concluded."""
