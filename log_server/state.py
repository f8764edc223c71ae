"""What one app (one worker process) holds for its requests: the store, the sequencer it appends
through, the issuer cache, the witnesses. Kept in ``app.extensions`` so the blueprint's routes
reach it through `current` without module-level globals."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import current_app

from .admission import RegisteredIssuers
from .config import ServerConfig
from .cosigning import Cosigner, WitnessEndpoint
from .sequencer import SequencerLike
from .storage import LogStore

EXTENSION = "emshield_log"


@dataclass
class LogState:
    """Per-app state shared by the request threads of one process."""

    config: ServerConfig
    store: LogStore
    sequencer: SequencerLike
    issuers: RegisteredIssuers
    origin: str
    witnesses: list[WitnessEndpoint]
    cosigner: Cosigner
    # Batch bodies are decoded and verified one at a time per process (routes.append_batch).
    batch_admission: threading.Lock = field(default_factory=threading.Lock)


def current() -> LogState:
    return current_app.extensions[EXTENSION]
