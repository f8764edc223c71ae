"""Hostile clients against `emshield-log serve`, under both servers (issue #20).

Slow bodies: connections that send their headers and then nothing hold no request thread, are
answered 408 once the body deadline passes, and reads and appends go on meanwhile. Large bogus
batches: the server holds few of them at once, so its memory stays bounded. Behaviour is tested,
not timing: the figures are in bench/log_hostile.py.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from pathlib import Path

import cbor2
import pytest
import requests

from _kit.logs import issuance, registration
from emshield.logclient.http import LogClient

SERVERS = ["granian", "gunicorn"]
CBOR = "application/cbor"


def _held_post(port: int, body_part: bytes, length: int) -> socket.socket:
    """A POST /v1/entries whose headers and the first bytes of the body are sent, the rest held back."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"POST /v1/entries HTTP/1.1\r\nHost: t\r\nContent-Type: application/cbor\r\n"
              + f"Content-Length: {length}\r\n\r\n".encode() + body_part)
    return s


def _response(s: socket.socket) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf or len(buf) < buf.index(b"\r\n\r\n") + 4 + _length(buf):
        part = s.recv(65536)
        assert part, f"the server closed the connection without an answer: {buf!r}"
        buf += part
    head, _, body = buf.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _length(buf: bytes) -> int:
    for line in buf.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.mark.parametrize("kind", SERVERS)
def test_slow_bodies_hold_no_thread_and_are_cut_off_with_408(log_files, server_factory, issuer_key, kind) -> None:
    srv = server_factory(log_files, workers=1, threads=2, server=kind, body_timeout=4)
    log = LogClient(srv.url, operator_token=log_files.token)
    log.register_issuer(registration(issuer_key))
    log.append_batch([issuance(issuer_key, n) for n in range(5)])
    # Eight times as many stalled bodies as the server has request threads, and one honest client
    # that sends half its entry now and the rest later.
    stalled = [_held_post(srv.port, b"\xa5", 1000) for _ in range(16)]
    entry = issuance(issuer_key, 100)
    honest = _held_post(srv.port, entry[:40], len(entry))
    # While all of them are held, reads and appends are answered.
    assert log.checkpoint_note().startswith(b"test.emshield.example/log\n6\n")
    assert requests.get(srv.url + "/tile/0/000.p/6", timeout=30).status_code == 200
    assert len(requests.get(srv.url + "/v1/proof/inclusion?index=2&tree_size=6", timeout=30).json()["hashes"]) == 3
    assert log.append(issuance(issuer_key, 101)).index == 6
    honest.sendall(entry[40:])
    assert _response(honest)[0] == 201
    readable, _, _ = select.select(stalled, [], [], 0)
    assert not readable, "stalled bodies were answered before the reads: the reads waited for them"
    # Then each stalled body is refused with 408 (and nothing from them is stored).
    for s in stalled:
        status, body = _response(s)
        assert (status, json.loads(body)["error"]) == (408, "body_timeout")
        s.close()
    honest.close()
    assert log.verified_checkpoint(log_files.verifier).size == 8


def _rss_kib(pid: int) -> int:
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            pids += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
            total += next(int(line.split()[1]) for line in Path(f"/proc/{p}/status").read_text().splitlines()
                          if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


@pytest.mark.parametrize("kind", SERVERS)
def test_concurrent_bogus_batches_are_refused_within_a_memory_bound(log_files, server_factory, issuer_key,
                                                                   kind) -> None:
    """Eight ~16 MiB batches with valid framing and garbage items at once: all refused at their
    first item, and a worker holds one such body at a time (`serve._app_for_worker`), so
    the server's memory rises by far less than the eight bodies (134 MB) would take."""
    srv = server_factory(log_files, workers=1, threads=8, server=kind)
    LogClient(srv.url, operator_token=log_files.token).register_issuer(registration(issuer_key))
    body = cbor2.dumps([bytes([n % 251]) * 1670 for n in range(10_000)], canonical=True)
    assert 16_000_000 < len(body) < 16 * 1024 * 1024
    idle = _rss_kib(srv.proc.pid)
    peak = [idle]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_kib(srv.proc.pid))
            done.wait(0.005)

    answers: list[tuple[int, str]] = []

    def post() -> None:
        r = requests.post(srv.url + "/v1/entries/batch", data=body, headers={"Content-Type": CBOR}, timeout=120)
        answers.append((r.status_code, r.json()["detail"][:8]))

    sampler = threading.Thread(target=sample)
    sampler.start()
    posts = [threading.Thread(target=post) for _ in range(8)]
    for t in posts:
        t.start()
    for t in posts:
        t.join()
    done.set()
    sampler.join()
    assert answers == [(400, "entry 0:")] * 8
    rise_mib = (peak[0] - idle) / 1024
    assert rise_mib < 64, f"the server's memory rose by {rise_mib:.0f} MiB for 8 bodies of {len(body) >> 20} MiB"
    assert LogClient(srv.url).verified_checkpoint(log_files.verifier).size == 1
