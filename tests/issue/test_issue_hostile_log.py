"""The issuer hands out no bundle that a lying log's proofs would make unverifiable, and stops the batch.

A real HTTP relay on 127.0.0.1 passes every request to the real log and alters the inclusion
proofs it returns; nothing is mocked on either side.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from click.testing import CliRunner

from _kit.paths import TINY as BACKBONE
from emshield.cli import main
from emshield.core import core_to_bytes
from emshield.issue.devices import DeviceTarget
from emshield.issue.errors import LogMisbehavingError
from emshield.issue.keys import init_issuer
from emshield.issue.pipeline import issue_many, prepare_run
from emshield.marking.policy import Tolerance
from emshield.issue.registration import marking_params_for, register_issuer
from emshield.logclient.http import LogClient
from emshield.model.io import backbone_id
from emshield.tee.device import init_device

_PASSED_HEADERS = ("Content-Type", "Authorization")
# The fixture core's mark costs about 0.15 relative weight change and varies with the (random) payload;
# this test is about the log's proofs, so any cost is allowed (else one run in a few gets "shared-core").
TOLERANCE = Tolerance(max_perturbation=0.5)


@contextmanager
def lying_relay(upstream: str) -> Iterator[str]:
    """Relay to ``upstream``; in inclusion proofs, the first path hash has one bit flipped."""

    class Relay(BaseHTTPRequestHandler):
        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {h: self.headers[h] for h in _PASSED_HEADERS if self.headers.get(h)}
            answer = requests.request(self.command, upstream + self.path, data=body, headers=headers, timeout=30)
            content = answer.content
            if self.path.startswith("/v1/proof/inclusion") and answer.status_code == 200:
                proof = answer.json()
                if proof["hashes"]:
                    first = bytearray(base64.b64decode(proof["hashes"][0]))
                    first[0] ^= 1
                    proof["hashes"][0] = base64.b64encode(bytes(first)).decode()
                content = json.dumps(proof).encode()
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("Content-Type", "application/octet-stream"))
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PUT = _relay  # noqa: N815 (http.server's names)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_bad_proofs_stop_the_batch_and_an_honest_log_resumes_it(tmp_path, log, core):
    keys = init_issuer(tmp_path / "issuer")
    register_issuer(LogClient(log.url, operator_token=log.token), keys, "Acme",
                    marking_params_for(keys, backbone_id(BACKBONE), core))
    devices = [init_device(tmp_path / f"dev{i}") for i in range(2)]
    targets = [DeviceTarget(d.uuid, d.record.public) for d in devices]
    out = tmp_path / "bundles"
    with lying_relay(log.url) as relay:
        issuer = prepare_run(LogClient(relay), log.verifier, keys, core, BACKBONE, tolerance=TOLERANCE)
        results = issue_many(issuer, targets, out, progress=False)
        with pytest.raises(LogMisbehavingError) as exc:
            next(results)
        assert exc.value.reason == "log-misbehaving" and "ProofError" in exc.value.detail
        assert not out.exists() or list(out.iterdir()) == []  # no bundle handed out
        # The entry was appended before the proofs were asked for; the second device was never tried.
        assert len(LogClient(log.url).issuances(device_uuid=str(devices[0].uuid))) == 1
        assert LogClient(log.url).issuances(device_uuid=str(devices[1].uuid)) == []

        core_file = tmp_path / "core.safetensors"
        core_file.write_bytes(core_to_bytes(core))
        args = ["issue", "--log", relay, "--log-key", log.verifier_key, "--core", core_file, "--backbone", BACKBONE,
                "--tolerance", str(TOLERANCE.max_perturbation), "--out", out, "--dir", tmp_path / "issuer", "--device", devices[1].directory]
        r = CliRunner().invoke(main, [str(a) for a in args])
        assert r.exit_code == 3 and "log-misbehaving" in r.output, r.output

    honest = prepare_run(LogClient(log.url), log.verifier, keys, core, BACKBONE, tolerance=TOLERANCE)
    assert [r.status for r in issue_many(honest, targets, out, progress=False)] == ["bundle-rebuilt", "bundle-rebuilt"]
