"""The sequencer process of `emshield-log serve` (log_server/runtime/sequencer_service.py): real stores,
real Unix sockets, a real server whose sequencer is killed."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from _kit.logs import ed25519_key, issuance, registration
from emshield.tlog.checkpoint import verify_checkpoint
from log_server.admission import RegisteredIssuers, prepare_issuance, prepare_registration
from log_server.app import create_app
from log_server.config import ServerConfig, open_sequencer
from log_server.errors import Refusal
from log_server.runtime.sequencer_service import RemoteSequencer, SequencerUnavailable, _encode_unit, run_service
from log_server.sequencer import Sequencer

CBOR = "application/cbor"


@pytest.fixture
def service(log_files, tmp_path: Path):
    """The service loop on a thread of this process, listening on a socket in ``tmp_path``."""
    sequencer = open_sequencer(ServerConfig(**log_files.app_config()))
    path = tmp_path / "sequencer.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    stop = threading.Event()
    thread = threading.Thread(target=run_service, args=(sequencer, listener, stop.is_set), daemon=True)
    thread.start()
    yield path, sequencer.store
    stop.set()
    thread.join(10)
    listener.close()


def test_remote_appends_are_durable_signed_and_idempotent(service, log_files, issuer_key) -> None:
    path, store = service
    remote = RemoteSequencer(path)
    (reg,) = remote.submit([prepare_registration(registration(issuer_key))])
    assert (reg.index, reg.created) == (0, True)
    issuers = RegisteredIssuers(store)
    first = remote.submit([prepare_issuance(issuance(issuer_key, n), issuers) for n in range(3)])
    assert [(a.index, a.created) for a in first] == [(1, True), (2, True), (3, True)]
    again = remote.submit([prepare_issuance(issuance(issuer_key, 1), issuers)])
    assert [(a.index, a.leaf_hash, a.created) for a in again] == [(2, first[1].leaf_hash, False)]
    # refused at commit: the same key under another name; nothing is stored
    with pytest.raises(Refusal) as rej:
        remote.submit([prepare_registration(registration(issuer_key, name="Other Name"))])
    assert (rej.value.status, rej.value.code) == (409, "issuer_exists")
    assert store.tree_size() == 4
    cp = verify_checkpoint(store.latest_checkpoint().note, log_files.verifier)
    assert cp.size == 4


def test_concurrent_remote_submits_get_distinct_indices(service, issuer_key) -> None:
    path, store = service
    remote = RemoteSequencer(path)
    remote.submit([prepare_registration(registration(issuer_key))])
    issuers = RegisteredIssuers(store)
    got: list[int] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for n in range(k, 80, 8):
            (a,) = remote.submit([prepare_issuance(issuance(issuer_key, n), issuers)])
            with lock:
                got.append(a.index)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 81))
    assert store.tree_size() == 81


def test_a_malformed_message_closes_only_that_connection(service, issuer_key) -> None:
    path, _ = service
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(str(path))
        raw.sendall(b"\x00\x00\x00\x01\xff")  # a CBOR "break" with nothing to end
        assert raw.recv(100) == b""
    (reg,) = RemoteSequencer(path).submit([prepare_registration(registration(issuer_key))])
    assert reg.created


def test_a_worker_that_hangs_up_before_its_answer_does_not_stop_the_service(service, issuer_key) -> None:
    path, store = service
    remote = RemoteSequencer(path)
    remote.submit([prepare_registration(registration(issuer_key))])
    issuers = RegisteredIssuers(store)
    for n in range(5):  # each unit is committed, then its answer finds the connection gone
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.connect(str(path))
            raw.sendall(_encode_unit([prepare_issuance(issuance(issuer_key, n), issuers)]))
    deadline = time.monotonic() + 30  # the service accepts the hung-up connections in its own time
    while store.tree_size() < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    (late,) = remote.submit([prepare_issuance(issuance(issuer_key, 99), issuers)])
    assert (late.index, late.created) == (6, True)
    again = remote.submit([prepare_issuance(issuance(issuer_key, n), issuers) for n in range(5)])
    assert sorted(a.index for a in again) == [1, 2, 3, 4, 5] and not any(a.created for a in again)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the simulated death
def test_the_service_stops_when_its_writer_thread_dies(log_files, issuer_key, tmp_path: Path) -> None:
    """A commit that ends the writer thread (here SystemExit from inside the transaction) must not
    leave a service that accepts units and never answers: the loop raises, the process exits and the
    server's watchdog stops the server (test_the_server_stops_when_its_sequencer_dies)."""

    class ExitingSequencer(Sequencer):
        def integrate(self, units):
            raise SystemExit("simulated")

    base = open_sequencer(ServerConfig(**log_files.app_config()))
    sequencer = ExitingSequencer(base.store, base.signer, base.origin)
    path = tmp_path / "dying.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            run_service(sequencer, listener)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            failure.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    remote = RemoteSequencer(path, timeout=5)
    with pytest.raises(SequencerUnavailable):
        remote.submit([prepare_registration(registration(issuer_key))])
    thread.join(10)
    assert not thread.is_alive() and len(failure) == 1 and "writer thread" in str(failure[0])
    listener.close()
    assert sequencer.store.tree_size() == 0  # nothing was stored


