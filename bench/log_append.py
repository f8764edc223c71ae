"""Transparency-log benchmark: durable appends over HTTP, batch appends, proof latency, integration latency.

    python bench/log_append.py                       # own servers on 127.0.0.1 with temp stores
    python bench/log_append.py --baseline-src DIR    # ... and first the log server of another source
                                                     # tree (e.g. `git archive HEAD~ | tar -x -C DIR`)
    python bench/log_append.py --url http://host:port   # any running log; the operator token for
                                                        # registering the bench issuer comes from
                                                        # $EMSHIELD_LOG_OPERATOR_TOKEN
    python bench/log_append.py --store postgresql://... # also every figure on PostgreSQL, as ratios
                                                        # to SQLite's in the same run

Every own server gets a fresh log and the same signed entries: the baseline source tree (if given),
then each WSGI server of --servers (default gunicorn, then granian) with this tree's code; each
figure is printed with the 1-minute load average beside it, and later servers as ratios to the
first. The clients are threads of this process on the same cores as the server (a raw-socket
keep-alive HTTP/1.1 client; the single-append clients are flows of one event loop), so client CPU is part of every figure.

Figures (issue #3 targets in brackets):
- durable single-entry appends/s with 1, 8 and 32 concurrent clients [>= 2,000/s with 32 clients
  on 2 cores]; an append is answered only after its transaction (leaf + tree nodes + signed
  checkpoint) was COMMITted with fsync. Baselines in the same run: GET /checkpoint requests/s
  with the same clients on the same server (the HTTP/WSGI stack's ceiling, no work), and one
  fsync'ed SQLite transaction per entry without HTTP or signature checks (a log without group
  commit). Server and client CPU per entry come from /proc and process_time.
- batch-path entries/s [>= 20,000/s], twice on each server: entries signed one by one (the server
  verifies every signature; that path cannot beat this machine's Ed25519 verification rate, the
  printed baseline, times the cores), then the same number of entries batch-signed (one
  Merkle-tree batch signature per --batch-size entries, spec/entry.md: the server verifies one
  signature per batch and hashes a proof per entry), with the ratio between the two.
- integration latency: from an acknowledged append to the client holding a verified signed
  checkpoint that includes it, p50/p99 under the 32-client load [p99 <= 1 s].
- inclusion and consistency proof latency over HTTP, p50/p99, at 10^4, 10^5 and 10^6 entries
  [p99 <= 5 ms at 10^6], on the last server of --servers. Large trees are filled by direct bulk
  insert through the server's own write path (`Sequencer.integrate`: leaves, nodes and a signed
  checkpoint per 50,000 entries, one log per size; --proof-logs keeps them for later runs) with
  real signed entries, skipping HTTP and signature re-verification; --url mode measures proofs at
  the remote log's current size instead.

With --store (a PostgreSQL URL whose role may CREATE DATABASE; the password from $PGPASSWORD or a
0600 password file, as for `emshield-log`), every own-server measurement is made twice, first on
SQLite (a temp file) and then on a fresh PostgreSQL database with the same entries, and the
PostgreSQL figures are printed as ratios to SQLite's [targets (issue #19): single appends at 32
clients >= 0.5x SQLite's, batch >= 10,000 entries/s, proof p99 <= 5 ms at 10^6]. The bench's
databases are dropped at the end (kept with --proof-logs, which then also keeps their names).
Tree building against merkletools/pymerkle is in bench/merkle_build.py.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import multiprocessing as mp
import os
import random
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from emshield.tlog import entry as E
from emshield.tlog import merkle
from emshield.tlog.checkpoint import NoteVerifier, verify_checkpoint

TOKEN_ENV = "EMSHIELD_LOG_OPERATOR_TOKEN"
BIN = Path(sys.executable).parent
TARGET_APPENDS = 2000.0
TARGET_BATCH = 20000.0
TARGET_INTEGRATION_P99_S = 1.0
TARGET_PROOF_P99_MS = 5.0
TARGET_PG_SINGLE_RATIO = 0.5
TARGET_PG_BATCH = 10000.0


# -- entries --------------------------------------------------------------------------------------


def _key(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"emshield-bench/" + seed).digest())


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _unsigned(seed: bytes, n: int, kid: bytes) -> E.Issuance:
    """Issuance number ``n`` (its watermark commitment also gives its device UUID)."""
    wm = hashlib.sha256(seed + n.to_bytes(8, "big")).digest()
    return E.Issuance(wm[:16], hashlib.sha256(b"bench-backbone").digest(), wm, None, "watermark",
                      1_700_000_000 + n, kid)


def _issuance(seed: bytes, n: int, key: Ed25519PrivateKey, kid: bytes) -> tuple[bytes, str, bytes]:
    """Signed issuance entry number ``n``: (encoded entry, device UUID text, watermark commitment)."""
    entry = _unsigned(seed, n, kid)
    return E.sign_entry(entry, key).encode(), entry.device_uuid_text, entry.watermark_commitment


def make_batch_signed(seed: bytes, start: int, stop: int, batch: int) -> list[bytes]:
    """Entries numbered [start, stop), signed ``batch`` at a time with one Merkle-tree batch
    signature each (spec/entry.md, "Batch signatures")."""
    key = _key(seed)
    kid = E.issuer_key_id(_pub(key))
    out: list[bytes] = []
    for a in range(start, stop, batch):
        out += [s.encode() for s in E.sign_batch([_unsigned(seed, n, kid) for n in range(a, min(a + batch, stop))], key)]
    return out


def _issuances(args: tuple[bytes, int, int]) -> list[tuple[bytes, str, bytes]]:
    """Signed issuance entries numbered [start, stop) for the issuer with this seed."""
    seed, start, stop = args
    key = _key(seed)
    kid = E.issuer_key_id(_pub(key))
    return [_issuance(seed, n, key, kid) for n in range(start, stop)]


def make_issuances(seed: bytes, start: int, stop: int, procs: int = 2) -> list[tuple[bytes, str, bytes]]:
    """Sign entries in parallel processes (signing is client work, done before the clock starts)."""
    step = max(1000, (stop - start) // (procs * 8) + 1)
    chunks = [(seed, a, min(a + step, stop)) for a in range(start, stop, step)]
    if len(chunks) == 1:
        return _issuances(chunks[0])
    with mp.get_context("fork").Pool(procs) as pool:
        return [e for part in pool.map(_issuances, chunks) for e in part]


def make_entries(seed: bytes, start: int, stop: int) -> list[bytes]:
    return [data for data, _, _ in make_issuances(seed, start, stop)]


def registration(seed: bytes) -> bytes:
    key = _key(seed)
    return E.sign_entry(E.IssuerRegistration(_pub(key), f"bench {seed.hex()[:8]}", bytes.fromhex("a1617601"),
                                             1_700_000_000), key).encode()


# -- HTTP -------------------------------------------------------------------------------------------


def request_bytes(host: str, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
                  token: str | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if body is not None or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body or b'')}\r\n"
    return head.encode("latin-1") + b"\r\n" + (body or b"")


def parse_response(buf: bytes) -> tuple[int, bytes, bytes] | None:
    """(status, body, what follows) of the complete response at the start of ``buf``; None while
    incomplete. Enough HTTP/1.1 for the log's API: Content-Length bodies only (both servers send them)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            raise RuntimeError("chunked responses are not supported by this bench client")
    if length is None:
        raise RuntimeError(f"response without Content-Length: {lines[0]!r}")
    start = end + 4
    if len(buf) < start + length:
        return None
    return status, buf[start:start + length], buf[start + length:]


