"""The collector settings of the server processes (log_server.runtime.gc_tuning), checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

from log_server.runtime.gc_tuning import YOUNG_THRESHOLD

_PROBE = """
import gc, json, weakref
from log_server.runtime.gc_tuning import settle_after_startup
default = gc.get_threshold()
settle_after_startup()
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a            # a reference cycle: only the collector can free it
gone = weakref.ref(a)
del a, b
churn = [[] for _ in range(3 * %d)]  # enough allocations to trigger young collections
print(json.dumps({"default": default, "now": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "enabled": gc.isenabled(), "cycle_freed": gone() is None}))
""" % YOUNG_THRESHOLD


def test_settled_process_keeps_collecting_cycles_with_a_larger_young_generation() -> None:
    out = json.loads(subprocess.run([sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True).stdout)
    assert out["now"] == [YOUNG_THRESHOLD, *out["default"][1:]] and YOUNG_THRESHOLD > out["default"][0]
    assert out["frozen"] > 1000  # the imports are out of the collector's generations
    assert out["enabled"] and out["cycle_freed"]
