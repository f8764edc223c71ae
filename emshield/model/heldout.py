"""The held-out records a training run kept back, written beside its core (``heldout.json``) so that
`emshield issue` measures the watermark's cost on the task by default (spec/issue.md §3).

Only the records and the prompt format travel: the issuer's fidelity check needs nothing else, and
the file is a plain instruction-format list, so it is also a valid ``--task-data`` file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from emshield.model.prompt import PLAIN, PROMPT_FORMATS

HELDOUT_FILE = "heldout.json"
TRAIN_LOG_FILE = "train_log.json"


@dataclass(frozen=True)
class HeldOut:
    path: Path
    prompt_format: str


def write_heldout(out_dir: Path, records: list[dict[str, str]]) -> Path:
    path = Path(out_dir) / HELDOUT_FILE
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def heldout_beside(core_path: Path) -> HeldOut | None:
    """The held-out records of the run that wrote ``core_path`` (its folder's ``heldout.json``), with
    the prompt format that run trained with (its ``train_log.json``; plain when unreadable)."""
    folder = Path(core_path).parent
    path = folder / HELDOUT_FILE
    if not path.is_file():
        return None
    prompt_format = PLAIN
    try:
        config = json.loads((folder / TRAIN_LOG_FILE).read_text(encoding="utf-8"))["config"]
        if config.get("prompt_format") in PROMPT_FORMATS:
            prompt_format = config["prompt_format"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return HeldOut(path, prompt_format)