class Conn:
    """One keep-alive HTTP/1.1 connection on a raw socket.

    The clients share the server's two cores, so their cost is part of every figure: http.client
    spends ~400 us of CPU per request here (header parsing through email.parser), this ~60 us.
    Enough HTTP/1.1 for the log's API: Content-Length bodies only (both servers send them)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.token = token
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=120)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        return sock

    def _recv(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = self._connect()
        self.sock.sendall(request)
        while (got := parse_response(self.buf)) is None:
            self._recv()
        status, body, self.buf = got
        return status, body

    def request(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
                auth: bool = False) -> tuple[int, bytes]:
        request = request_bytes(f"{self.host}:{self.port}", method, path, body, ctype,
                                self.token if auth else None)
        for attempt in range(2):
            try:
                return self._exchange(request)
            except (ConnectionError, OSError):
                # a keep-alive connection the server closed: reconnect and send again (every
                # request here is idempotent: re-submitting an entry returns its existing index)
                if self.sock is not None:
                    self.sock.close()
                self.sock = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, **kw) -> dict:
        status, body = self.request(method, path, **kw)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {body[:300]!r}")
        return json.loads(body)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


# -- server ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnServer:
    """A log in a temp directory: `emshield-log init`, then served by `log_server.serve.serve` (what
    `emshield-log serve` runs after its checks) with the chosen WSGI server. With ``src``, the log
    server of that other source tree (e.g. the previous version, extracted with `git archive`) is
    initialised and served by its own `emshield-log serve` instead: the same-run baseline."""

    CLI = "import sys; sys.argv[0] = 'emshield-log'; from log_server.cli import main; main()"
    LAUNCH = ("import sys; from log_server.config import ServerConfig; from log_server.serve import serve;"
              " serve(ServerConfig.from_mapping({'store': sys.argv[1], 'key_path': sys.argv[6] or None}), '127.0.0.1',"
              " int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), 'warning', sys.argv[5])")

    def __init__(self, workdir: Path, workers: int, threads: int, server: str = "gunicorn",
                 src: Path | None = None, existing: dict | None = None, store: str | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        # ``store``: a PostgreSQL database URL (its key file then lives in workdir); else a SQLite file
        self.db: Path | str = store or workdir / "bench-log.db"
        self.key_file: Path | None = None if store is None else workdir / "bench-log.signer-key"
        key_args = [] if self.key_file is None else ["--key-file", str(self.key_file)]
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = str(src)
        if existing is not None:  # a log an earlier run left (see proof_log)
            self.token, self.verifier_key = existing["token"], existing["verifier_key"]
        else:
            self.token = "bench-operator-token-" + os.urandom(16).hex()
            out = subprocess.run([sys.executable, "-c", self.CLI, "init", "--db", str(self.db), "--origin",
                                  "bench.emshield/log", "--json", *key_args], env=env | {TOKEN_ENV: self.token},
                                 cwd=src, capture_output=True, text=True, check=True)
            self.verifier_key = json.loads(out.stdout)["verifier_key"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if src is None:
            cmd = ["-c", self.LAUNCH, str(self.db), str(self.port), str(workers), str(threads), server,
                   str(self.key_file or "")]
        else:
            cmd = ["-c", self.CLI, "serve", "--db", str(self.db), "--port", str(self.port), "--workers", str(workers),
                   "--threads", str(threads), "--log-level", "warning", *key_args]
            if server != "gunicorn":  # trees before `serve --server` existed serve with gunicorn only
                cmd += ["--server", server]
        # cwd: `python -c` puts the working directory first on sys.path, before PYTHONPATH
        self.proc = subprocess.Popen([sys.executable, *cmd], env=env, cwd=src, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench server exited with {self.proc.returncode}")
            try:
                if Conn(self.url).request("GET", "/checkpoint")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("bench server did not start")

    def cpu_seconds(self) -> float:
        """User + system CPU of the gunicorn master and its workers so far (from /proc)."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# -- measurements ------------------------------------------------------------------------------------


