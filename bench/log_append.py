"""Transparency-log benchmark: durable appends over HTTP, batch appends, proof latency, integration latency.

    python bench/log_append.py                       # own server on 127.0.0.1 with a temp store
    python bench/log_append.py --url http://host:port   # any running log; the operator token for
                                                        # registering the bench issuer comes from
                                                        # $EMSHIELD_LOG_OPERATOR_TOKEN

Figures (issue #3 targets in brackets):
- durable single-entry appends/s with 1, 8 and 32 concurrent clients [>= 2,000/s with 32 clients
  on 2 cores]; an append is answered only after its transaction (leaf + tree nodes + signed
  checkpoint) was COMMITted with fsync. Baselines in the same run: GET /checkpoint requests/s
  with the same clients on the same server (the HTTP/WSGI stack's ceiling, no work), and one
  fsync'ed SQLite transaction per entry without HTTP or signature checks (a log without group
  commit). Server and client CPU per entry come from /proc and process_time.
- batch-path entries/s [>= 20,000/s]. Baseline: this machine's Ed25519 verification rate on one
  core (the server verifies every entry's signature; the path cannot beat that times the cores).
- integration latency: from an acknowledged append to the client holding a verified signed
  checkpoint that includes it, p50/p99 under the 32-client load [p99 <= 1 s].
- inclusion and consistency proof latency over HTTP, p50/p99, at 10^4, 10^5 and 10^6 entries
  [p99 <= 5 ms at 10^6]. Large trees are filled by direct bulk insert through the server's own
  write path (`Sequencer.integrate`: leaves, nodes and a signed checkpoint per 50,000 entries)
  with real signed entries, skipping HTTP and signature re-verification; --url mode measures
  proofs at the remote log's current size instead.
Tree building against merkletools/pymerkle is in bench/merkle_build.py.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
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


# -- entries --------------------------------------------------------------------------------------


def _key(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"emshield-bench/" + seed).digest())


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _issuance(seed: bytes, n: int, key: Ed25519PrivateKey, kid: bytes) -> tuple[bytes, str, bytes]:
    """Signed issuance entry number ``n``: (encoded entry, device UUID text, watermark commitment)."""
    wm = hashlib.sha256(seed + n.to_bytes(8, "big")).digest()
    device = uuid.UUID(bytes=wm[:16])
    entry = E.Issuance(device.bytes, hashlib.sha256(b"bench-backbone").digest(), wm, None, "watermark",
                       1_700_000_000 + n, kid)
    return E.sign_entry(entry, key).encode(), str(device), wm


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


class Conn:
    """One keep-alive HTTP/1.1 connection (http.client: far less client CPU than requests)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.token = token
        self.c = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
                auth: bool = False) -> tuple[int, bytes]:
        headers = {}
        if ctype:
            headers["Content-Type"] = ctype
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(2):
            try:
                self.c.request(method, path, body=body, headers=headers)
                r = self.c.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, ConnectionError):
                self.c.close()
                self.c = http.client.HTTPConnection(self.host, self.port, timeout=120)
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
    """`emshield-log init` + `emshield-log serve` in a temp directory."""

    def __init__(self, workdir: Path, workers: int, threads: int) -> None:
        self.db = workdir / "bench-log.db"
        self.token = "bench-operator-token-" + os.urandom(16).hex()
        out = subprocess.run([str(BIN / "emshield-log"), "init", "--db", str(self.db), "--origin", "bench.emshield/log",
                              "--json"], env=os.environ | {TOKEN_ENV: self.token}, capture_output=True, text=True,
                             check=True)
        self.verifier_key = json.loads(out.stdout)["verifier_key"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(BIN / "emshield-log"), "serve", "--db", str(self.db), "--port", str(self.port),
                                      "--workers", str(workers), "--threads", str(threads), "--log-level", "warning"],
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
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


def single_appends(url: str, entries: list[bytes], clients: int, verifier: NoteVerifier | None,
                   sample_every: int = 10) -> dict:
    """Each client thread POSTs its share one at a time; every `sample_every`-th ack is followed by
    fetching (and verifying) checkpoints until one includes the entry: the integration latency."""
    shares = [entries[i::clients] for i in range(clients)]
    latencies: list[float] = []
    integration: list[float] = []
    indices: list[int] = []
    lock = threading.Lock()
    errors: list[str] = []

    def work(share: list[bytes]) -> None:
        conn = Conn(url)
        lat, integ, idx = [], [], []
        for k, e in enumerate(share):
            t0 = time.perf_counter()
            status, body = conn.request("POST", "/v1/entries", body=e, ctype="application/cbor")
            t1 = time.perf_counter()
            if status not in (200, 201):
                errors.append(f"{status} {body[:200]!r}")
                return
            index = json.loads(body)["index"]
            lat.append(t1 - t0)
            idx.append(index)
            if k % sample_every == 0:
                while checkpoint_size(conn, verifier) <= index:
                    time.sleep(0.005)
                integ.append(time.perf_counter() - t1)
        with lock:
            latencies.extend(lat)
            integration.extend(integ)
            indices.extend(idx)

    wall = run_clients(work, shares)
    if errors:
        raise RuntimeError(f"append failed: {errors[0]}")
    if len(set(indices)) != len(entries):
        raise RuntimeError("duplicate indices were returned")
    return {"clients": clients, "entries": len(entries), "seconds": wall, "per_s": len(entries) / wall,
            "latency_p50_ms": 1e3 * pct(latencies, 50), "latency_p99_ms": 1e3 * pct(latencies, 99),
            "integration_p50_ms": 1e3 * pct(integration, 50), "integration_p99_ms": 1e3 * pct(integration, 99),
            "integration_samples": len(integration)}


