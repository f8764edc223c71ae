"""Garbage-collector settings for the server's long-running processes (workers, sequencer).

Why: a batch request builds about ten container objects per entry (decoded entry, batch proof,
prepared entry, index fields ...), 20,000 or more per request, and drops them all when answered.
With CPython's default young-generation threshold (700 allocations) that is ~30 young collections
per request, each walking whatever is alive at that moment, the request's own half-built batch
included, and promoting it to older generations that are walked again. Every one of these objects
is freed by reference counting anyway; a young threshold of YOUNG_THRESHOLD lets most of them die
before a collection sees them (measurements: spec/notes/sequencer-internals.md). The collector still
runs, so reference cycles are still reclaimed.

gc.freeze() moves everything loaded at start-up (Flask, cryptography, the app) out of the
collector's generations: a full collection then no longer walks the tens of thousands of
long-lived objects of the imports.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000


def settle_after_startup() -> None:
    """Call once a process has loaded what it serves with, before it takes requests."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
