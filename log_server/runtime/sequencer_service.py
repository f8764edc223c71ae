"""One sequencer process serving every WSGI worker process of `emshield-log serve`.

Why: a sequencer thread inside each worker shares that worker's GIL with its request threads, so
the serial part of every append (the group commit, see sequencer.py) waits for the GIL again after
each SQLite call and holds the write lock several times longer than the CPU it spends, and the
workers' sequencers alternate, each rebuilding its compact range after the other's commit
(measurements: spec/notes/sequencer-internals.md). In a process of its own the sequencer runs commits
back to back, and its groups grow with the load while the workers decode and verify in parallel.
Durability and order are unchanged: the service runs the same `Sequencer.integrate` transaction
and answers a worker only after COMMIT. Inside the service one thread reads and decodes units while
another commits (`run_service`), so decoding overlaps SQLite's work, which runs without the GIL.

Trust: the service appends what a worker sends without checking signatures again (the worker
did, see admission.py). It listens on a Unix socket in a directory only the server's user may enter
(mode 0700), so only processes that could write the database file anyway can reach it. That
directory is ``emshield-log-<pid>-<random>`` under ``$XDG_RUNTIME_DIR`` if set, else beside the
store (`socket_dir_base`; the temp directory if the path would be too long there); a server killed with SIGKILL cannot remove its own, so every start
removes those of this user whose server process is gone (`reclaim_stale_socket_dirs`).

Wire format (both ends are in this module): every message is a 4-byte big-endian length, then a
CBOR array. Request: one unit, [* [data, leaf_hash, kind, issuance / null, registration / null,
attribution / null]],
issuance = [issuer_key_id, device_uuid, watermark_commitment / null, fingerprint_hash / null,
watermark_key / null, fingerprint_key / null, device_key] (IssuanceFields),
registration = [key_id, public_key, name, registered_at],
attribution = [issuer_key_id, issuance_index, suspect_sha256] (AttributionFields). Answer: [0, [* index], created] for
appended (created: one byte per entry, 1 if this request added it, 0 if it was logged already),
[1, status, code, detail] for refused, [2, message] for a storage failure.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import selectors
import secrets
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from ..config import open_sequencer
from ..errors import Refusal, SequencerUnavailable
from ..sequencer import Appended, AttributionFields, IssuanceFields, PreparedEntry, RegistrationFields, Sequencer
from ..storage import is_postgres
from .gc_tuning import settle_after_startup

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
MAX_MESSAGE = 256 * 1024 * 1024  # far above the largest unit a worker sends (a 16 MiB batch body)
SUBMIT_TIMEOUT_S = 60.0
SEND_TIMEOUT_S = 10.0
START_TIMEOUT_S = 60.0


# -- wire encoding ----------------------------------------------------------------------------------


def _encode_unit(entries: Sequence[PreparedEntry]) -> bytes:
    return _frame(entries)  # NamedTuples, nested ones included, encode as CBOR arrays of their fields


def _decode_unit(items: list) -> list[PreparedEntry]:
    # The unpacking checks the outer arity, so tuple.__new__ builds the PreparedEntry (its own
    # constructor costs twice as much); the field records keep theirs, which check their arity.
    return [_new(PreparedEntry, (data, leaf_hash, kind, None if iss is None else IssuanceFields(*iss),
                                 None if reg is None else RegistrationFields(*reg),
                                 None if att is None else AttributionFields(*att)))
            for data, leaf_hash, kind, iss, reg, att in items]


_new = tuple.__new__


def _frame(obj: Any) -> bytes:
    body = cbor2.dumps(obj)
    return _LEN.pack(len(body)) + body


def _answer(outcome: list[Appended] | Refusal | BaseException) -> bytes:
    if isinstance(outcome, Refusal):
        return _frame([1, outcome.status, outcome.code, outcome.detail])
    if isinstance(outcome, BaseException):
        return _frame([2, f"{type(outcome).__name__}: {outcome}"])
    # The worker knows its leaf hashes: only the indices and whether each entry was added go back.
    return _frame([0, [a.index for a in outcome], bytes(a.created for a in outcome)])


# -- the service process ----------------------------------------------------------------------------


@dataclass
class _Peer:
    sock: socket.socket
    buf: bytearray
    broken: bool = False  # an answer could not be sent: it gets no more


def _take_frames(peer: _Peer) -> Iterator[Any]:
    while len(peer.buf) >= 4:
        (size,) = _LEN.unpack_from(peer.buf)
        if size > MAX_MESSAGE:
            raise ValueError(f"a worker sent a {size}-byte message")
        if len(peer.buf) < 4 + size:
            return
        body = bytes(peer.buf[4:4 + size])
        del peer.buf[:4 + size]
        yield cbor2.loads(body)


def run_service(sequencer: Sequencer, listener: socket.socket, should_stop=lambda: False) -> None:
    """Serve `listener` until ``should_stop()`` (asked at least every second).

    Two threads: this one accepts connections, reads and decodes units; a `_Writer` thread commits
    them and sends the answers. SQLite releases the GIL inside every statement and COMMIT, so the
    reading and decoding of the next units runs while the current group is being written, and the
    serial stage of every append is the commit alone (bench/log_append.py, batch path)."""
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    writer = _Writer(sequencer)
    writer.start()
    try:
        while not should_stop():
            if not writer.is_alive():  # it only ends on stop(): fail loudly (the server then stops) rather than hang
                raise RuntimeError("the sequencer's writer thread ended unexpectedly")
            for key, _ in sel.select(1.0):
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    conn.settimeout(SEND_TIMEOUT_S)  # a stuck worker must not stall the log
                    sel.register(conn, selectors.EVENT_READ, _Peer(conn, bytearray()))
                    continue
                peer: _Peer = key.data
                try:
                    data = peer.sock.recv(1 << 20)
                except OSError:  # the writer shut it down after a failed answer, or the worker reset it
                    data = b""
                if data:
                    peer.buf += data
                    try:
                        writer.put([(peer, _decode_unit(items)) for items in _take_frames(peer)])
                        continue
                    except Exception:  # a worker bug, not hostile input: drop that connection only
                        log.exception("malformed message from a worker; closing its connection")
                sel.unregister(peer.sock)
                writer.put([(peer, None)])  # closed by the writer, after its answers in flight
    finally:
        writer.stop()
        for key in list(sel.get_map().values()):  # workers still connected get EOF (503), not a timeout
            if key.fileobj is not listener:
                key.fileobj.close()
        sel.close()


class _Writer(threading.Thread):
    """Commits queued units in groups of up to ``max_batch`` entries and answers each worker.

    It alone sends on and closes the workers' sockets, so a socket is never closed (and its number
    reused by a new connection) while an answer is being written to it: the reading thread queues a
    close after the units of that connection."""

    def __init__(self, sequencer: Sequencer) -> None:
        super().__init__(name="emshield-sequencer-writer", daemon=True)
        self.sequencer = sequencer
        self._pending: deque[tuple[_Peer, list[PreparedEntry] | None]] = deque()
        self._cond = threading.Condition()
        self._stopping = False

    def put(self, items: list[tuple[_Peer, list[PreparedEntry] | None]]) -> None:
        if items:
            with self._cond:
                self._pending.extend(items)
                self._cond.notify()

    def stop(self) -> None:
        """Commit and answer what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self.join(30)

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                group, closing, count = [], [], 0
                while self._pending:
                    peer, entries = self._pending[0]
                    if entries is not None:
                        if group and count + len(entries) > self.sequencer.max_batch:
                            break
                        group.append((peer, entries))
                        count += len(entries)
                    else:
                        closing.append(peer)
                    self._pending.popleft()
            if group:
                self._commit(group)
            for peer in closing:
                peer.sock.close()

    def _commit(self, group: list[tuple[_Peer, list[PreparedEntry]]]) -> None:
        try:
            outcomes: list = self.sequencer.integrate([entries for _, entries in group])
        except Exception as exc:  # storage failure: nobody in the group is acknowledged
            log.exception("sequencer batch failed")
            outcomes = [exc] * len(group)
        for (peer, _), outcome in zip(group, outcomes):
            if peer.broken:
                continue  # its entries are committed; the worker's retry finds them
            try:
                peer.sock.sendall(_answer(outcome))
            except OSError:  # the worker went away or stopped reading: the reader drops the connection
                peer.broken = True
                try:
                    peer.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _service_main(config, sock_path: str, stop, parent: int) -> None:
    """Entry point of the spawned service process. It ignores SIGINT and SIGTERM, which reach the
    whole process group when the server is stopped: it must outlive the workers' last appends, and
    stops when the server's main process says so (``stop``) or is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sequencer = open_sequencer(config)
    sequencer.on_commit()  # brings the static tile mirror, if any, up to the stored tree at start-up
    settle_after_startup()  # as in the workers (serve._app_for_worker)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1024)
    run_service(sequencer, listener, lambda: stop.is_set() or os.getppid() != parent)


SOCKET_DIR_PREFIX = "emshield-log-"
SOCKET_NAME = "seq.sock"
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the final NUL (Linux)


def socket_dir_base(beside: Path) -> Path:
    """Where a server keeps its socket directory: $XDG_RUNTIME_DIR (a per-user tmpfs the login
    manager empties) if set, else the directory of ``beside`` (the SQLite file, or a PostgreSQL
    store's signing key: files the server uses anyway), unless the socket's path there would be
    too long for a Unix socket; then the system's temp directory."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    candidates = [Path(runtime)] if runtime and Path(runtime).is_dir() else []
    candidates += [Path(beside).resolve().parent, Path(tempfile.gettempdir())]
    longest_name = f"{SOCKET_DIR_PREFIX}{'9' * 7}-{'f' * 8}/{SOCKET_NAME}"  # Linux pids have at most 7 digits
    for base in candidates:
        if len(str(base / longest_name).encode()) <= _MAX_SOCKET_PATH:
            return base
    raise RuntimeError(f"no directory for the sequencer's socket has a short enough path; tried {candidates}")


def reclaim_stale_socket_dirs(base: Path) -> list[Path]:
    """Remove the socket directories in ``base`` whose server process (the pid in the name) is gone;
    returns them. Only this user's directories are touched, and only ones named as we name them."""
    removed = []
    for d in base.glob(SOCKET_DIR_PREFIX + "*"):
        pid_text = d.name[len(SOCKET_DIR_PREFIX):].partition("-")[0]
        try:
            if not d.is_dir() or d.is_symlink() or d.stat().st_uid != os.getuid() or not pid_text.isdigit():
                continue
        except OSError:
            continue
        if _alive(int(pid_text)):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _new_socket_dir(beside: Path) -> Path:
    base = socket_dir_base(beside)
    reclaim_stale_socket_dirs(base)
    workdir = base / f"{SOCKET_DIR_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    workdir.mkdir(mode=0o700)
    return workdir


@contextmanager
def sequencer_process(config) -> Iterator[Path]:
    """Start the service in a process of its own; yields its socket path; stops it on exit.

    If the service dies while the server runs, the server process is sent SIGTERM so that it
    stops (loudly) instead of answering every append with an error."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited SQLite handles
    # Beside the SQLite file, or beside a PostgreSQL store's signing key (it has no file of its own).
    workdir = _new_socket_dir(Path(config.key_path) if is_postgres(config.store) else Path(config.store))
    sock_path = workdir / SOCKET_NAME
    stop = ctx.Event()
    owner = os.getpid()
    proc = ctx.Process(target=_service_main, args=(config, str(sock_path), stop, owner),
                       name="emshield-log-sequencer", daemon=True)
    try:
        proc.start()
        # The WSGI servers fork their workers with os.fork(), so each inherits multiprocessing's
        # list of this process's children and, at its exit, tries to join the sequencer, which is
        # not its child ("AssertionError: can only join a child process" on every worker's exit).
        os.register_at_fork(after_in_child=lambda: multiprocessing.process._children.discard(proc))
        _wait_until_listening(proc, sock_path)

        def watch() -> None:
            proc.join()
            if not stop.is_set():
                log.error("the sequencer process exited (code %s); stopping the server", proc.exitcode)
                os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="emshield-log-sequencer-watch", daemon=True).start()
        yield sock_path
    finally:
        # gunicorn's forked workers leave by raising SystemExit through the stack they inherited,
        # this block included: only the process that started the service may stop it.
        if os.getpid() == owner:
            stop.set()
            proc.join(30)
            if proc.is_alive():
                proc.kill()  # inside a commit or not: SQLite rolls an unfinished transaction back
                proc.join(10)
            shutil.rmtree(workdir, ignore_errors=True)


def _wait_until_listening(proc, sock_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise RuntimeError(f"the sequencer process exited at start (code {proc.exitcode})")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(sock_path))
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the sequencer process did not listen within {START_TIMEOUT_S:.0f} s")


# -- the worker side --------------------------------------------------------------------------------


class RemoteSequencer:
    """`Sequencer.submit` for a worker process: one connection per request thread to the service."""

    def __init__(self, sock_path: Path, timeout: float = SUBMIT_TIMEOUT_S) -> None:
        self.sock_path = str(sock_path)
        self.timeout = timeout
        self._local = threading.local()

    def _conn(self) -> socket.socket:
        sock = getattr(self._local, "sock", None)
        if sock is None or self._local.pid != os.getpid():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.sock_path)
            except OSError as exc:
                sock.close()
                raise _unavailable(f"cannot reach the sequencer process: {exc}") from exc
            self._local.sock, self._local.pid = sock, os.getpid()
        return sock

    def submit(self, entries: Sequence[PreparedEntry]) -> list[Appended]:
        """Make `entries` durable (all or none); raises `Refusal` for a refused request, and
        `SequencerUnavailable` (a 503 refusal) when the service cannot be reached."""
        sock = self._conn()
        try:
            sock.sendall(_encode_unit(entries))
            (size,) = _LEN.unpack(self._read(sock, 4))
            answer = cbor2.loads(self._read(sock, size))
        except (OSError, EOFError) as exc:
            self._local.sock = None
            sock.close()
            # A timeout or a lost connection: the entries may still be committed (a retry is safe:
            # appends are idempotent), but this request gives up.
            raise _unavailable(f"no answer from the sequencer process: {exc}") from exc
        if answer[0] == 0:
            return [Appended(index, e.leaf_hash, created == 1) for index, e, created in zip(answer[1], entries, answer[2],
                                                                                             strict=True)]
        if answer[0] == 1:
            raise Refusal(answer[1], answer[2], answer[3])
        raise RuntimeError(f"the sequencer failed: {answer[1]}")

    @staticmethod
    def _read(sock: socket.socket, size: int) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            part = sock.recv(min(size - len(buf), 1 << 20))
            if not part:
                raise EOFError("the sequencer process closed the connection")
            buf += part
        return bytes(buf)


def _unavailable(cause: str) -> SequencerUnavailable:
    """The 503 refusal for a request the service did not answer; the cause goes to the server log."""
    log.error("%s", cause)
    return SequencerUnavailable(cause)
