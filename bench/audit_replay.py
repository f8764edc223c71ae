"""Auditor replay speed: entries/s fully verified vs. plain download of the same entries.

    ./run bench audit_replay [--entries 100000] [--jobs 1 2] [--url URL --key VKEY]

Without --url it builds a fresh log of --entries issuance entries (plus one issuer registration)
with `emshield-log init` + `emshield-log serve` and fills it through the **batch append path**
over HTTP (POST /v1/entries/batch, 5,000 entries a request; the server checks every signature),
then measures, in the same run and against the same server:

- download baselines (no checks): every entry bundle via the tile API (`/tile/entries/...`,
  8 fetch threads), and every leaf via the paged JSON API (`/v1/entries`, 1,000 per page);
- `emshield-audit --replay` (`verifier.audit.audit`) with each --jobs value: bundles and level-0
  tiles, strict decoding, Ed25519 signature of every entry, registration order, duplicates,
  all upper tiles and the root;
- the per-entry CPU floor: `decode_entry` and one Ed25519 verification, single core;
- `--replay --incremental` after --grow more entries were appended.

Prints figures and ratios (replay time / tile download time). Heavy by design: not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
from _util import timed
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from emshield.logclient.http import LogClient
from emshield.logclient.tiles import TileClient
from emshield.tlog import entry as E
from emshield.tlog.tiles import bundles_for
from verifier.audit.auditor import audit

BIN = Path(sys.executable).parent
TOKEN = "bench-audit-operator-token-" + "0" * 16
ISSUER_SEED = b"emshield-bench/audit-replay"


def _key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(ISSUER_SEED).digest())


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _sign_range(bounds: tuple[int, int]) -> list[bytes]:
    key = _key()
    kid = E.issuer_key_id(_pub(key))
    out = []
    for n in range(*bounds):
        wm = hashlib.sha256(b"bench-wm" + n.to_bytes(8, "big")).digest()
        entry = E.Issuance(uuid.UUID(bytes=wm[:16]).bytes, hashlib.sha256(b"bench-backbone").digest(), wm, None,
                           "watermark", 1_700_000_000 + n, kid)
        out.append(E.sign_entry(entry, key).encode())
    return out


def signed_entries(count: int) -> list[bytes]:
    step = 5000
    with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        parts = pool.map(_sign_range, [(a, min(a + step, count)) for a in range(0, count, step)])
    return [e for p in parts for e in p]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_log(workdir: Path, count: int) -> tuple[subprocess.Popen, str, str, float]:
    db = workdir / "log.db"
    env = os.environ | {"EMSHIELD_LOG_OPERATOR_TOKEN": TOKEN}
    out = subprocess.run([str(BIN / "emshield-log"), "init", "--db", str(db), "--origin", "bench.emshield/audit",
                          "--json"], env=env, capture_output=True, text=True, check=True)
    vkey = json.loads(out.stdout)["verifier_key"]
    port = _free_port()
    proc = subprocess.Popen([str(BIN / "emshield-log"), "serve", "--db", str(db), "--port", str(port),
                             "--log-level", "warning"], start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url + "/checkpoint", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("log server did not start")
        time.sleep(0.1)
    key = _key()
    log = LogClient(url, operator_token=TOKEN, timeout=300)
    log.register_issuer(E.sign_entry(E.IssuerRegistration(_pub(key), "bench issuer", bytes.fromhex("a1617601"),
                                                          1_700_000_000), key).encode())
    t0 = time.perf_counter()
    entries = signed_entries(count)
    sign_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for a in range(0, count, 5000):
        log.append_batch(entries[a:a + 5000])
    fill_s = time.perf_counter() - t0
    print(f"built log: {count + 1} entries (signing {sign_s:.1f} s, batch path {fill_s:.1f} s ="
          f" {count / fill_s:,.0f} entries/s)")
    return proc, url, vkey, fill_s


def download_tiles(url: str, size: int) -> int:
    return sum(len(es) for _, es in TileClient(url).fetch_many(bundles_for(0, size)))


def download_json(url: str, size: int) -> int:
    return sum(1 for _ in LogClient(url).iter_entries(0, size))


def cpu_floor(url: str, n: int = 2000) -> tuple[float, float]:
    """Seconds per entry for strict decoding, and for one Ed25519 verification (single core)."""
    data = [e.data for e in LogClient(url).entries(1, 1 + n)]
    t_dec, decoded = timed(lambda: [E.decode_entry(d) for d in data])
    pub = _key().public_key()
    msgs = [(s.signature, E.signing_bytes(s.entry)) for s in decoded]
    t_ver, _ = timed(lambda: [pub.verify(sig, m) for sig, m in msgs])
    return t_dec / len(data), t_ver / len(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=100_000, help="issuance entries in the built log")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="replay worker processes to measure")
    ap.add_argument("--grow", type=int, default=5000,
                    help="entries appended before the --incremental measurement (built logs only; 0: skip)")
    ap.add_argument("--url", help="audit an existing log instead of building one (needs --key)")
    ap.add_argument("--key", help="the existing log's verifier key")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="emshield-audit-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    proc = None
    if args.url:
        if not args.key:
            ap.error("--url needs --key")
        url, vkey = args.url, args.key
    else:
        proc, url, vkey, _ = build_log(workdir, args.entries)
    try:
        size = int(requests.get(url + "/checkpoint", timeout=10).text.split("\n")[1])
        print(f"log {url}: {size} entries; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        t_tiles, n = timed(lambda: download_tiles(url, size))
        assert n == size
        print(f"baseline download, tile bundles : {t_tiles:6.2f} s  {size / t_tiles:10,.0f} entries/s")
        t_json, n = timed(lambda: download_json(url, size))
        assert n == size
        print(f"baseline download, /v1/entries  : {t_json:6.2f} s  {size / t_json:10,.0f} entries/s")
        dec, ver = cpu_floor(url)
        print(f"CPU floor per entry (1 core)    : decode {dec * 1e6:.0f} us + Ed25519 verify {ver * 1e6:.0f} us"
              f" = {1 / (dec + ver):,.0f} entries/s")
        for jobs in args.jobs:
            state = workdir / f"audit-state-{jobs}-{time.time_ns()}.json"
            t, report = timed(lambda: audit(url, vkey, state, do_replay=True, jobs=jobs, timeout=120))
            assert report.ok and report.replayed == size, report.to_json()
            print(f"audit --replay --jobs {jobs:<2}      : {t:6.2f} s  {size / t:10,.0f} entries/s verified"
                  f"  ({t / t_tiles:.1f}x the tile download, {t / t_json:.1f}x the JSON download)")
        if proc is not None and args.grow:
            # --incremental after the log grew: only the new entries are checked (plus tiles and root).
            LogClient(url, timeout=300).append_batch(signed_entries(args.entries + args.grow)[args.entries:])
            t, report = timed(lambda: audit(url, vkey, state, do_replay=True, jobs=max(args.jobs), timeout=120,
                                            incremental=True))
            assert report.ok and report.replayed == args.grow, report.to_json()
            print(f"audit --replay --incremental    : {t:6.2f} s  for {args.grow:,} new entries on a"
                  f" {size + args.grow:,}-entry log ({args.grow / t:,.0f} new entries/s)")
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
