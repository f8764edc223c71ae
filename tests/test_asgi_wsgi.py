"""`emshield.asgi_wsgi.BufferedWsgi` driven directly with ASGI messages (the served behaviour under
Granian and gunicorn is in tests/log_server/test_log_hostile_clients.py)."""

from __future__ import annotations

import asyncio

import pytest

from emshield.asgi_wsgi import BodyLimits, BufferedWsgi
from emshield.wsgi_body import Refusal, read_body

LIMITS = BodyLimits(max_body=300_000, deadline_s=30, budget=2 * 300_001, small=1000)


def echo_app(environ, start_response):
    """Answers with the body `read_body` got, or the refusal's code."""
    try:
        body = read_body(environ, 250_000)
        status = "200 OK"
    except Refusal as r:
        body, status = r.code.encode(), f"{r.status} Refused"
    start_response(status, [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
    return [body]


def _scope(headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "method": "POST", "path": "/x", "raw_path": b"/x", "query_string": b"",
            "headers": headers, "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000)}


async def _serve(front: BufferedWsgi, scope: dict, chunks: list[bytes], *, stall: bool = False):
    queue = list(chunks)
    sent: list[dict] = []

    async def receive():
        if not queue:
            if stall:
                await asyncio.Event().wait()  # a client that never sends the rest
            return {"type": "http.disconnect"}
        chunk = queue.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue) or stall}

    async def send(message):
        sent.append(message)

    await front(scope, receive, send)
    return sent


def _answer(sent: list[dict]) -> tuple[int, bytes]:
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_bodies_of_every_size_reach_the_app_whole() -> None:
    front = BufferedWsgi(echo_app, 2, LIMITS, lambda s, c, d: ("text/plain", c.encode()))
    data = bytes(range(256)) * 800  # 204,800 bytes: a large body, through the budget
    length = [(b"content-length", str(len(data)).encode())]
    for headers, chunks, expected in [([(b"content-length", b"5")], [b"hel", b"lo"], b"hello"),
                                      (length, [data[:70_000], data[70_000:]], data),
                                      ([(b"transfer-encoding", b"chunked")],
                                       [data[i:i + 4096] for i in range(0, len(data), 4096)], data)]:
        assert _answer(asyncio.run(_serve(front, _scope(headers), chunks))) == (200, expected)
    assert front._budget.used == 0  # every reservation was given back


def test_oversized_bodies_are_refused_by_the_app_from_their_length() -> None:
    front = BufferedWsgi(echo_app, 2, LIMITS, lambda s, c, d: ("text/plain", c.encode()))
    declared = [(b"content-length", b"400000")]
    assert _answer(asyncio.run(_serve(front, _scope(declared), [])))[0] == 413  # never read
    chunked = [(b"transfer-encoding", b"chunked")]
    big = [b"x" * 50_000] * 8  # 400,000 bytes, cut one byte past max_body
    assert _answer(asyncio.run(_serve(front, _scope(chunked), big))) == (413, b"body_too_large")
    assert front._budget.used == 0


def test_a_stalled_body_is_answered_by_the_front_when_its_deadline_passes() -> None:
    calls = []

    def app(environ, start_response):  # pragma: no cover - must not run
        calls.append(environ)
        raise AssertionError("the app saw a body that never arrived")

    front = BufferedWsgi(app, 1, BodyLimits(max_body=1000, deadline_s=0.05, budget=2002),
                         lambda s, c, d: ("application/json", f'{{"error":"{c}"}}'.encode()))
    sent = asyncio.run(_serve(front, _scope([(b"content-length", b"1000")]), [b"\xa5"], stall=True))
    assert _answer(sent) == (408, b'{"error":"body_timeout"}') and not calls
    assert (b"connection", b"close") in sent[0]["headers"]


def test_a_budget_too_small_for_one_body_is_refused() -> None:
    with pytest.raises(ValueError):
        BodyLimits(max_body=1000, deadline_s=1, budget=1000)


def test_the_budget_grants_whole_reservations_in_order_and_forgets_cancelled_ones() -> None:
    from emshield.asgi_wsgi import _Budget

    async def run() -> list[str]:
        budget = _Budget(10)
        order: list[str] = []

        async def take(name: str, size: int) -> None:
            await budget.reserve(size)
            order.append(name)

        await budget.reserve(8)
        big = asyncio.create_task(take("big", 6))
        small = asyncio.create_task(take("small", 2))  # fits now, but waits behind the earlier one
        gone = asyncio.create_task(take("gone", 1))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert order == [] and budget.used == 8
        budget.release(8)
        await asyncio.gather(big, small)
        assert budget.used == 8
        budget.release(8)
        assert budget.used == 0
        return order

    assert asyncio.run(run()) == ["big", "small"]
