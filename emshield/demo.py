"""`./run demo`: the EMShield lifecycle end to end on embedded defaults.

Stages run in order; a stage whose issue has not landed says so plainly instead of pretending.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


class StageNotBuilt(Exception):
    """Raised by a stage whose implementation has not landed yet."""

    def __init__(self, issue: int) -> None:
        super().__init__(f"not built yet (issue #{issue})")
        self.issue = issue


@dataclass
class Stage:
    name: str
    run: Callable[[], str]


def _not_built(issue: int) -> Callable[[], str]:
    def _run() -> str:
        raise StageNotBuilt(issue)

    return _run


def _check_install() -> str:
    import torch

    import emshield

    return f"emshield {emshield.__version__}, torch {torch.__version__}"


STAGES: list[Stage] = [
    Stage("installation check", _check_install),
    Stage("start transparency log on 127.0.0.1", _not_built(3)),
    Stage("register issuer", _not_built(8)),
    Stage("train / reuse LoRA core on SmolLM2-135M-Instruct (financial task)", _not_built(4)),
    Stage("mark core (watermark + fingerprint)", _not_built(5)),
    Stage("issue to three devices (seal, log entry, bundle)", _not_built(8)),
    Stage("install a bundle on a device and run a prompt", _not_built(6)),
    Stage("verify a leaked merged model with emshield-verify", _not_built(8)),
    Stage("audit the log with emshield-audit", _not_built(7)),
]


def main() -> int:
    missing: list[str] = []
    for i, stage in enumerate(STAGES, 1):
        prefix = f"[{i}/{len(STAGES)}] {stage.name}"
        print(f"{prefix} ...", flush=True)
        t0 = time.monotonic()
        try:
            detail = stage.run()
        except StageNotBuilt as exc:
            print(f"{prefix}: SKIPPED, {exc}", flush=True)
            missing.append(stage.name)
            continue
        print(f"{prefix}: ok ({time.monotonic() - t0:.1f} s) {detail}", flush=True)
    if missing:
        print(f"\nDemo ran {len(STAGES) - len(missing)} of {len(STAGES)} stages; not built yet: " + "; ".join(missing))
    else:
        print("\nDemo complete.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
