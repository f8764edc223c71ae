"""Static C2SP tlog-tiles: the log's read side as plain files, for nginx, a CDN or an object store.

After every checkpoint the sequencer commits (and at least every `POLL_S`, for checkpoints other
hosts' sequencers committed), a thread of the sequencer's process writes the latest checkpoint's
tree under one directory, laid out exactly as the read API serves it (spec/tiles.md):
``checkpoint``, ``tile/<L>/<N>[.p/<W>]`` and ``tile/entries/<N>[.p/<W>]``. Any static web server
then serves every read a verifier or an auditor needs, and the log server never sees that traffic.

Atomic: every file is written to a temporary name in its directory, fsync'ed and renamed into
place, so a reader sees a whole file or none. Full tiles are written once (they never change).
The ``checkpoint`` file is replaced last, after every tile of its tree is in place, and only by a
larger tree: whoever reads ``checkpoint`` first finds all its tiles. Partial tiles of a tile
index are removed once its full tile exists (tlog-tiles lets a log drop them then); a reader
holding an older checkpoint finds the hashes it needs in the full tile.

Several writers on one directory (hosts sharing it over NFS, or a restart overlapping the old
process) take turns through an flock on ``.emshield-tiles.lock`` in it, and every tile is a
function of the tree alone, so they write the same bytes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
from pathlib import Path

from emshield.atomic_file import write_atomically
from emshield.tlog.checkpoint import Checkpoint, CheckpointError, NoteError, split_note
from emshield.tlog.tiles import TILE_WIDTH, Tile, bundles_for, tiles_at_level

from . import tile_reader
from .process_thread import ProcessThread
from .storage import LogStore, StoredCheckpoint

log = logging.getLogger(__name__)

POLL_S = 1.0
LOCK_NAME = ".emshield-tiles.lock"
CHECKPOINT = "checkpoint"


def written_size(directory: Path) -> int:
    """The tree size of the ``checkpoint`` file in ``directory`` (0 if there is none or it is unreadable).

    Unverified: it only tells the writer what it wrote before; readers verify the signature."""
    try:
        note = (directory / CHECKPOINT).read_bytes()
    except OSError:
        return 0
    try:
        return Checkpoint.parse(split_note(note)[0]).size
    except (CheckpointError, NoteError):
        return 0


def tiles_between(old_size: int, new_size: int) -> list[Tile]:
    """The hash tiles and entry bundles a mirror at ``old_size`` lacks for ``new_size``: every tile
    of the larger tree that was not already full in the smaller one."""
    out: list[Tile] = []
    level = 0
    while TILE_WIDTH ** level <= new_size:
        done = (old_size // TILE_WIDTH ** level) // TILE_WIDTH  # full tiles of this level at old_size
        out += [t for t in tiles_at_level(level, new_size) if t.index >= done]
        level += 1
    out += [b for b in bundles_for(0, new_size) if b.index >= old_size // TILE_WIDTH]
    return out


def write_tree(store: LogStore, cp: StoredCheckpoint, directory: Path) -> int:
    """Bring ``directory`` up to checkpoint ``cp`` (a stored checkpoint of ``store``): the tiles
    first, then the checkpoint. Returns the number of files written (0: already there or newer)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        old = written_size(directory)
        if cp.size <= old and (directory / CHECKPOINT).exists():
            return 0
        written = 0
        for tile in tiles_between(old, cp.size):
            path = directory / tile.path()
            if tile.full and path.exists():
                continue
            write_atomically(path, tile_reader.read(store, tile, cp.size))
            written += 1
            if tile.full:  # its partial predecessors are no longer needed
                shutil.rmtree(path.with_name(path.name + ".p"), ignore_errors=True)
        write_atomically(directory / CHECKPOINT, cp.note)
        return written + 1
    finally:
        os.close(fd)


class TileMirror:
    """Keeps ``directory`` at the store's latest checkpoint; `wake` (after a commit) is cheap."""

    def __init__(self, store: LogStore, directory: Path, poll_s: float = POLL_S) -> None:
        self.store = store
        self.directory = Path(directory)
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._thread = ProcessThread(self._run, f"emshield-tiles-{self.directory}", before_start=self._fresh)

    def _fresh(self) -> None:
        self._wake = threading.Event()

    def wake(self) -> None:
        self._thread.ensure_started()
        self._wake.set()

    def _run(self) -> None:
        wake = self._wake
        while True:  # a daemon thread: it ends with its process
            wake.wait(self.poll_s)
            wake.clear()
            try:
                cp = self.store.latest_checkpoint()
                if cp is not None:
                    write_tree(self.store, cp, self.directory)
            except Exception:  # the store or the disk failed: try again on the next wake
                log.exception("writing static tiles to %s failed", self.directory)

