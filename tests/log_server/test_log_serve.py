"""`log_server.serve.serve` under both WSGI servers (gunicorn, Granian): same answers, same durability.

Real servers as subprocesses on 127.0.0.1, real SQLite stores made by `emshield-log init`.
Granian is a declared dependency; under CI=true a missing install fails instead of skipping.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import cbor2
import pytest
import requests
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from emshield.tlog import entry as E
from emshield.tlog import merkle
from emshield.tlog.checkpoint import NoteVerifier, verify_checkpoint
from log_server.cli import main as log_cli
from log_server.serve import serve

TOKEN = "serve-test-operator-token-0123456789abcdef"
LAUNCH = ("import sys; from pathlib import Path; from log_server.config import ServerConfig;"
          " from log_server.serve import serve;"
          " serve(ServerConfig(store=Path(sys.argv[1])), '127.0.0.1', int(sys.argv[2]), 2, 8, 'warning', sys.argv[3])")
SERVERS = ["gunicorn", "granian"]


def _require(server: str) -> None:
    if importlib.util.find_spec(server) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{server} is not installed but is a dependency of `emshield-log serve`")
        pytest.skip(f"{server} is not installed here")


def _key(seed: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"emshield-serve-test/" + seed.encode()).digest())


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


ISSUER = _key("issuer")


def registration() -> bytes:
    entry = E.IssuerRegistration(_pub(ISSUER), "Serve Test", bytes.fromhex("a1617601"), 1_700_000_000)
    return E.sign_entry(entry, ISSUER).encode()


def issuance(n: int) -> bytes:
    wm = hashlib.sha256(b"serve-wm" + n.to_bytes(8, "big")).digest()
    entry = E.Issuance(uuid.UUID(int=n).bytes, hashlib.sha256(b"backbone").digest(), wm, None, "watermark",
                       1_700_000_000 + n, E.issuer_key_id(_pub(ISSUER)))
    return E.sign_entry(entry, ISSUER).encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, db: Path, kind: str) -> None:
        self.db, self.kind, self.port = db, kind, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(db), str(self.port), kind],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{kind} exited: {self.proc.stdout.read().decode(errors='replace')}")
            try:
                if requests.get(self.url + "/checkpoint", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{kind} did not come up within 30 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.fixture
def log(tmp_path: Path) -> tuple[Path, NoteVerifier]:
    db = tmp_path / "log.db"
    result = CliRunner().invoke(log_cli, ["init", "--db", str(db), "--origin", "serve.test/log", "--json"],
                                env={"EMSHIELD_LOG_OPERATOR_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    return db, NoteVerifier.from_verifier_key(json.loads(result.output)["verifier_key"])


def _post(s: requests.Session, url: str, body: bytes, **headers: str) -> requests.Response:
    return s.post(url, data=body, headers={"Content-Type": "application/cbor", **headers}, timeout=60)


def _tree(db: Path) -> tuple[int, int]:
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return (conn.execute("SELECT count(*) FROM leaves").fetchone()[0],
                conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0])


@pytest.mark.parametrize("kind", SERVERS)
def test_both_servers_answer_the_api_the_same_way(log, kind: str) -> None:
    _require(kind)
    db, verifier = log
    server = Server(db, kind)
    try:
        s = requests.Session()
        r = _post(s, server.url + "/v1/issuers", registration(), Authorization=f"Bearer {TOKEN}")
        assert r.status_code == 201, r.text
        singles = [_post(s, server.url + "/v1/entries", issuance(n)) for n in range(3)]
        assert [r.status_code for r in singles] == [201] * 3
        assert [r.json()["index"] for r in singles] == [1, 2, 3]
        again = _post(s, server.url + "/v1/entries", issuance(1))
        assert (again.status_code, again.json()["index"], again.json()["created"]) == (200, 2, False)
        batch = _post(s, server.url + "/v1/entries/batch", cbor2.dumps([issuance(n) for n in range(3, 13)]))
        assert batch.status_code == 201 and [x["index"] for x in batch.json()["results"]] == list(range(4, 14))

        cp = verify_checkpoint(s.get(server.url + "/checkpoint", timeout=10).content, verifier)
        assert cp.size == 14
        proof = s.get(server.url + "/v1/proof/inclusion", params={"index": 5, "tree_size": 14}, timeout=10).json()
        merkle.verify_inclusion(merkle.leaf_hash(issuance(4)), 5, 14, [base64.b64decode(h) for h in proof["hashes"]],
                                cp.root_hash)

        stored = _tree(db)
        # refusals: answered with a JSON error, nothing stored
        bad_sig = issuance(20)[:-1] + bytes([issuance(20)[-1] ^ 1])
        for body, headers, status, code in [
            (bad_sig, {}, 400, "bad_signature"),
            (issuance(21) + b"\x00", {}, 400, "malformed_entry"),
            (issuance(22), {"Content-Type": "application/json"}, 415, "unsupported_media_type"),
            (b"\xa0" * (E.MAX_ENTRY_SIZE + 1), {}, 413, "body_too_large"),
        ]:
            r = s.post(server.url + "/v1/entries", data=body,
                       headers={"Content-Type": "application/cbor", **headers}, timeout=60)
            assert (r.status_code, r.json()["error"]) == (status, code), (kind, r.text)
        # a declared length over the server limit is refused before the body is read
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
            raw.sendall(b"POST /v1/entries/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/cbor\r\n"
                        b"Content-Length: 1000000000\r\n\r\n")
            head = raw.recv(65536)
        assert head.split(b" ", 2)[1] == b"413", head[:200]
        # a chunked body (no declared length) over the entry limit: 413 too, not a cut-off entry
        r = s.post(server.url + "/v1/entries", data=iter([b"\xa0" * 40_000, b"\xa0" * 40_000]),
                   headers={"Content-Type": "application/cbor"}, timeout=60)
        assert (r.status_code, r.json()["error"]) == (413, "body_too_large"), (kind, r.text)
        assert _tree(db) == stored
        # a chunked body within the limit is read whole and appended
        whole = issuance(23)
        r = s.post(server.url + "/v1/entries", data=iter([whole[:100], whole[100:]]),
                   headers={"Content-Type": "application/cbor"}, timeout=60)
        assert r.status_code == 201, (kind, r.text)
        assert s.get(server.url + "/v1/entries", params={"start": r.json()["index"], "end": r.json()["index"] + 1},
                     timeout=10).json()["entries"][0]["leaf"] == base64.b64encode(whole).decode()
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["granian"])
def test_concurrent_appends_leave_no_gap_and_survive_a_restart(log, kind: str) -> None:
    """16 clients append at once: every entry gets exactly one index, all of 1..N; after SIGTERM the
    other server serves the same signed tree."""
    _require(kind)
    db, verifier = log
    server = Server(db, kind)
    entries = [issuance(n) for n in range(400)]
    indices: list[tuple[int, bytes]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(share: list[bytes]) -> None:
        s = requests.Session()
        for e in share:
            r = _post(s, server.url + "/v1/entries", e)
            if r.status_code != 201:
                errors.append(r.text)
                return
            with lock:
                indices.append((r.json()["index"], e))

    try:
        s = requests.Session()
        assert _post(s, server.url + "/v1/issuers", registration(), Authorization=f"Bearer {TOKEN}").status_code == 201
        threads = [threading.Thread(target=client, args=(entries[i::16],)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert sorted(i for i, _ in indices) == list(range(1, 401))
        before = verify_checkpoint(s.get(server.url + "/checkpoint", timeout=10).content, verifier)
        assert before.size == 401
    finally:
        server.stop()
    other = Server(db, "gunicorn")
    try:
        after = verify_checkpoint(requests.get(other.url + "/checkpoint", timeout=10).content, verifier)
        assert (after.size, after.root_hash) == (before.size, before.root_hash)
        leaves = requests.get(other.url + "/v1/entries", params={"start": 1, "end": 401}, timeout=30).json()["entries"]
        assert [base64.b64decode(x["leaf"]) for x in leaves] == [e for _, e in sorted(indices)]
    finally:
        other.stop()


def test_unknown_server_is_refused(log) -> None:
    from log_server.config import ServerConfig

    with pytest.raises(ValueError, match="unknown server 'uwsgi'"):
        serve(ServerConfig(store=log[0]), "127.0.0.1", _free_port(), 1, 1, "warning", server="uwsgi")
