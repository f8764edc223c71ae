"""Transparency log under hostile clients: slow bodies and large bogus batches (issue #20).

    python bench/log_hostile.py                       # this tree, with gunicorn and Granian
    python bench/log_hostile.py --baseline-src DIR    # ... and first the log server of another source
                                                      # tree (e.g. `git archive a17669d | tar -x -C DIR`)

Each server gets a fresh log (`emshield-log init`, 2 workers x 16 threads unless told otherwise,
as bench/log_append.py runs it) holding a few hundred entries, then, in one run:
- **unloaded**: for --window seconds, one reader cycling GET /checkpoint, a full hash tile and an
  inclusion proof (p50/p99/max latency; a read unanswered within --read-timeout counts as that),
  while --append-clients threads append fresh signed entries one by one (appends/s);
- **slow clients**: the same while S connections (--slow, e.g. 32 and 1000) hold a
  `POST /v1/entries` with `Content-Length: 1000` and one body byte sent; the figures are printed
  beside the unloaded ones (read p99 [target <= 100 ms at 1,000], appends as a ratio of the
  unloaded rate [target >= 0.5]); then how many of the S were answered, with which status, within
  the body deadline plus 5 s (the server's `--body-timeout`, default 10 s);
- **memory**: the server's resident memory (all its processes: main, workers, sequencer) idle,
  and its peak while --bogus clients at once each post a ~16 MiB batch body with valid framing
  and bogus items [target: peak <= 512 MiB], sampled every 10 ms, with the answers' statuses.
The clients run on the same cores as the server (raw-socket HTTP/1.1 from bench/log_append.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import cbor2

from log_append import Conn, OwnServer, make_entries, pct, registration

TARGET_READ_P99_MS = 100.0
TARGET_APPEND_RATIO = 0.5
TARGET_PEAK_RSS_MIB = 512.0
BATCH_ITEM = 1670  # 10,000 items of this size: just under the 16 MiB body limit


class _Timed(Conn):
    """A `Conn` whose reads give up after ``timeout`` seconds (a starved server never answers)."""

    def __init__(self, url: str, timeout: float, token: str | None = None) -> None:
        super().__init__(url, token)
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        sock = super()._connect()
        sock.settimeout(self.timeout)
        return sock


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            out += _tree(int(child))
    except OSError:
        pass
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, MiB."""
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def measure_window(url: str, size: int, entries, window: float, clients: int, read_timeout: float) -> dict:
    """Read latencies and append rate over ``window`` seconds (see the module docstring)."""
    stop = time.monotonic() + window
    lock = threading.Lock()
    appended = [0]
    failures = [0]
    latencies: list[float] = []
    unanswered = [0]
    rng = random.Random(size)

    def reader() -> None:
        paths = itertools.cycle(["/checkpoint", "/tile/0/000",
                                 *(f"/v1/proof/inclusion?index={rng.randrange(size)}&tree_size={size}"
                                   for _ in range(50))])
        conn = _Timed(url, read_timeout)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                status, _ = conn.request("GET", next(paths))
                ok = status == 200
            except OSError:
                conn.sock = None
                ok = False
            took = time.perf_counter() - t0
            latencies.append(took * 1000)
            if not ok:
                unanswered[0] += 1
                time.sleep(max(0.0, read_timeout - took))

    def appender() -> None:
        conn = _Timed(url, read_timeout)
        while time.monotonic() < stop:
            with lock:
                body = next(entries)
            try:
                status, _ = conn.request("POST", "/v1/entries", body=body, ctype="application/cbor")
            except OSError:
                conn.sock = None
                status = 0
            with lock:
                if status in (200, 201):
                    appended[0] += 1
                else:
                    failures[0] += 1

    threads = [threading.Thread(target=reader)] + [threading.Thread(target=appender) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    return {"reads": len(latencies), "reads_unanswered": unanswered[0],
            "read_p50_ms": pct(latencies, 50) if latencies else None,
            "read_p99_ms": pct(latencies, 99) if latencies else None,
            "read_max_ms": max(latencies) if latencies else None,
            "appends_per_s": appended[0] / secs, "append_failures": failures[0]}


SLOW_REQUEST = (b"POST /v1/entries HTTP/1.1\r\nHost: bench\r\nContent-Type: application/cbor\r\n"
                b"Content-Length: 1000\r\n\r\n\xa5")


def open_slow(port: int, count: int) -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(SLOW_REQUEST)
        out.append(s)
    return out


def slow_outcome(socks: list[socket.socket], t0: float, until: float) -> dict:
    """Statuses the held connections (opened from ``t0`` on) got by ``until`` (both monotonic),
    and when the last came, counted from ``t0``."""
    statuses: dict[str, int] = {}
    last = None
    for s in socks:
        buf = b""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                statuses["none"] = statuses.get("none", 0) + 1
                break
            s.settimeout(left)
            try:
                data = s.recv(4096)
            except OSError:
                statuses["none"] = statuses.get("none", 0) + 1
                break
            if not data:
                statuses["closed"] = statuses.get("closed", 0) + 1
                break
            buf += data
            if b"\r\n\r\n" in buf:
                code = buf.split(b" ", 2)[1].decode()
                statuses[code] = statuses.get(code, 0) + 1
                last = time.monotonic() - t0
                break
    for s in socks:
        s.close()
    return {"statuses": statuses, "last_answer_after_s": last}


def bogus_batch() -> bytes:
    """~16 MiB, valid framing (a canonical CBOR array of byte strings), every item garbage."""
    rng = random.Random(20)
    item = bytes(rng.getrandbits(8) for _ in range(BATCH_ITEM))
    return cbor2.dumps([item] * 10_000, canonical=True)


def memory_attack(server: OwnServer, clients: int) -> dict:
    body = bogus_batch()
    idle = rss_mib(server.proc.pid)
    peak = [idle]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(server.proc.pid))
            time.sleep(0.01)

    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def post() -> None:
        try:
            status, _ = Conn(server.url).request("POST", "/v1/entries/batch", body=body, ctype="application/cbor")
        except OSError:
            status = 0
        with lock:
            statuses[status] = statuses.get(status, 0) + 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    posts = [threading.Thread(target=post) for _ in range(clients)]
    for t in posts:
        t.start()
    for t in posts:
        t.join()
    secs = time.perf_counter() - t0
    time.sleep(0.2)
    done.set()
    sampler.join()
    return {"body_mib": len(body) / 2**20, "idle_rss_mib": idle, "peak_rss_mib": peak[0],
            "after_rss_mib": rss_mib(server.proc.pid), "statuses": statuses, "seconds": secs}