def checkpoint_size(conn: Conn, verifier: NoteVerifier | None) -> int:
    status, note = conn.request("GET", "/checkpoint")
    if status != 200:
        raise RuntimeError(f"GET /checkpoint: {status}")
    if verifier is None:
        return int(note.split(b"\n")[1])
    return verify_checkpoint(note, verifier).size


def run_clients(work, shares: list) -> float:
    """One thread per share, released together; the wall time until the last one is done."""
    barrier = threading.Barrier(len(shares) + 1)

    def run(share) -> None:
        barrier.wait()
        work(share)

    threads = [threading.Thread(target=run, args=(share,)) for share in shares]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def run_flows(url: str, flows: list) -> float:
    """Drive many clients from ONE thread: each flow is a generator that yields the bytes of its next
    request and is sent back (status, body), or yields a float to pause that many seconds.

    Why not a thread per client: 32 Python threads contending for one GIL cost ~150 us of CPU per
    request on these two cores, which the server then lacks; one event loop costs a fraction of that.
    Returns the wall time from the first request to the last answer."""
    u = urllib.parse.urlsplit(url)
    sel = selectors.DefaultSelector()
    bufs: dict[int, bytes] = {}
    timers: list[tuple[float, int, object]] = []

    def advance(flow, sock: socket.socket, value) -> None:
        try:
            step = flow.send(value)
        except StopIteration:
            sel.unregister(sock)
            sock.close()
            return
        if isinstance(step, float):
            heapq.heappush(timers, (time.perf_counter() + step, id(flow), (flow, sock)))
        else:
            sock.sendall(step)

    socks = []
    for flow in flows:
        sock = socket.create_connection((u.hostname, u.port), timeout=120)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bufs[sock.fileno()] = b""
        sel.register(sock, selectors.EVENT_READ, flow)
        socks.append(sock)
    t0 = time.perf_counter()
    for flow, sock in zip(flows, socks):
        advance(flow, sock, None)
    while sel.get_map():
        wait = max(0.0, timers[0][0] - time.perf_counter()) if timers else None
        for key, _ in sel.select(wait):
            sock, fd = key.fileobj, key.fd
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the server closed a client connection")
            got = parse_response(bufs[fd] + data)
            if got is None:
                bufs[fd] += data
                continue
            status, body, bufs[fd] = got
            advance(key.data, sock, (status, body))
        while timers and timers[0][0] <= time.perf_counter():
            _, _, (flow, sock) = heapq.heappop(timers)
            advance(flow, sock, None)
    return time.perf_counter() - t0


def single_appends(url: str, entries: list[bytes], clients: int, verifier: NoteVerifier | None,
                   sample_every: int = 10) -> dict:
    """Each client POSTs its share one at a time; every `sample_every`-th ack is followed by
    fetching (and verifying) checkpoints until one includes the entry: the integration latency."""
    host = urllib.parse.urlsplit(url).netloc
    latencies: list[float] = []
    integration: list[float] = []
    indices: list[int] = []
    get_checkpoint = request_bytes(host, "GET", "/checkpoint")

    def flow(share: list[bytes]):
        for k, e in enumerate(share):
            t0 = time.perf_counter()
            status, body = yield request_bytes(host, "POST", "/v1/entries", e, "application/cbor")
            t1 = time.perf_counter()
            if status not in (200, 201):
                raise RuntimeError(f"append failed: {status} {body[:200]!r}")
            index = json.loads(body)["index"]
            latencies.append(t1 - t0)
            indices.append(index)
            if k % sample_every == 0:
                while True:
                    status, note = yield get_checkpoint
                    if status != 200:
                        raise RuntimeError(f"GET /checkpoint: {status}")
                    size = int(note.split(b"\n")[1]) if verifier is None else verify_checkpoint(note, verifier).size
                    if size > index:
                        break
                    yield 0.005
                integration.append(time.perf_counter() - t1)

    wall = run_flows(url, [flow(entries[i::clients]) for i in range(clients)])
    if len(set(indices)) != len(entries):
        raise RuntimeError("duplicate indices were returned")
    return {"clients": clients, "entries": len(entries), "seconds": wall, "per_s": len(entries) / wall,
            "latency_p50_ms": 1e3 * pct(latencies, 50), "latency_p99_ms": 1e3 * pct(latencies, 99),
            "integration_p50_ms": 1e3 * pct(integration, 50), "integration_p99_ms": 1e3 * pct(integration, 99),
            "integration_samples": len(integration)}


