"""Serves the explorer's static page, styles and scripts (spec/explorer.md §1).

The server computes nothing for the page: it reads the same public API every client reads
(/checkpoint, /tile/..., /v1/...). The Content-Security-Policy admits scripts, styles and
requests from this origin only, so the page loads nothing from elsewhere and text an issuer
chose (names, unknown entries) can never run as script.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, request, send_from_directory

from ..params import only_params

STATIC = Path(__file__).with_name("static")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

explorer = Blueprint("explorer", __name__)


@explorer.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # Revalidate (ETag) rather than cache: a server upgrade changes the scripts at once.
    response.headers["Cache-Control"] = "no-cache"
    return response


@explorer.get("/explore/")
def page():
    only_params(request.args.items(multi=True))
    return send_from_directory(STATIC, "index.html")


@explorer.get("/explore/static/<path:name>")
def static_file(name: str):
    only_params(request.args.items(multi=True))
    return send_from_directory(STATIC, name)