def _ms(v) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _window_text(r: dict, base: dict | None) -> str:
    text = (f"reads p50 {_ms(r['read_p50_ms'])} p99 {_ms(r['read_p99_ms'])} max {_ms(r['read_max_ms'])} ms"
            f" ({r['reads']} reads, {r['reads_unanswered']} unanswered)")
    if base is None:
        return text + f"; appends {r['appends_per_s']:,.0f}/s ({r['append_failures']} failed)"
    ratio = r["appends_per_s"] / base["appends_per_s"] if base["appends_per_s"] else 0.0
    p99 = r["read_p99_ms"] or float("inf")
    return (text + f" [p99 target {TARGET_READ_P99_MS:.0f} ms: x{p99 / TARGET_READ_P99_MS:.2f}];"
            f" appends {r['appends_per_s']:,.0f}/s = x{ratio:.2f} of unloaded [target >= {TARGET_APPEND_RATIO}]"
            f" ({r['append_failures']} failed)")


def run_server(label: str, kind: str, src: Path | None, workdir: Path, args, seed: bytes) -> dict:
    server = OwnServer(workdir, args.workers, args.threads, kind, src)
    out: dict = {"label": label, "server": kind, "slow": []}
    try:
        print(f"{label}: {server.url}, {kind}, {args.workers} workers x {args.threads} threads", flush=True)
        admin = Conn(server.url, server.token)
        admin.json("POST", "/v1/issuers", body=registration(seed), ctype="application/cbor", auth=True)
        need = 300 + int(args.window * 4000 * (1 + len(args.slow)))
        entries_list = make_entries(seed, 0, need)
        admin.json("POST", "/v1/entries/batch", body=cbor2.dumps(entries_list[:300], canonical=True),
                   ctype="application/cbor")
        size = 301
        entries = iter(entries_list[300:])
        base = out["unloaded"] = measure_window(server.url, size, entries, args.window, args.append_clients,
                                                args.read_timeout)
        print(f"  unloaded: {_window_text(base, None)}", flush=True)
        for count in args.slow:
            t0 = time.monotonic()
            socks = open_slow(server.port, count)
            opened = time.monotonic() - t0
            r = measure_window(server.url, size, entries, args.window, args.append_clients, args.read_timeout)
            r |= {"connections": count, "open_s": opened}
            r |= slow_outcome(socks, t0, t0 + opened + args.body_timeout + 5)
            out["slow"].append(r)
            print(f"  {count:>5} slow bodies held (opened in {opened:.1f} s): {_window_text(r, base)};"
                  f" the slow ones got {r['statuses']} within {args.body_timeout + 5:.0f} s of the last one's opening"
                  f" (last answer after {_ms(r['last_answer_after_s'])} s)", flush=True)
            time.sleep(1)  # let the server close them before the next phase
        m = out["memory"] = memory_attack(server, args.bogus)
        print(f"  {args.bogus} concurrent {m['body_mib']:.1f} MiB bogus batches: server RSS idle"
              f" {m['idle_rss_mib']:.0f} MiB, peak {m['peak_rss_mib']:.0f} MiB"
              f" [target {TARGET_PEAK_RSS_MIB:.0f}: x{m['peak_rss_mib'] / TARGET_PEAK_RSS_MIB:.2f}], after"
              f" {m['after_rss_mib']:.0f} MiB; answers {m['statuses']} in {m['seconds']:.1f} s", flush=True)
    finally:
        server.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="gunicorn,granian", help="this tree's servers to measure, in this order")
    ap.add_argument("--baseline-src", type=Path, action="append", default=[],
                    help="first measure the log server of this source tree through its own `emshield-log serve`")
    ap.add_argument("--baseline-server", default="granian", choices=["gunicorn", "granian"],
                    help="the server of the --baseline-src runs")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--slow", default="32,1000", help="comma-separated counts of slow connections to hold")
    ap.add_argument("--window", type=float, default=4.0, help="seconds each measurement runs")
    ap.add_argument("--append-clients", type=int, default=8)
    ap.add_argument("--read-timeout", type=float, default=5.0, help="a read unanswered this long counts as failed")
    ap.add_argument("--body-timeout", type=float, default=10.0,
                    help="the servers' body deadline (their default); the slow ones are waited for 5 s longer")
    ap.add_argument("--bogus", type=int, default=32, help="concurrent ~16 MiB bogus batch bodies")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.slow = [int(s) for s in args.slow.split(",") if s]
    print(f"{os.cpu_count()} cores; load average before the run {os.getloadavg()[0]:.2f} (clients on the same cores)")
    plan = [(f"baseline {src}", args.baseline_server, src) for src in args.baseline_src]
    plan += [(f"{s} (this tree)", s, None) for s in args.servers.split(",") if s]
    runs = []
    with tempfile.TemporaryDirectory(prefix="emshield-hostile-") as tmp:
        for n, (label, kind, src) in enumerate(plan):
            runs.append(run_server(label, kind, src, Path(tmp) / f"run{n}", args, os.urandom(8)))
    compare(runs)
    if args.json:
        print(json.dumps(runs, indent=2))
    return 0


def compare(runs: list[dict]) -> None:
    """Each later run beside the first (the baseline when --baseline-src is given)."""
    base = runs[0]
    for run in runs[1:]:
        parts = []
        for mine, theirs in zip(run["slow"], base["slow"]):
            parts.append(f"{mine['connections']} slow: read p99 {_ms(theirs['read_p99_ms'])} -> "
                         f"{_ms(mine['read_p99_ms'])} ms, appends x{theirs['appends_per_s'] / base['unloaded']['appends_per_s']:.2f}"
                         f" -> x{mine['appends_per_s'] / run['unloaded']['appends_per_s']:.2f} of unloaded")
        parts.append(f"bogus batches: peak RSS {base['memory']['peak_rss_mib']:.0f} -> {run['memory']['peak_rss_mib']:.0f}"
                     f" MiB (x{run['memory']['peak_rss_mib'] / base['memory']['peak_rss_mib']:.2f})")
        print(f"{run['label']} vs {base['label']}: " + "; ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