def get_rate(url: str, requests_total: int, clients: int) -> float:
    """Baseline: GET /checkpoint requests/s with the same clients: the HTTP + WSGI stack's floor."""
    per_client = requests_total // clients
    request = request_bytes(urllib.parse.urlsplit(url).netloc, "GET", "/checkpoint")

    def flow():
        for _ in range(per_client):
            status, _ = yield request
            if status != 200:
                raise RuntimeError(f"GET /checkpoint: {status}")

    return per_client * clients / run_flows(url, [flow() for _ in range(clients)])


def batch_appends(url: str, entries: list[bytes], batch_size: int, clients: int) -> dict:
    batches = [cbor2.dumps(entries[i:i + batch_size], canonical=True) for i in range(0, len(entries), batch_size)]
    shares = [batches[i::clients] for i in range(clients)]
    errors: list[str] = []

    def work(share: list[bytes]) -> None:
        conn = Conn(url)
        for body in share:
            status, resp = conn.request("POST", "/v1/entries/batch", body=body, ctype="application/cbor")
            if status not in (200, 201):
                errors.append(f"{status} {resp[:200]!r}")
                return

    wall = run_clients(work, shares)
    if errors:
        raise RuntimeError(f"batch append failed: {errors[0]}")
    return {"entries": len(entries), "batch_size": batch_size, "clients": clients, "seconds": wall,
            "per_s": len(entries) / wall}


def proof_latency(url: str, size: int, samples: int, rng: random.Random) -> dict:
    conn = Conn(url)
    out: dict[str, float] = {}
    for kind in ("checkpoint", "inclusion", "consistency"):
        times = []
        for _ in range(samples):
            if kind == "checkpoint":  # baseline: the cheapest read, same server, same connection
                path = "/checkpoint"
            elif kind == "inclusion":
                path = f"/v1/proof/inclusion?index={rng.randrange(size)}&tree_size={size}"
            else:
                path = f"/v1/proof/consistency?first={rng.randint(1, size)}&second={size}"
            t0 = time.perf_counter()
            status, body = conn.request("GET", path)
            times.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        out[f"{kind}_p50_ms"] = 1e3 * pct(times, 50)
        out[f"{kind}_p99_ms"] = 1e3 * pct(times, 99)
    return out


def proof_compute(db: Path | str, size: int, samples: int, rng: random.Random) -> dict:
    """The same proofs computed in-process from the store (no HTTP): the storage + hashing cost."""
    from log_server.storage import open_store

    store = open_store(db)
    out: dict[str, float] = {}
    for kind in ("inclusion", "consistency"):
        times, cpu = [], []
        for _ in range(samples):
            t0, c0 = time.perf_counter(), time.thread_time()
            if kind == "inclusion":
                merkle.inclusion_proof(rng.randrange(size), size, store.get_nodes)
            else:
                merkle.consistency_proof(rng.randint(1, size), size, store.get_nodes)
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        out[f"{kind}_compute_p50_ms"] = 1e3 * pct(times, 50)
        out[f"{kind}_compute_p99_ms"] = 1e3 * pct(times, 99)
        # CPU time of the proving thread: what the proof costs when no other process preempts it
        out[f"{kind}_compute_cpu_p99_ms"] = 1e3 * pct(cpu, 99)
    store.close()
    return out


def bulk_fill(server: OwnServer, seed: bytes, start: int, stop: int, chunk: int = 50_000) -> float:
    """Append issuance entries [start, stop) straight through Sequencer.integrate; returns seconds."""
    from log_server.app import create_app
    from log_server.config import ServerConfig
    from log_server.sequencer import IssuanceFields, PreparedEntry
    from log_server.state import EXTENSION

    app = create_app(ServerConfig(store=server.db, key_path=server.key_file))
    state = app.extensions[EXTENSION]
    kid = E.issuer_key_id(_pub(_key(seed)))
    t0 = time.perf_counter()
    for a in range(start, stop, chunk):
        prepared = [PreparedEntry(data, merkle.leaf_hash(data), "issuance",
                                  issuance=IssuanceFields.of(kid, device, wm, None))
                    for data, device, wm in make_issuances(seed, a, min(a + chunk, stop))]
        (result,) = state.sequencer.integrate([prepared])
        if isinstance(result, Exception):
            raise result
    state.store.close()
    return time.perf_counter() - t0