def test_no_sequencer_answers_503_and_stores_nothing(log_files, issuer_key, tmp_path: Path) -> None:
    local = create_app(log_files.app_config()).test_client()
    auth = {"Authorization": f"Bearer {log_files.token}"}
    assert local.post("/v1/issuers", data=registration(issuer_key), content_type=CBOR, headers=auth).status_code == 201
    with pytest.raises(SequencerUnavailable):
        RemoteSequencer(tmp_path / "nothing-listens-here").submit([])
    remote = create_app(log_files.app_config() | {"sequencer_socket": tmp_path / "nothing-listens-here"}).test_client()
    for path, body, headers in [("/v1/entries", issuance(issuer_key, 1), {}),
                                ("/v1/issuers", registration(ed25519_key("issuer-2")), auth)]:
        r = remote.post(path, data=body, content_type=CBOR, headers=headers)
        assert (r.status_code, r.get_json()["error"]) == (503, "sequencer_unavailable"), r.get_data()
    assert local.get("/v1/entries?start=0&end=10").get_json()["end"] == 1


def _descendants(pid: int) -> list[int]:
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        out += [int(child), *_descendants(int(child))]
    return out


def test_the_server_stops_when_its_sequencer_dies(server_factory, log_files) -> None:
    server = server_factory(log_files, workers=2, threads=2, server="gunicorn")
    spawned = [p for p in _descendants(server.proc.pid)
               if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(spawned) == 1, spawned  # the sequencer (gunicorn forks its workers)
    os.kill(spawned[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while server.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.proc.poll() is not None, "the server kept running without its sequencer"
    assert "sequencer process exited" in server.read_output()


def test_a_worker_restart_leaves_the_sequencer_running(server_factory, log_files, issuer_key) -> None:
    """A gunicorn worker leaves by unwinding the stack it inherited from the server's main process,
    the block that owns the sequencer process included: that must not stop the sequencer."""
    server = server_factory(log_files, workers=2, threads=2, server="gunicorn")
    session = requests.Session()
    auth = {"Authorization": f"Bearer {log_files.token}", "Content-Type": CBOR}
    assert session.post(server.url + "/v1/issuers", data=registration(issuer_key), headers=auth,
                        timeout=30).status_code == 201

    def gunicorn_workers() -> list[int]:
        return [p for p in _descendants(server.proc.pid) if b"multiprocessing" not in Path(f"/proc/{p}/cmdline").read_bytes()]

    deadline = time.monotonic() + 30  # gunicorn forks its workers a random fraction of a second apart
    while len(workers := gunicorn_workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) == 2, workers
    for pid in workers:
        os.kill(pid, signal.SIGTERM)  # gunicorn starts a new worker for each
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [p for p in _descendants(server.proc.pid) if p not in workers]
        if len(alive) >= 3:
            break
        time.sleep(0.1)
    for n in range(20):
        r = session.post(server.url + "/v1/entries", data=issuance(issuer_key, n),
                         headers={"Content-Type": CBOR}, timeout=30)
        assert r.status_code == 201, r.text
    assert server.proc.poll() is None


def test_workers_of_a_sequencer_process_do_not_read_the_signing_key(log_files, tmp_path: Path) -> None:
    """Only the sequencer process signs checkpoints: an app handing appends to it never opens the
    key file (here: one that does not exist), while an app with its own sequencer needs it."""
    missing = tmp_path / "no-such-key"
    create_app(log_files.app_config() | {"key_path": missing, "sequencer_socket": tmp_path / "sequencer.sock"})
    with pytest.raises(Exception, match="no-such-key"):
        create_app(log_files.app_config() | {"key_path": missing})
