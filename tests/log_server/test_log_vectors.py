"""The log server's own formats against spec/vectors/log_server/, and the OpenAPI description
against the routes the app really serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from log_server.app import create_app
from log_server.batch import BatchFormatError, decode_batch
from log_server.keys import TOKEN_LABEL, token_digest
from log_server.runtime.fast_append import PATH as FAST_PATH
from log_server.runtime.fast_append import AppendFastPath

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "spec" / "vectors" / "log_server"


def test_batch_vectors() -> None:
    doc = json.loads((VECTORS / "batch.json").read_text())
    assert doc["valid"] and doc["invalid"]
    for case in doc["valid"]:
        got = decode_batch(bytes.fromhex(case["body"]), case["max_items"], case["max_item_size"])
        assert [g.hex() for g in got] == case["items"], case["name"]
    for case in doc["invalid"]:
        with pytest.raises(BatchFormatError) as exc:
            decode_batch(bytes.fromhex(case["body"]), case["max_items"], case["max_item_size"])
        assert case["reason"] in str(exc.value), (case["name"], str(exc.value))


def test_operator_token_vectors() -> None:
    doc = json.loads((VECTORS / "operator_token.json").read_text())
    assert doc["label"].encode() == TOKEN_LABEL
    for case in doc["cases"]:
        assert token_digest(case["token"]).hex() == case["digest"]


def test_openapi_describes_exactly_the_served_routes(log_files) -> None:
    spec = yaml.safe_load((ROOT / "spec" / "openapi.yaml").read_text())
    assert spec["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in spec["paths"].items()
                  for method in ops if method in ("get", "post", "put", "delete", "patch")}
    app = create_app(log_files.app_config())
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    # POST /v1/entries is answered in front of Flask (log_server/runtime/fast_append.py).
    assert isinstance(app.wsgi_app, AppendFastPath)
    served.add((FAST_PATH, "POST"))
    assert documented == served
    # Every documented operation names its error answers with the shared Error schema.
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            assert "200" in op["responses"] or "201" in op["responses"], (path, method)
