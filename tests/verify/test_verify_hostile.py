"""A hostile log: a real HTTP proxy on 127.0.0.1 in front of the real log that corrupts chosen
answers. The verifier must stop with exit 3 ("log misbehaving") and name nobody; an unreachable
log is exit 4; bad input is exit 2."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import torch
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from emshield.logclient.http import LogClient, LogClientError
from emshield.model.adapter import write_peft_adapter
from emshield.model.io import open_tensors, save_tensors
from emshield.model.merge import write_merged
from emshield.tlog.checkpoint import (
    Checkpoint,
    CosignatureSigner,
    NoteSigner,
    NoteVerifier,
    cosign_checkpoint,
    sign_checkpoint,
)
from emshield.tlog.merkle import leaf_hash
from verifier.verify.cli import main as verify_main

Corrupt = Callable[[str, dict, bytes], bytes]
"""(path, query, upstream body) -> body served to the verifier."""


@contextmanager
def hostile_log(upstream: str, corrupt: Corrupt, *, declare_length: bool = True,
                dribble_s: float = 0.0) -> Iterator[str]:
    """Forward GETs to the real log; hand each answer through ``corrupt`` first. Without
    ``declare_length`` the answer has no Content-Length (HTTP/1.0: it ends when the connection closes);
    with ``dribble_s`` the body is sent in 64-byte pieces, that many seconds apart."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            resp = requests.get(upstream + self.path, timeout=30)
            parts = urlsplit(self.path)
            body = corrupt(parts.path, parse_qs(parts.query), resp.content)
            self.send_response(resp.status_code)
            self.send_header("Content-Type", resp.headers.get("Content-Type", "application/octet-stream"))
            if declare_length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not dribble_s:
                self.wfile.write(body)
            for at in range(0, len(body), 64) if dribble_s else ():
                try:
                    self.wfile.write(body[at:at + 64])
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return
                time.sleep(dribble_s)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def verify(world, url: str, suspect: Path, *extra: str) -> tuple[int, dict]:
    return world.verify(suspect, *extra, log=url)


