"""A served log with something of everything the explorer shows, for its page tests: two issuers
with real marking parameters, single- and batch-signed issuances across three entry bundles, a
published fingerprint side record, an issuance with a secret mark and an attribution that opens
it, an entry of a type the explorer does not know, and a real
witness cosigning every checkpoint (`emshield-log serve --witness ... --witness-quorum 1`)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
import requests
from click.testing import CliRunner

from emshield.logclient.http import LogClient
from emshield.marking.fingerprint import Fingerprint
from emshield.marking.params import LayerSpec, MarkingParams
from emshield.tlog import entry as E
from emshield.tlog import merkle
from witness.cli import main as witness_cli

from .attributions import attribution, secret_issuance
from .logs import ServerProcess, ed25519_key, init_log, public_bytes
from .witnesses import WitnessProcess

BACKBONE = hashlib.sha256(b"emshield-test/explorer-backbone").digest()
WITNESS_NAME = "witness.test.emshield.example/w1"


def marking_params(backbone: str) -> MarkingParams:
    return MarkingParams(backbone, hashlib.sha256(b"emshield-test/vk/" + backbone.encode()).digest(),
                         (LayerSpec("model.layers.0.self_attn.q_proj.weight", 64, 64),
                          LayerSpec("model.layers.0.self_attn.v_proj.weight", 32, 64)))


def device(n: int) -> uuid.UUID:
    """The device UUID of issuance ``n`` (deterministic, distinct)."""
    return uuid.UUID(bytes=hashlib.sha256(b"emshield-test/device/%d" % n).digest()[:16], version=4)


@dataclass
class ExplorerLog:
    url: str
    verifier_key: str
    witness_key: str
    db: Path
    token: str
    key_file: Path  # the log's signer key: tests sign a forked checkpoint with it
    keys: dict = field(default_factory=dict)  # issuer name -> private key
    params: dict = field(default_factory=dict)  # issuer name -> MarkingParams
    facts: dict = field(default_factory=dict)  # what the tests look for
    next_n: int = 0

    def client(self) -> LogClient:
        return LogClient(self.url, operator_token=self.token)

    def issuance(self, issuer: str, n: int, fingerprint: Fingerprint | None = None) -> E.Issuance:
        key = self.keys[issuer]
        wm = hashlib.sha256(b"emshield-test/wm/%d" % n).digest()
        return E.Issuance(device(n).bytes, BACKBONE, wm, fingerprint.hash() if fingerprint else None,
                          "both" if fingerprint else "watermark", 1_760_000_000 + n, E.issuer_key_id(public_bytes(key)))

    def append(self, count: int, issuer: str = "Acme Models", batch_signed: bool = False) -> list[int]:
        """Append ``count`` new issuances (one request); their leaf indices."""
        items = [self.issuance(issuer, self.next_n + k) for k in range(count)]
        self.next_n += count
        key = self.keys[issuer]
        signed = E.sign_batch(items, key) if batch_signed else [E.sign_entry(i, key) for i in items]
        return [r.index for r in self.client().append_batch([s.encode() for s in signed])]

    def size(self) -> int:
        return int(requests.get(self.url + "/checkpoint", timeout=10).text.split("\n")[1])

    def wait_for_size(self, size: int, timeout: float = 30) -> str:
        """The served checkpoint note once it covers ``size`` leaves (the witness cosigned it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            note = requests.get(self.url + "/checkpoint", timeout=10)
            if note.status_code == 200 and int(note.text.split("\n")[1]) >= size:
                return note.text
            time.sleep(0.05)
        raise TimeoutError(f"the witness did not cosign size {size}")


def _witness(directory: Path, log_vkey: str) -> WitnessProcess:
    key_file = directory / "witness.key"
    out = CliRunner().invoke(witness_cli, ["init", "--key-file", str(key_file), "--name", WITNESS_NAME, "--json"])
    assert out.exit_code == 0, out.output
    w = WitnessProcess(key_file=key_file, state=directory / "witness.db", log_keys=[log_vkey]).start()
    w.verifier_key = json.loads(out.output)["verifier_key"]
    return w


def _unknown_entry(db: Path) -> int:
    """Sequence a well-formed deterministic-CBOR entry of a type the log format does not define yet,
    straight through the sequencer (the API refuses it): what a future log version might hold."""
    from log_server.app import create_app
    from log_server.config import ServerConfig
    from log_server.sequencer import PreparedEntry
    from log_server.state import EXTENSION

    data = cbor2.dumps({"v": 1, "type": "issuer-key-rotation", "note": "a future entry type", "opens": 5}, canonical=True)
    app = create_app(ServerConfig(store=db))
    state = app.extensions[EXTENSION]
    try:
        (result,) = state.sequencer.integrate([[PreparedEntry(data, merkle.leaf_hash(data), "issuer-key-rotation")]])
        assert not isinstance(result, Exception), result
        return result[0].index
    finally:
        state.store.close()


@contextmanager
def explorer_log(directory: Path) -> Iterator[ExplorerLog]:
    files = init_log(directory)
    witness = _witness(directory, files.verifier_key)
    server = ServerProcess(files.db, workers=1, threads=8, witnesses=[f"{witness.url}={witness.verifier_key}"],
                           witness_quorum=1)  # every checkpoint served carries the witness's cosignature
    server.start()
    try:
        log = ExplorerLog(server.url, files.verifier_key, witness.verifier_key, files.db, files.token, files.key_file)
        client = log.client()
        for name, backbone in (("Acme Models", "tiny-llama/acme"), ("Beta Labs", "smollm2-135m/beta")):
            key = ed25519_key("explorer/" + name)
            params = marking_params(backbone)
            log.keys[name], log.params[name] = key, params
            reg = E.sign_entry(E.IssuerRegistration(public_bytes(key), name, params.to_cbor(), 1_750_000_000), key)
            log.facts.setdefault("registrations", {})[name] = client.register_issuer(reg.encode()).index
        log.append(300)
        log.append(200, "Beta Labs", batch_signed=True)
        fp = Fingerprint(log.params["Acme Models"].digest(),
                         tuple((lay.name, tuple(range(k, k + 40))) for k, lay in enumerate(log.params["Acme Models"].layers)))
        entry = E.sign_entry(log.issuance("Acme Models", log.next_n, fp), log.keys["Acme Models"])
        (fp_index,) = [r.index for r in client.append_batch([entry.encode()])]
        log.facts["fingerprint"] = {"index": fp_index, "device": str(device(log.next_n)), "hash": fp.hash().hex()}
        log.next_n += 1
        client.put_side_record(fp_index, fp.to_cbor())
        log.facts["unknown_index"] = _unknown_entry(files.db)
        batch = log.append(40, "Beta Labs", batch_signed=True)
        log.facts["batch_entry"] = {"index": batch[7], "device": str(device(log.next_n - 40 + 7))}
        log.facts["single_entry"] = {"index": 100 + 2, "device": str(device(100))}
        marked = secret_issuance(log.keys["Acme Models"], 1)
        issuance_index = client.append(marked.leaf).index
        data = attribution(log.keys["Acme Models"], issuance_index, marked.leaf_hash, marked.key, b"explorer suspect",
                           score_e6=12_345_678_901, terms=512)
        log.facts["attribution"] = {"index": client.append(data).index, "issuance_index": issuance_index,
                                    "suspect_sha256": hashlib.sha256(b"explorer suspect").hexdigest()}
        log.wait_for_size(log.facts["attribution"]["index"] + 1)
        yield log
    finally:
        server.stop()
        witness.stop()
