"""A real HTTP proxy on 127.0.0.1 in front of a log server that corrupts its answers on demand, so
page tests can show that every tick the explorer draws is computed from what it was sent.

Modes (``proxy.mode``): "honest" passes everything through; "wrong-root" changes the root line of
the checkpoint (its signature is kept); "forged-signature" replaces the log's signature bytes
(its key ID is kept); "flipped-entry-byte" flips the last byte of every leaf in entry bundles,
``/v1/entries`` and ``/v1/issuances``; "bad-proof" flips a byte of the first hash of every
inclusion and consistency proof; "rollback" and "fork" serve ``proxy.note`` (a genuine older checkpoint; a checkpoint the
log's key signed for another tree) as the latest. ``proxy.requests`` counts the requests by path.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MODES = ("honest", "wrong-root", "forged-signature", "flipped-entry-byte", "bad-proof", "rollback", "fork")
_DROP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "date", "server"}


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01]) if data else data


def _flip_b64(text: str, first: bool = False) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[0 if first else -1] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _flip_bundle(data: bytes) -> bytes:
    out, at = bytearray(), 0
    while at < len(data):
        n = int.from_bytes(data[at:at + 2], "big")
        out += data[at:at + 2] + _flip_last(data[at + 2:at + 2 + n])
        at += 2 + n
    return bytes(out)


def tamper_note(note: bytes, mode: str) -> bytes:
    text, _, sigs = note.decode().partition("\n\n")
    if mode == "wrong-root":
        lines = text.split("\n")
        lines[2] = base64.b64encode(hashlib.sha256(b"emshield-test/wrong-root").digest()).decode()
        return ("\n".join(lines) + "\n\n" + sigs).encode()
    first, rest = sigs.split("\n", 1)
    prefix, b64 = first.rsplit(" ", 1)
    raw = base64.b64decode(b64)
    forged = raw[:4] + hashlib.sha512(b"emshield-test/forged").digest()
    return (text + "\n\n" + prefix + " " + base64.b64encode(forged).decode() + "\n" + rest).encode()


class TamperProxy:
    def __init__(self, upstream: str) -> None:
        u = urlsplit(upstream)
        self.host, self.upstream_port = u.hostname, u.port
        self.mode = "honest"
        self.note: bytes | None = None
        self.requests: Counter[str] = Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> TamperProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def rewrite(self, path: str, status: int, body: bytes) -> bytes:
        route = urlsplit(path).path
        if status != 200:
            return body
        if route == "/checkpoint":
            if self.mode in ("rollback", "fork") and self.note is not None:
                return self.note
            if self.mode in ("wrong-root", "forged-signature"):
                return tamper_note(body, self.mode)
        if self.mode == "flipped-entry-byte":
            if route.startswith("/tile/entries/"):
                return _flip_bundle(body)
            if route in ("/v1/entries", "/v1/issuances"):
                j = json.loads(body)
                for item in j.get("entries", []) + j.get("issuances", []):
                    item["leaf"] = _flip_b64(item["leaf"])
                return json.dumps(j).encode()
        if self.mode == "bad-proof" and route in ("/v1/proof/inclusion", "/v1/proof/consistency"):
            j = json.loads(body)
            if j["hashes"]:
                j["hashes"][0] = _flip_b64(j["hashes"][0], first=True)
            return json.dumps(j).encode()
        return body

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                proxy.requests[urlsplit(self.path).path] += 1
                conn = http.client.HTTPConnection(proxy.host, proxy.upstream_port, timeout=30)
                try:
                    conn.request("GET", self.path, headers={"Accept-Encoding": "identity"})
                    r = conn.getresponse()
                    body = proxy.rewrite(self.path, r.status, r.read())
                    headers = [(k, v) for k, v in r.getheaders() if k.lower() not in _DROP]
                finally:
                    conn.close()
                self.send_response(r.status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        return Handler