def baseline_sqlite_commit_per_entry(workdir: Path, entries: list[bytes]) -> float:
    """Entries/s when every entry is its own fsync'ed WAL transaction (no group commit)."""
    conn = sqlite3.connect(workdir / "baseline.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE leaves(idx INTEGER PRIMARY KEY, leaf_hash BLOB UNIQUE, data BLOB)")
    t0 = time.perf_counter()
    for i, e in enumerate(entries):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO leaves VALUES (?,?,?)", (i, merkle.leaf_hash(e), e))
        conn.execute("COMMIT")
    wall = time.perf_counter() - t0
    conn.close()
    return len(entries) / wall


def baseline_ed25519_verify(entries: list[bytes], seed: bytes) -> float:
    """Entry signature verifications/s on one core (decode + Ed25519 verify, as the server does)."""
    pub = _key(seed).public_key()
    sample = entries[:2000]
    t0 = time.perf_counter()
    for e in sample:
        E.verify_entry_signature(E.decode_entry(e), pub)
    return len(sample) / (time.perf_counter() - t0)


def _checkpoints(server: OwnServer | None) -> int:
    if server is None:
        return 0
    if isinstance(server.db, str):
        import psycopg

        with psycopg.connect(server.db) as conn:
            return conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    with sqlite3.connect(f"file:{server.db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]


class Databases:
    """Fresh PostgreSQL databases on the server of ``base`` (a URL), one per measurement."""

    def __init__(self, base: str, keep: bool) -> None:
        self.base, self.keep = base, keep
        self.made: list[str] = []

    def _admin(self):
        import psycopg

        return psycopg.connect(self.base, autocommit=True)

    def url(self, name: str) -> str:
        u = urllib.parse.urlsplit(self.base)  # (urlunsplit would drop the // of an empty host)
        return f"{u.scheme}://{u.netloc}/{name}" + (f"?{u.query}" if u.query else "")

    def exists(self, name: str) -> bool:
        with self._admin() as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None

    def new(self, name: str) -> str:
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return self.url(name)

    def drop_all(self) -> None:
        if self.keep:
            return
        with self._admin() as conn:
            for name in self.made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _cpu_start(server: OwnServer | None) -> tuple[float, float, int]:
    return (server.cpu_seconds() if server else 0.0), time.process_time(), _checkpoints(server)


def _cpu_used(server: OwnServer | None, start: tuple[float, float, int], n: int) -> dict:
    """CPU microseconds per entry spent by the server and by this (client) process, and the mean
    number of entries per sequencer transaction (one signed checkpoint each)."""
    out = {"client_cpu_us_per_entry": 1e6 * (time.process_time() - start[1]) / n}
    if server is not None:
        out["server_cpu_us_per_entry"] = 1e6 * (server.cpu_seconds() - start[0]) / n
        out["entries_per_commit"] = n / max(1, _checkpoints(server) - start[2])
    return out


def _cpu_text(r: dict) -> str:
    if "server_cpu_us_per_entry" not in r:
        return f"; client CPU per entry {r['client_cpu_us_per_entry']:.0f} us"
    # cores kept busy by server + clients: close to the core count means the rate is CPU-bound
    busy = r["per_s"] * (r["server_cpu_us_per_entry"] + r["client_cpu_us_per_entry"]) / 1e6
    return (f"; CPU per entry: server {r['server_cpu_us_per_entry']:.0f} us, client "
            f"{r['client_cpu_us_per_entry']:.0f} us ({busy:.2f} cores busy); {r['entries_per_commit']:.1f} entries"
            " per commit")


# -- main --------------------------------------------------------------------------------------------


def _single_text(r: dict, base: float) -> str:
    return (f"durable single appends, {r['clients']:>2} clients: {r['per_s']:8,.0f}/s "
            f"(x{r['per_s'] / r['baseline_get_checkpoint_per_s']:.2f} of GET /checkpoint's "
            f"{r['baseline_get_checkpoint_per_s']:,.0f}/s, x{r['per_s'] / base:.2f} of one commit per entry, "
            f"x{r['per_s'] / TARGET_APPENDS:.2f} of the 2,000/s target) latency p50 {r['latency_p50_ms']:.1f} ms p99 "
            f"{r['latency_p99_ms']:.1f} ms; integration p50 {r['integration_p50_ms']:.1f} ms p99 "
            f"{r['integration_p99_ms']:.1f} ms ({r['integration_samples']} samples){_cpu_text(r)}; "
            f"load {r['load_1min']:.1f}")


def measure_log(url: str, token: str, verifier: NoteVerifier | None, server: OwnServer | None, entries: list[bytes],
                batch_signed: list[bytes], reg: bytes, args, clients: list[int], base: float, ceiling: float) -> dict:
    """Single appends with each client count, then the batch path (per-entry signatures, then
    batch-signed entries unless ``batch_signed`` is empty), against one log."""
    Conn(url, token).json("POST", "/v1/issuers", body=reg, ctype="application/cbor", auth=True)
    out: dict = {"single": []}
    pos = 0
    for c in clients:
        floor = get_rate(url, 3000, c)
        cpu = _cpu_start(server)
        r = single_appends(url, entries[pos:pos + args.entries], c, verifier) | _cpu_used(server, cpu, args.entries)
        pos += args.entries
        r["baseline_get_checkpoint_per_s"] = floor
        r["load_1min"] = os.getloadavg()[0]
        out["single"].append(r)
        print("  " + _single_text(r, base), flush=True)
    runs = [("batch", "every entry signed on its own", entries[pos:pos + args.batch_entries])]
    if batch_signed:
        runs.append(("batch_signed", f"batch-signed, one signature per {args.batch_size:,} entries", batch_signed))
    for key, what, share in runs:
        cpu = _cpu_start(server)
        try:
            b = batch_appends(url, share, args.batch_size, args.batch_clients) | _cpu_used(server, cpu, len(share))
        except RuntimeError as exc:  # a baseline from before batch signatures refuses them
            print(f"  batch appends, {what}: not accepted by this log ({exc})", flush=True)
            continue
        b["load_1min"] = os.getloadavg()[0]
        out[key] = b
        vs = "" if key == "batch" else f", x{b['per_s'] / out['batch']['per_s']:.2f} of per-entry signatures"
        print(f"  batch appends, {what} ({args.batch_clients} clients x {args.batch_size}/request): "
              f"{b['per_s']:,.0f} entries/s (x{b['per_s'] / TARGET_BATCH:.2f} of the 20,000/s target, "
              f"x{b['per_s'] / ceiling:.2f} of one core's verification rate{vs}){_cpu_text(b)}; "
              f"load {b['load_1min']:.1f}", flush=True)
    return out


def compare(runs: list[dict]) -> None:
    """Every run's figures as ratios to the first run's (the baseline of this run)."""
    base = runs[0]
    for run in runs[1:]:
        parts = [f"{r['clients']} clients x{r['per_s'] / b['per_s']:.2f}" for r, b in zip(run["single"], base["single"])]
        parts.append(f"batch x{run['batch']['per_s'] / base['batch']['per_s']:.2f}")
        if "batch_signed" in run and "batch_signed" in base:
            parts.append(f"batch-signed x{run['batch_signed']['per_s'] / base['batch_signed']['per_s']:.2f}")
        elif "batch_signed" in run:
            parts.append(f"batch-signed x{run['batch_signed']['per_s'] / base['batch']['per_s']:.2f} of the first's "
                         "per-entry-signed batch path")
        print(f"{run['label']} vs {base['label']}: " + ", ".join(parts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running log (default: start one on 127.0.0.1 with a temp store)")
    ap.add_argument("--entries", type=int, default=6000, help="entries per single-append run (default 6000)")
    ap.add_argument("--clients", default="1,8,32", help="comma-separated client counts (default 1,8,32)")
    ap.add_argument("--batch-entries", type=int, default=128_000,
                    help="entries through the batch path (default 128,000: four requests per client)")
    ap.add_argument("--batch-size", type=int, default=2000, help="entries per batch request")
    ap.add_argument("--batch-clients", type=int, default=16,
                    help="concurrent batch clients (default 16: with 2 workers, 16 gave 1.1-1.3x the rate of 8 here "
                         "(bigger group commits); 12 and 24 gave less than 16)")
    ap.add_argument("--proof-sizes", default="10000,100000,1000000", help="tree sizes for proof latency (own server)")
    ap.add_argument("--proof-samples", type=int, default=2000)
    ap.add_argument("--proof-logs", type=Path,
                    help="own server: keep the bulk-filled proof logs (one per size) in this directory and reuse"
                         " them on later runs (default: fresh ones in the temp directory)")
    ap.add_argument("--servers", default="gunicorn,granian",
                    help="own server: WSGI servers to measure, each on a fresh log, in this order; proofs use the last")
    ap.add_argument("--baseline-src", type=Path, action="append", default=[],
                    help="own server: first measure the log server of this source tree (e.g. the previous commit,"
                         " extracted with `git archive`) through its own `emshield-log serve`, as the baseline"
                         " (repeatable; the first one is what the others are compared with)")
    ap.add_argument("--baseline-server", default="gunicorn", choices=["gunicorn", "granian"],
                    help="the WSGI server of the --baseline-src runs (granian needs a tree with `serve --server`)")
    ap.add_argument("--workers", type=int, default=2, help="own server: worker processes")
    ap.add_argument("--threads", type=int, default=16, help="own server: request threads per worker")
    ap.add_argument("--store", metavar="POSTGRESQL_URL",
                    help="own server: measure on PostgreSQL too, in fresh databases of this server (the URL's role"
                         " needs CREATEDB), each figure as a ratio to SQLite's in the same run")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = ap.parse_args()
    if args.store and not args.store.startswith(("postgresql://", "postgres://")):
        ap.error("--store takes a postgresql:// URL (SQLite is always measured)")
    clients = [int(c) for c in args.clients.split(",") if c]
    servers = [s for s in args.servers.split(",") if s]
    run_seed = os.urandom(8)  # fresh entries every run: a re-run against the same log appends, not dedups
    rng = random.Random(1)
    figures: dict = {"cores": os.cpu_count(), "load_average_at_start": os.getloadavg(), "runs": []}
    print(f"{os.cpu_count()} cores; load average before the run {os.getloadavg()[0]:.2f} (other work on this"
          " machine shares the cores; the clients run on the same cores)")
    if args.url and not os.environ.get(TOKEN_ENV):
        ap.error(f"--url needs the operator token in ${TOKEN_ENV} to register the bench issuer")

    with tempfile.TemporaryDirectory(prefix="emshield-bench-") as tmp:
        workdir = Path(tmp)
        total = args.entries * len(clients) + args.batch_entries
        t0 = time.perf_counter()
        entries = make_entries(run_seed, 0, total)  # the same entries go to every (fresh) log
        batch_signed = make_batch_signed(run_seed, total, total + args.batch_entries, args.batch_size)
        print(f"signed {total} + {args.batch_entries} batch-signed entries for the run in "
              f"{time.perf_counter() - t0:.1f} s (client work, untimed)")
        base = figures["baseline_sqlite_commit_per_entry_per_s"] = baseline_sqlite_commit_per_entry(
            workdir, entries[:2000])
        ceiling = figures["baseline_ed25519_verify_per_core_per_s"] = baseline_ed25519_verify(entries, run_seed)
        print(f"baseline: one fsync'ed SQLite transaction per entry: {base:,.0f} entries/s")
        print(f"baseline: decode + Ed25519 verify of an entry, one core: {ceiling:,.0f} entries/s")
        reg = registration(run_seed)

        if args.url:
            url = args.url.rstrip("/")
            print(f"log at {url}")
            run = {"label": url} | measure_log(url, os.environ[TOKEN_ENV], None, None, entries, batch_signed, reg, args,
                                               clients, base, ceiling)
            figures["runs"].append(run)
            size = checkpoint_size(Conn(url), None)
            r = {"size": size} | proof_latency(url, size, args.proof_samples, rng)
            r["load_1min"] = os.getloadavg()[0]
            figures["proofs"] = [r]
            print(f"proofs at {size:,}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k != "size"))
        else:
            dbs = Databases(args.store, keep=args.proof_logs is not None) if args.store else None
            stores: list[Databases | None] = [None] + ([dbs] if dbs else [])  # None: SQLite
            plan = [(f"baseline {src}", args.baseline_server, src, None) for src in args.baseline_src]
            for store in stores:
                plan += [(f"{s} on {_store_name(store)} (this tree)", s, None, store) for s in servers]
            try:
                for n, (label, kind, src, store) in enumerate(plan):
                    db = None if store is None else store.new(f"emshield_bench_{run_seed.hex()}_{n}")
                    server = OwnServer(workdir / f"run{n}", args.workers, args.threads, kind, src, store=db)
                    try:
                        print(f"{label}: {server.url}, {kind}, {args.workers} workers x {args.threads} threads",
                              flush=True)
                        run = {"label": label, "server": kind, "store": _store_name(store)} | measure_log(
                            server.url, server.token, NoteVerifier.from_verifier_key(server.verifier_key), server,
                            entries, batch_signed,
                            reg, args, clients, base, ceiling)
                        figures["runs"].append(run)
                    finally:
                        server.stop()
                compare(figures["runs"])
                figures["proofs"] = [r for store in stores for r in proofs(
                    args.proof_logs or workdir / "proofs", args, servers[-1], run_seed, rng, store)]
                if dbs is not None:
                    compare_stores(figures)
            finally:
                if dbs is not None:
                    dbs.drop_all()
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


def _store_name(store: Databases | None) -> str:
    return "SQLite" if store is None else "PostgreSQL"


def proof_log(workdir: Path, size: int, args, kind: str, seed: bytes, store: Databases | None) -> OwnServer:
    """A served log of exactly ``size`` entries in ``workdir`` (and, on PostgreSQL, a database named
    after the size): bulk-filled the first time (setup, untimed), reused as it is when an earlier
    run left one (--proof-logs)."""
    meta = workdir / "bench-proof-log.json"
    name = f"emshield_bench_proofs_{size}"
    db = None
    if store is not None:
        if meta.exists() and store.exists(name):
            db = store.url(name)
        else:
            meta.unlink(missing_ok=True)
            if store.exists(name):
                raise RuntimeError(f"database {name} exists but {meta} does not: drop it or give another --proof-logs")
            db = store.new(name)
    if meta.exists():
        server = OwnServer(workdir, args.workers, args.threads, kind, existing=json.loads(meta.read_text()), store=db)
        have = checkpoint_size(Conn(server.url), NoteVerifier.from_verifier_key(server.verifier_key))
        if have != size:
            server.stop()
            raise RuntimeError(f"{workdir} holds a log of {have:,} entries, not {size:,}")
        print(f"reusing the {size:,}-entry log in {workdir}", flush=True)
        return server
    server = OwnServer(workdir, args.workers, args.threads, kind, store=db)
    try:
        Conn(server.url, server.token).json("POST", "/v1/issuers", body=registration(seed),
                                            ctype="application/cbor", auth=True)
        secs = bulk_fill(server, seed, 0, size - 1)
    except BaseException:
        server.stop()
        raise
    print(f"bulk-filled {size - 1:,} entries in {secs:.1f} s ({(size - 1) / secs:,.0f}/s incl. signing; direct "
          "Sequencer.integrate, no HTTP)", flush=True)
    meta.write_text(json.dumps({"token": server.token, "verifier_key": server.verifier_key}))
    return server


def proofs(workdir: Path, args, kind: str, run_seed: bytes, rng: random.Random,
           store: Databases | None = None) -> list[dict]:
    """Proof latency on a log of exactly each requested size (one log per size)."""
    out = []
    where = _store_name(store)
    for size in sorted(int(s) for s in args.proof_sizes.split(",") if s):
        server = proof_log(workdir / where.lower() / str(size), size, args, kind, run_seed + b"-fill", store)
        try:
            r = {"size": size, "server": kind, "store": where} | proof_latency(server.url, size, args.proof_samples,
                                                                             rng) | \
                proof_compute(server.db, size, args.proof_samples, rng)
        finally:
            server.stop()
        r["load_1min"] = os.getloadavg()[0]
        out.append(r)
        print(f"proofs at {size:>9,} entries over HTTP ({kind}, {where}): inclusion p50 {r['inclusion_p50_ms']:.2f} ms "
              f"p99 {r['inclusion_p99_ms']:.2f} ms; consistency p50 {r['consistency_p50_ms']:.2f} ms "
              f"p99 {r['consistency_p99_ms']:.2f} ms (p99 target 5 ms: "
              f"x{max(r['inclusion_p99_ms'], r['consistency_p99_ms']) / TARGET_PROOF_P99_MS:.2f}; "
              f"GET /checkpoint baseline p99 {r['checkpoint_p99_ms']:.2f} ms); in-process without HTTP:"
              f" inclusion p50 {r['inclusion_compute_p50_ms']:.3f} p99 {r['inclusion_compute_p99_ms']:.3f} ms,"
              f" consistency p50 {r['consistency_compute_p50_ms']:.3f} p99 "
              f"{r['consistency_compute_p99_ms']:.3f} ms (CPU-time p99 {r['inclusion_compute_cpu_p99_ms']:.3f}"
              f" / {r['consistency_compute_cpu_p99_ms']:.3f} ms); load {r['load_1min']:.1f}", flush=True)
    return out


def compare_stores(figures: dict) -> None:
    """PostgreSQL's figures as ratios to SQLite's, per WSGI server and per proof tree size."""
    runs = {(r["store"], r["server"]): r for r in figures["runs"] if "store" in r}
    for (where, kind), pg in runs.items():
        lite = runs.get(("SQLite", kind))
        if where != "PostgreSQL" or lite is None:
            continue
        single = {r["clients"]: r for r in pg["single"]}
        base = {r["clients"]: r for r in lite["single"]}
        top = max(single)
        parts = [f"single appends at {c} clients x{single[c]['per_s'] / base[c]['per_s']:.2f}" for c in sorted(single)]
        ratio = single[top]["per_s"] / base[top]["per_s"]
        parts.append(f"(target at {top} clients >= x{TARGET_PG_SINGLE_RATIO}: {'met' if ratio >= TARGET_PG_SINGLE_RATIO else 'MISSED'})")
        parts.append(f"integration p99 at {top} clients {single[top]['integration_p99_ms']:.1f} ms vs "
                     f"{base[top]['integration_p99_ms']:.1f} ms (x{single[top]['integration_p99_ms'] / base[top]['integration_p99_ms']:.2f})")
        for key in ("batch", "batch_signed"):
            if key in pg and key in lite:
                parts.append(f"{key.replace('_', '-')} {pg[key]['per_s']:,.0f}/s x{pg[key]['per_s'] / lite[key]['per_s']:.2f}"
                             f" (target >= {TARGET_PG_BATCH:,.0f}/s: {'met' if pg[key]['per_s'] >= TARGET_PG_BATCH else 'MISSED'})")
        print(f"PostgreSQL vs SQLite ({kind}): " + "; ".join(parts))
    proofs_by = {(r["store"], r["size"]): r for r in figures.get("proofs", [])}
    for (where, size), pg in sorted(proofs_by.items(), key=lambda kv: kv[0][1]):
        lite = proofs_by.get(("SQLite", size))
        if where != "PostgreSQL" or lite is None:
            continue
        worst = max(pg["inclusion_p99_ms"], pg["consistency_p99_ms"])
        print(f"PostgreSQL vs SQLite proofs at {size:,}: inclusion p99 {pg['inclusion_p99_ms']:.2f} ms "
              f"x{pg['inclusion_p99_ms'] / lite['inclusion_p99_ms']:.2f}, consistency p99 {pg['consistency_p99_ms']:.2f} ms "
              f"x{pg['consistency_p99_ms'] / lite['consistency_p99_ms']:.2f} (p99 target {TARGET_PROOF_P99_MS} ms: "
              f"{'met' if worst <= TARGET_PROOF_P99_MS else 'MISSED'})")


if __name__ == "__main__":
    sys.exit(main())