def get_rate(url: str, requests_total: int, clients: int) -> float:
    """Baseline: GET /checkpoint requests/s with the same clients: the HTTP + WSGI stack's floor."""
    per_client = requests_total // clients

    def work(n: int) -> None:
        conn = Conn(url)
        for _ in range(n):
            conn.request("GET", "/checkpoint")

    return per_client * clients / run_clients(work, [per_client] * clients)


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


def proof_compute(db: Path, size: int, samples: int, rng: random.Random) -> dict:
    """The same proofs computed in-process from the store (no HTTP): the storage + hashing cost."""
    from log_server.storage import SqliteStore

    store = SqliteStore(db)
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


def bulk_fill(db: Path, seed: bytes, start: int, stop: int, chunk: int = 50_000) -> float:
    """Append issuance entries [start, stop) straight through Sequencer.integrate; returns seconds."""
    from log_server.app import ServerConfig, create_app
    from log_server.entries import IssuanceFields
    from log_server.sequencer import PreparedEntry

    app = create_app(ServerConfig(db_path=db))
    state = app.extensions["emshield_log"]
    kid = E.issuer_key_id(_pub(_key(seed)))
    t0 = time.perf_counter()
    for a in range(start, stop, chunk):
        prepared = [PreparedEntry(data, merkle.leaf_hash(data), "issuance",
                                  issuance=IssuanceFields(kid, device, wm, None))
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
    with sqlite3.connect(f"file:{server.db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]


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
    return (f"; CPU per entry: server {r['server_cpu_us_per_entry']:.0f} us, client "
            f"{r['client_cpu_us_per_entry']:.0f} us; {r['entries_per_commit']:.1f} entries per commit")


# -- main --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running log (default: start one on 127.0.0.1 with a temp store)")
    ap.add_argument("--entries", type=int, default=6000, help="entries per single-append run (default 6000)")
    ap.add_argument("--clients", default="1,8,32", help="comma-separated client counts (default 1,8,32)")
    ap.add_argument("--batch-entries", type=int, default=60_000, help="entries through the batch path")
    ap.add_argument("--batch-size", type=int, default=2000, help="entries per batch request")
    ap.add_argument("--batch-clients", type=int, default=4, help="concurrent batch clients")
    ap.add_argument("--proof-sizes", default="10000,100000,1000000", help="tree sizes for proof latency (own server)")
    ap.add_argument("--proof-samples", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2, help="own server: gunicorn workers")
    ap.add_argument("--threads", type=int, default=16, help="own server: threads per worker")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",") if c]
    run_seed = os.urandom(8)  # fresh entries every run: a re-run against the same log appends, not dedups
    rng = random.Random(1)
    figures: dict = {"cores": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    print(f"{os.cpu_count()} cores; load average before the run {os.getloadavg()[0]:.2f} (other work on this"
          " machine shares the cores)")

    with tempfile.TemporaryDirectory(prefix="emshield-bench-") as tmp:
        workdir = Path(tmp)
        server = None
        if args.url:
            url, token = args.url.rstrip("/"), os.environ.get(TOKEN_ENV)
            if not token:
                ap.error(f"--url needs the operator token in ${TOKEN_ENV} to register the bench issuer")
            verifier = None
        else:
            server = OwnServer(workdir, args.workers, args.threads)
            url, token = server.url, server.token
            verifier = NoteVerifier.from_verifier_key(server.verifier_key)
            print(f"own server: {url}, {args.workers} gunicorn workers x {args.threads} threads, store {server.db}")
        try:
            admin = Conn(url, token)
            admin.json("POST", "/v1/issuers", body=registration(run_seed), ctype="application/cbor", auth=True)
            total = args.entries * len(clients) + args.batch_entries
            t0 = time.perf_counter()
            entries = make_entries(run_seed, 0, total)
            print(f"signed {total} entries for the run in {time.perf_counter() - t0:.1f} s (client work, untimed)")

            figures["baseline_sqlite_commit_per_entry_per_s"] = baseline_sqlite_commit_per_entry(
                workdir, entries[:2000])
            figures["baseline_ed25519_verify_per_core_per_s"] = baseline_ed25519_verify(entries, run_seed)
            base = figures["baseline_sqlite_commit_per_entry_per_s"]
            print(f"baseline: one fsync'ed SQLite transaction per entry: {base:,.0f} entries/s")
            print(f"baseline: decode + Ed25519 verify of an entry, one core: "
                  f"{figures['baseline_ed25519_verify_per_core_per_s']:,.0f} entries/s")

            pos = 0
            figures["single"] = []
            for c in clients:
                floor = get_rate(url, 3000, c)
                cpu = _cpu_start(server)
                r = single_appends(url, entries[pos:pos + args.entries], c, verifier) | _cpu_used(server, cpu,
                                                                                                  args.entries)
                pos += args.entries
                r["baseline_get_checkpoint_per_s"] = floor
                figures["single"].append(r)
                print(f"durable single appends, {c:>2} clients: {r['per_s']:8,.0f}/s "
                      f"(x{r['per_s'] / floor:.2f} of GET /checkpoint's {floor:,.0f}/s, x{r['per_s'] / base:.2f} of one"
                      f" commit per entry, x{r['per_s'] / TARGET_APPENDS:.2f} of the 2,000/s target) latency p50 {r['latency_p50_ms']:.1f} ms p99 "
                      f"{r['latency_p99_ms']:.1f} ms; integration p50 {r['integration_p50_ms']:.1f} ms p99 "
                      f"{r['integration_p99_ms']:.1f} ms ({r['integration_samples']} samples){_cpu_text(r)}")
            cpu = _cpu_start(server)
            b = batch_appends(url, entries[pos:pos + args.batch_entries], args.batch_size, args.batch_clients) | \
                _cpu_used(server, cpu, args.batch_entries)
            figures["batch"] = b
            ceiling = figures["baseline_ed25519_verify_per_core_per_s"]
            print(f"batch appends ({args.batch_clients} clients x {args.batch_size}/request): {b['per_s']:,.0f} "
                  f"entries/s (x{b['per_s'] / TARGET_BATCH:.2f} of the 20,000/s target, "
                  f"x{b['per_s'] / ceiling:.2f} of one core's verification rate){_cpu_text(b)}")

            figures["proofs"] = []
            if server is None:
                size = checkpoint_size(admin, None)
                r = {"size": size} | proof_latency(url, size, args.proof_samples, rng)
                figures["proofs"].append(r)
                print(f"proofs at {size:,}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k != "size"))
            else:
                server.stop()  # proofs get a fresh log of exactly the requested sizes
                (workdir / "proofs").mkdir()
                server = OwnServer(workdir / "proofs", args.workers, args.threads)
                fill_seed = run_seed + b"-fill"
                Conn(server.url, server.token).json("POST", "/v1/issuers", body=registration(fill_seed),
                                                    ctype="application/cbor", auth=True)
                size = 1
                for want in sorted(int(s) for s in args.proof_sizes.split(",") if s):
                    if want > size:
                        secs = bulk_fill(server.db, fill_seed, size - 1, want - 1)
                        print(f"bulk-filled {want - size:,} entries to {want:,} in {secs:.1f} s "
                              f"({(want - size) / secs:,.0f}/s incl. signing; direct Sequencer.integrate, no HTTP)")
                        size = want
                    r = {"size": size} | proof_latency(server.url, size, args.proof_samples, rng) | \
                        proof_compute(server.db, size, args.proof_samples, rng)
                    figures["proofs"].append(r)
                    print(f"proofs at {size:>9,} entries over HTTP: inclusion p50 {r['inclusion_p50_ms']:.2f} ms "
                          f"p99 {r['inclusion_p99_ms']:.2f} ms; consistency p50 {r['consistency_p50_ms']:.2f} ms "
                          f"p99 {r['consistency_p99_ms']:.2f} ms (p99 target 5 ms: "
                          f"x{max(r['inclusion_p99_ms'], r['consistency_p99_ms']) / TARGET_PROOF_P99_MS:.2f}; "
                          f"GET /checkpoint baseline p99 {r['checkpoint_p99_ms']:.2f} ms); in-process without HTTP:"
                          f" inclusion p50 {r['inclusion_compute_p50_ms']:.3f} p99 {r['inclusion_compute_p99_ms']:.3f} ms,"
                          f" consistency p50 {r['consistency_compute_p50_ms']:.3f} p99 "
                          f"{r['consistency_compute_p99_ms']:.3f} ms (CPU-time p99 {r['inclusion_compute_cpu_p99_ms']:.3f}"
                          f" / {r['consistency_compute_cpu_p99_ms']:.3f} ms)")
        finally:
            if server is not None:
                server.stop()
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