def _json_edit(edit: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def apply(body: bytes) -> bytes:
        obj = json.loads(body)
        edit(obj)
        return json.dumps(obj).encode()

    return apply


def _flip_b64(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


@pytest.fixture
def adapter(world, tmp_path: Path) -> Path:
    return write_peft_adapter(world.issued[1].core, tmp_path / "adapter")


def test_honest_proxy_changes_nothing(world, adapter: Path) -> None:
    """The proxy itself is transparent: the same suspect is named through it (so the failures below
    come from the corruption, not from the proxy)."""
    with hostile_log(world.url, lambda path, query, body: body) as url:
        code, out = verify(world, url, adapter)
    assert code == 0 and out["device"]["device_uuid"] == str(world.issued[1].device)


def _bad_proof(path: str, query: dict, body: bytes) -> bytes:
    if path != "/v1/proof/inclusion":
        return body
    return _json_edit(lambda o: o["hashes"].__setitem__(0, _flip_b64(o["hashes"][0])))(body)


def _bad_issuance_proof(path: str, query: dict, body: bytes) -> bytes:
    """Only the issuance's proof is bad (the registration at leaf 0 is proved honestly)."""
    if path != "/v1/proof/inclusion" or json.loads(body)["index"] == 0:
        return body
    return _bad_proof(path, query, body)


def _proof_for_another_leaf(world) -> Corrupt:
    """The log answers with a valid proof, but of another leaf (the registration at 0)."""

    def corrupt(path: str, query: dict, body: bytes) -> bytes:
        if path != "/v1/proof/inclusion" or json.loads(body)["index"] == 0:
            return body
        return requests.get(world.url + path, params={"index": 0, "tree_size": query["tree_size"][0]}, timeout=30).content

    return corrupt


def _bad_checkpoint_signature(path: str, query: dict, body: bytes) -> bytes:
    if path != "/checkpoint":
        return body
    text, _, sig_line = body.rpartition(b"\n\xe2\x80\x94 ")  # "— name base64sig"
    name, _, sig = sig_line.rstrip(b"\n").partition(b" ")
    raw = bytearray(base64.b64decode(sig))
    raw[-1] ^= 1
    return text + b"\n\xe2\x80\x94 " + name + b" " + base64.b64encode(bytes(raw)) + b"\n"


def _other_log_checkpoint(path: str, query: dict, body: bytes) -> bytes:
    """A checkpoint signed by a different key of the same name: a log we did not pin."""
    if path != "/checkpoint":
        return body
    signer = NoteSigner.generate(body.split(b"\n", 1)[0].decode())
    return sign_checkpoint(Checkpoint.parse(body.split(b"\n\n", 1)[0] + b"\n"), signer)


def _leaf_swapped(world) -> Corrupt:
    """The commitment index answers with another issuance's leaf (and its correct leaf hash)."""
    other = requests.get(world.url + "/v1/entries", params={"start": world.issued[0].index,
                                                              "end": world.issued[0].index + 1}, timeout=30).json()
    leaf = other["entries"][0]["leaf"]

    def corrupt(path: str, query: dict, body: bytes) -> bytes:
        if path != "/v1/issuances" or "watermark_commitment" not in query:
            return body

        def edit(o: dict) -> None:
            for hit in o["issuances"]:
                hit["leaf"] = leaf
                hit["leaf_hash"] = base64.b64encode(leaf_hash(base64.b64decode(leaf))).decode()

        return _json_edit(edit)(body)

    return corrupt


def _index_fields_lie(path: str, query: dict, body: bytes) -> bytes:
    if path != "/v1/issuances":
        return body
    return _json_edit(lambda o: [h.__setitem__("device_uuid", "00000000-0000-0000-0000-00000000dead")
                                 for h in o["issuances"]])(body)


def _index_omits(path: str, query: dict, body: bytes) -> bytes:
    if path != "/v1/issuances":
        return body
    return _json_edit(lambda o: o.__setitem__("issuances", []))(body)


def _replay_altered(path: str, query: dict, body: bytes) -> bytes:
    """Index answers are honest, but the pages of leaves served for a replay have two leaves swapped
    (each still a valid, signed entry)."""
    if path != "/v1/entries" or query["end"][0] == str(int(query["start"][0]) + 1):
        return body

    def swap(o: dict) -> None:
        e = o["entries"]
        e[1]["leaf"], e[2]["leaf"] = e[2]["leaf"], e[1]["leaf"]

    return _json_edit(swap)(body)


def _bad_side_record(path: str, query: dict, body: bytes) -> bytes:
    if not path.endswith("/side-record"):
        return body
    return body[:-1] + bytes([body[-1] ^ 1])


def _bad_registration(path: str, query: dict, body: bytes) -> bytes:
    if path != "/v1/issuers":
        return body
    return _json_edit(lambda o: [i.__setitem__("name", "Someone Else") for i in o["issuers"]])(body)


CASES = {  # name: (corruption, what the verifier must say)
    "bad inclusion proof": (lambda world: _bad_proof, "proof does not verify"),
    "bad inclusion proof of the issuance": (lambda world: _bad_issuance_proof, "issuance at leaf"),
    "proof of another leaf": (_proof_for_another_leaf, "proved a different leaf"),
    "bad checkpoint signature": (lambda world: _bad_checkpoint_signature, "invalid signature"),
    "checkpoint of another log": (lambda world: _other_log_checkpoint, "no signature from a known key"),
    "index serves another entry": (_leaf_swapped, "is not the one asked for"),
    "index fields disagree with the entry": (lambda world: _index_fields_lie, "index fields disagree"),
    "issuer list disagrees with its registration": (lambda world: _bad_registration, "disagrees with the registration"),
    "side record does not match its hash": (lambda world: _bad_side_record, "side record"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_misbehaving_log_is_exit_3(world, adapter: Path, case: str) -> None:
    make, needle = CASES[case]
    with hostile_log(world.url, make(world)) as url:
        code, out = verify(world, url, adapter)
    assert code == 3, out
    assert out["verdict"] == "error" and out["error"] == "log_misbehaving"
    assert needle in out["detail"]
    assert "match" not in out  # nobody is named


def test_hidden_issuance_is_caught_by_the_replay(world, adapter: Path) -> None:
    """The index hides the issuance the watermark points to; the replay finds it: exit 3."""
    with hostile_log(world.url, _index_omits) as url:
        code, out = verify(world, url, adapter)
        assert code == 3 and "omitted" in out["detail"]
        code, out = verify(world, url, adapter, "--no-scan")  # without the replay: only "no match"
        assert code == 1 and out["device"] is None


def _issuer_hidden(path: str, query: dict, body: bytes) -> bytes:
    return _json_edit(lambda o: o.__setitem__("issuers", []))(body) if path == "/v1/issuers" else body


def test_hidden_issuer_is_caught_by_the_replay(world, adapter: Path) -> None:
    """The issuer list leaves the suspect's issuer out; the replay finds its registration: exit 3."""
    with hostile_log(world.url, _issuer_hidden) as url:
        code, out = verify(world, url, adapter)
        assert code == 3 and "issuer list omits" in out["detail"]
        code, out = verify(world, url, adapter, "--no-scan")
        assert code == 1 and "no registered issuer" in out["reason"]


def _truncated(path: str, query: dict, body: bytes) -> bytes:
    return _json_edit(lambda o: o.__setitem__("truncated", True))(body) if path == "/v1/issuances" else body


def test_a_truncated_index_answer_names_nobody(world, adapter: Path) -> None:
    """"More hits than returned" means the returned ones are not all: no device is named on them."""
    with hostile_log(world.url, _truncated) as url:
        code, out = verify(world, url, adapter)
    assert code == 1 and out["device"] is None and "more than" in out["reason"]


def test_altered_replay_is_exit_3(world, tmp_path: Path) -> None:
    """A fingerprint-only suspect needs the replay; a log that drops a leaf from it is caught."""
    suspect = write_peft_adapter(world.issued[3].core, tmp_path / "fp-only")
    with hostile_log(world.url, _replay_altered) as url:
        code, out = verify(world, url, suspect)
    assert code == 3 and "checkpoint's root" in out["detail"]


def _padded(path: str, query: dict, body: bytes) -> bytes:
    """Valid JSON made 2 MiB long with whitespace."""
    return body + b" " * (2 << 20) if path == "/v1/issuers" else body


@pytest.mark.parametrize("declare_length", [True, False])
def test_oversized_answers_are_refused_while_reading(world, adapter: Path, declare_length: bool) -> None:
    with hostile_log(world.url, _padded, declare_length=declare_length) as url:
        assert len(LogClient(url).issuers()) == 1  # within the default limit it is just JSON
        with pytest.raises(LogClientError, match="over the 1048576-byte limit") as exc:
            LogClient(url, max_response_bytes=1 << 20).issuers()
        assert exc.value.code == "bad_response"


def test_a_dribbling_log_times_out(world, adapter: Path) -> None:
    """Each read is quick, the whole answer is not: the client's deadline covers the whole body."""
    with hostile_log(world.url, lambda path, query, body: body, dribble_s=0.2) as url:
        with pytest.raises(LogClientError) as exc:
            LogClient(url, timeout=0.5).issuers()
        assert exc.value.code == "timeout"
        code, out = verify(world, url, adapter, "--timeout", "0.5")
        assert code == 4 and out["error"] == "log_unavailable" and "still arriving" in out["detail"]


def test_unreachable_log_is_exit_4(world, adapter: Path) -> None:
    with hostile_log(world.url, lambda path, query, body: body) as url:
        pass  # the proxy is gone: nothing listens there now
    code, out = verify(world, url, adapter)
    assert code == 4 and out["error"] == "log_unavailable"


# --- bad input: exit 2 --------------------------------------------------------------------------


class _Exploit:
    def __reduce__(self):  # runs os.system on an unsafe load
        import os

        return (os.system, ("touch /tmp/emshield-verify-pwned",))


def _bad_inputs(world, tmp: Path) -> dict[str, tuple[list[str], str]]:
    good = write_peft_adapter(world.issued[0].core, tmp / "adapter")
    bare = tmp / "bare"
    bare.mkdir()
    (bare / "adapter_model.safetensors").write_bytes((good / "adapter_model.safetensors").read_bytes())
    badcfg = tmp / "badcfg"
    badcfg.mkdir()
    (badcfg / "adapter_config.json").write_text("{not json")
    (badcfg / "adapter_model.safetensors").write_bytes(b"")
    exploit = tmp / "exploit.pt"
    torch.save({"w": _Exploit()}, exploit)  # a real torch file whose pickle calls os.system
    notdict = tmp / "list.pt"
    torch.save([torch.zeros(2)], notdict)
    truncated = tmp / "trunc.safetensors"
    full = save_tensors({"w": torch.zeros(4, 4)}, tmp / "full.safetensors").read_bytes()
    truncated.write_bytes(full[: len(full) - 7])
    merged = write_merged(world.backbone, world.issued[0].core, tmp / "merged")
    with open_tensors(merged) as src:
        tensors = dict(src.items())
    name = next(iter(world.issued[0].core))
    tensors[name] = tensors[name][:-1]  # one marked layer cut short: not a merge of this backbone
    reshaped = save_tensors(tensors, tmp / "reshaped.safetensors")
    key, url = ["--log-key", world.log_key], ["--log", world.url]
    return {
        "missing file": ([str(tmp / "nope.safetensors"), *url, *key], "no such file"),
        "adapter weights without config": ([str(bare), *url, *key], "adapter_config.json"),
        "adapter config not JSON": ([str(badcfg), *url, *key], "not JSON"),
        "pickle with code": ([str(exploit), *url, *key, "--backbone", str(world.backbone)], "refused"),
        "pickle not a tensor dict": ([str(notdict), *url, *key, "--backbone", str(world.backbone)], "refused"),
        "truncated safetensors": ([str(truncated), *url, *key, "--backbone", str(world.backbone)], "safetensors"),
        "merged model without backbone": ([str(merged), *url, *key], "--backbone"),
        "missing backbone": ([str(merged), *url, *key, "--backbone", str(tmp / "none")], "no such file"),
        "not a merge of the backbone": ([str(reshaped), *url, *key, "--backbone", str(world.backbone)],
                                        "not a merge of the given backbone"),
        "no log key": ([str(good), *url], "--log-key"),
        "malformed log key": ([str(good), *url, "--log-key", "not+a+key"], "verifier key"),
        "no log": ([str(good), *key], "--log"),
        "log URL not http": ([str(good), "--log", "ftp://127.0.0.1/", *key], "http"),
    }


def test_bad_input_is_exit_2(world, tmp_path: Path) -> None:
    for name, (args, needle) in _bad_inputs(world, tmp_path).items():
        result = CliRunner().invoke(verify_main, [*args, "--json"])
        assert result.exit_code == 2, (name, result.stdout, result.stderr, result.exception)
        out = json.loads(result.stdout)
        assert out["error"] == "bad_input", name
        assert needle in out["detail"] and needle in result.stderr, (name, out["detail"])
    assert not Path("/tmp/emshield-verify-pwned").exists()


# --- witness policy: the checkpoint must carry k of n witness cosignatures ------------------------


def _witness(name: str) -> CosignatureSigner:
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(name.encode()).digest())
    return CosignatureSigner(name, key, clock=lambda: 1_795_000_000)


def _cosigning(world, *signers: CosignatureSigner) -> Corrupt:
    """A log front that serves its checkpoint with these witnesses' cosignatures added (real signatures)."""
    log = NoteVerifier.from_verifier_key(world.log_key)

    def corrupt(path: str, query: dict, body: bytes) -> bytes:
        if path != "/checkpoint":
            return body
        for signer in signers:
            body = cosign_checkpoint(body, log, signer)
        return body

    return corrupt


def test_witness_quorum(world, adapter: Path) -> None:
    w1, w2, stranger = _witness("witness.test/w1"), _witness("witness.test/w2"), _witness("witness.test/w3")
    keys = ["--witness", w1.verifier_key(), "--witness", w2.verifier_key()]
    with hostile_log(world.url, _cosigning(world, w1, w2)) as url:
        code, out = verify(world, url, adapter, *keys)
        assert code == 0 and "cosigned by 2" in out["device"]["proofs"]["witnesses"]
    with hostile_log(world.url, _cosigning(world, w1, stranger)) as url:
        code, out = verify(world, url, adapter, *keys)
        assert code == 3 and "1 valid witness cosignature(s), 2 required" in out["detail"]
        code, out = verify(world, url, adapter, *keys, "--witness-quorum", "1")
        assert code == 0 and out["log"]["cosigned_by"] == [w1.verifier_key()]
    with hostile_log(world.url, _cosigning(world)) as url:  # an uncosigned checkpoint
        code, out = verify(world, url, adapter, *keys, "--witness-quorum", "1")
        assert code == 3 and "witness policy" in out["detail"]
    code, out = verify(world, world.url, adapter, "--witness", "not-a-key")
    assert code == 2 and "--witness" in out["detail"]
    code, out = verify(world, world.url, adapter, *keys, "--witness-quorum", "3")
    assert code == 2
