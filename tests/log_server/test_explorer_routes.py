"""The explorer's routes on the log's Flask app: the page and its files, with headers that keep
it self-contained (CSP: this origin only), the usual refusals, and every shipped file reachable.
That the page requests nothing from elsewhere is checked in Chromium (test_explorer_page.py)."""

from __future__ import annotations

import pytest

from log_server.app import create_app
from log_server.config import ServerConfig
from log_server.explorer.blueprint import STATIC


@pytest.fixture
def client(log_files):
    app = create_app(ServerConfig(**log_files.app_config()))
    return app.test_client()


def test_the_page_has_one_address(client) -> None:
    assert client.get("/explore").status_code == 308  # Flask's canonical trailing slash
    assert client.get("/").status_code == 404


def test_page_and_its_headers(client) -> None:
    r = client.get("/explore/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert b'<script type="module" src="static/explorer/main.js">' in r.data
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Cache-Control"] == "no-cache"


def test_every_shipped_file_is_served_with_its_type(client) -> None:
    files = sorted(p for p in STATIC.rglob("*") if p.is_file())
    assert {p.suffix for p in files} == {".html", ".css", ".js"}
    for p in files:
        r = client.get("/explore/static/" + p.relative_to(STATIC).as_posix())
        assert r.status_code == 200, p
        assert r.data == p.read_bytes()
        assert r.mimetype == {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}[p.suffix], p


def test_no_file_outside_the_static_folder(client) -> None:
    for path in ("/explore/static/../blueprint.py", "/explore/static/%2e%2e/blueprint.py", "/explore/static/nope.js"):
        assert client.get(path).status_code == 404, path


def test_refusals(client) -> None:
    r = client.get("/explore/?x=1")
    assert r.status_code == 400 and r.json["error"] == "unknown_parameter"
    r = client.post("/explore/")
    assert r.status_code == 405 and r.json["error"] == "method_not_allowed"

