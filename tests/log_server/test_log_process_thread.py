"""log_server/process_thread.py: one background thread per process, started on first use."""

from __future__ import annotations

import multiprocessing as mp
import threading

from log_server.process_thread import ProcessThread


def test_concurrent_callers_start_one_thread_and_a_finished_one_is_started_again() -> None:
    release = threading.Event()
    starts: list[int] = []
    worker = ProcessThread(release.wait, "test-process-thread", before_start=lambda: starts.append(1))
    assert not worker.running_here()
    callers = [threading.Thread(target=worker.ensure_started) for _ in range(16)]
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    assert worker.running_here() and len(starts) == 1
    release.set()
    worker.join(5)
    assert not worker.running_here()
    release.clear()
    worker.ensure_started()  # it had ended: a new one
    assert worker.running_here() and len(starts) == 2
    release.set()
    worker.join(5)


def _child(worker: ProcessThread, answers) -> None:
    before = worker.running_here()
    worker.ensure_started()
    answers.put((before, worker.running_here()))


def test_a_forked_child_starts_its_own_thread() -> None:
    release = threading.Event()
    worker = ProcessThread(lambda: release.wait(2), "test-process-thread")
    worker.ensure_started()
    ctx = mp.get_context("fork")
    answers = ctx.Queue()
    child = ctx.Process(target=_child, args=(worker, answers))
    child.start()
    assert answers.get(timeout=30) == (False, True)  # the parent's thread did not survive the fork
    child.join(30)
    assert child.exitcode == 0 and worker.running_here()
    release.set()
    worker.join(5)
