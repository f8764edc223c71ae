"""A WSGI app served by an ASGI server, with every request body read on the event loop first.

Why: a WSGI server reads a request body in the thread that runs the app. A client that sends its
headers and then a body byte by byte (or not at all) pins that thread, and a few dozen such
clients pin them all, so the server answers nobody (the log's issue #20). Here the ASGI server's
event loop reads each body, under a deadline and a per-process bound on the body bytes held in
memory, and only a complete body reaches a thread of the WSGI app, as a `BytesIO`. A slow body
costs an idle coroutine, not a thread, and is answered 408 once its deadline passes.

The app sees plain PEP 3333 environs (``wsgi.input_terminated`` set), so `emshield.wsgi_body`
reads the buffered body the same way it reads a streamed one. Both `emshield-log serve` servers
run it: Granian (ASGI without lifespan) and gunicorn (its ``asgi`` worker).
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# (status, code, detail) -> (content type, body): how the app words a refusal the front makes itself
Refuse = Callable[[int, str, str], tuple[str, bytes]]


@dataclass(frozen=True)
class BodyLimits:
    """How much of a request body the front holds, and for how long it waits for it.

    ``max_body``: the largest body any route accepts; a longer one is not read (the app is called
    with its declared length and refuses it, 413) and a chunked one is cut one byte past it.
    ``deadline_s``: how long in all a request may wait for its client to send the body.
    ``budget``: bytes that bodies over ``small`` bytes may hold in memory in this process together;
    such a body reserves twice its declared length (a chunked one, twice ``max_body + 1``: its
    chunks and, for a moment, the joined copy) before it is read, and waits, unread, while earlier
    ones hold the budget (its client's TCP window closes).
    Bodies of at most ``small`` bytes (single entries) are read at once: however many clients
    hold such a body half sent, each holds at most ``small`` bytes."""

    max_body: int
    deadline_s: float
    budget: int
    small: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.budget < 2 * (self.max_body + 1):
            raise ValueError("the body budget must hold at least one largest body (twice over)")


class _Budget:
    """Bytes reserved by large bodies in this process, granted in arrival order (the event loop's
    alone). A reservation is all or nothing, so two half-read bodies can never wait for each other."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def reserve(self, size: int) -> None:
        if not self._waiters and self.used + size <= self.limit:
            self.used += size
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((size, waiter))
        try:
            await waiter  # `_grant` has added ``size`` to `used`
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(size)
            else:
                self._waiters.remove((size, waiter))
                self._grant()
            raise

    def release(self, size: int) -> None:
        self.used -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.limit:
            size, waiter = self._waiters.popleft()
            self.used += size
            waiter.set_result(None)


class _Disconnected(Exception):
    """The client went away before its body was complete: nobody to answer."""


class BufferedWsgi:
    """The ASGI app: reads each body on the loop (`BodyLimits`), then runs ``app`` on one of
    ``threads`` threads. Build it in the worker process (after the fork): the pool is per process."""

    def __init__(self, app: WsgiApp, threads: int, limits: BodyLimits, refuse: Refuse) -> None:
        self.app = app
        self.limits = limits
        self.refuse = refuse
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")
        self._budget = _Budget(limits.budget)

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        held = 0
        try:
            try:
                body, held = await self._read_body(scope, receive)
            except TimeoutError:
                await self._answer_refusal(send, 408, "body_timeout",
                                           f"the request body did not arrive within {self.limits.deadline_s:g} s")
                return
            except _Disconnected:
                return
            environ = _environ(scope, body)
            del body  # the environ's BytesIO holds it
            loop = asyncio.get_running_loop()
            status, headers, payload = await loop.run_in_executor(self._pool, _call, self.app, environ)
            del environ
        finally:
            if held:
                self._budget.release(held)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _read_body(self, scope: dict[str, Any], receive) -> tuple[bytes, int]:
        """The body (at most ``max_body + 1`` bytes) and the budget it holds (`BodyLimits`).
        Nothing is read of a body whose declared length is over ``max_body``. Raises TimeoutError
        once the client has kept this request waiting for its body for ``deadline_s`` in all (a
        wait for the budget, the server's doing, does not count)."""
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limits.max_body):
            return b"", 0  # the app refuses it (400 or 413) from its declared length alone
        if declared == b"0" or (declared is None and _header(scope, b"transfer-encoding") is None):
            return b"", 0
        limits = self.limits
        held = 0
        if declared is not None and int(declared) > limits.small:
            await self._budget.reserve(2 * int(declared))
            held = 2 * int(declared)
        loop = asyncio.get_running_loop()
        patience = limits.deadline_s
        parts: list[bytes] = []
        got = 0
        try:
            while got <= limits.max_body:
                if not held and got > limits.small:  # a chunked body past the small ones' size
                    await self._budget.reserve(2 * (limits.max_body + 1))
                    held = 2 * (limits.max_body + 1)
                t0 = loop.time()
                async with asyncio.timeout(patience):  # no task of its own, unlike wait_for
                    message = await receive()
                patience -= loop.time() - t0
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                chunk = message.get("body", b"")
                if chunk:
                    parts.append(chunk)
                    got += len(chunk)
                if not message.get("more_body", False):
                    break
            body = parts[0] if len(parts) == 1 else b"".join(parts)
        except BaseException:
            if held:
                self._budget.release(held)
            raise
        return body, held

    async def _answer_refusal(self, send, status: int, code: str, detail: str) -> None:
        ctype, body = self.refuse(status, code, detail)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode("latin-1")),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.strip()
    return None


def _environ(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    """The PEP 3333 environ of an ASGI HTTP scope whose body has been read."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if client:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = str(client[0]), str(client[1])
    for key, value in scope["headers"]:
        name = key.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        if name == "CONTENT_TYPE" or name == "CONTENT_LENGTH":
            environ[name] = text
            continue
        name = "HTTP_" + name
        environ[name] = environ[name] + "," + text if name in environ else text
    return environ


def _call(app: WsgiApp, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run the WSGI app to completion in a pool thread: (status, headers, body)."""
    started: list = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return _no_write

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started
    return (int(status.split(" ", 1)[0]),
            [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers], body)


def _no_write(data: bytes) -> None:
    raise RuntimeError("the write() callable of start_response is not supported")


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
