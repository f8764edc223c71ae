"""Verifier test set-up: a real log server on 127.0.0.1, an issuer registered with real marking
parameters for the committed tiny Llama backbone, and cores issued to devices through it.

The log server helpers come from tests/log_server/conftest.py and the cores and attacks from
tests/marking/marking_helpers.py (loaded by path: pytest's importlib mode keeps test directories
apart), so the verifier is tested against the same server and attacks as those stages.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

from emshield.core import LoraFactors
from emshield.marking import policy
from emshield.marking.params import LayerSpec, MarkingParams, payload_for_device, verification_key
from emshield.model.io import backbone_id, open_tensors
from emshield.tlog import entry as E
from emshield.tlog.client import LogClient

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
TINY = ROOT / "fixtures" / "tiny-llama"
sys.path.insert(0, str(TESTS / "marking"))
import marking_helpers as mh  # noqa: E402  (the marking suite's cores and attacks)


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


logsrv = _load("verify_log_server_helpers", TESTS / "log_server" / "conftest.py")

SECRET = bytes(range(100, 132))  # the issuer's marking secret (fixed: deterministic tests)
LAYERS = [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(4) for p in ("q", "v")]
RANK = 8
ISSUED_AT = 1_795_000_000


@dataclass
class Issued:
    device: uuid.UUID
    core: dict[str, LoraFactors]  # the core as issued (marked or not)
    index: int
    mode: str


@dataclass
class World:
    """One running log with one registered issuer, and what was issued through it."""

    url: str
    log_key: str
    client: LogClient
    params: MarkingParams
    backbone: Path
    issuer_key: object
    issued: list[Issued] = field(default_factory=list)


def tiny_params() -> MarkingParams:
    bid = backbone_id(TINY)
    with open_tensors(TINY) as src:
        layers = tuple(LayerSpec(n, *src.get(n).shape) for n in LAYERS)
    return MarkingParams(bid, verification_key(SECRET, bid), layers)


def tiny_core(seed: int) -> dict[str, LoraFactors]:
    """A random rank-8 core on the tiny backbone's q/v projections (the marking suite's generator)."""
    rng = np.random.default_rng(seed)
    dims = [(128, 128), (64, 128)] * 4
    core = mh.random_core(rng, dims, RANK, mh.DELTA_RMS)
    return {name: core[f"layers.{i}.weight"] for i, name in enumerate(LAYERS)}


def issue(world: World, core: dict[str, LoraFactors], device: uuid.UUID, *, watermark: bool = True) -> Issued:
    """Mark, log and publish one issuance with the library primitives."""
    tolerance = policy.Tolerance(max_perturbation=1.0 if watermark else 0.0)
    result = policy.mark(core, payload_for_device(SECRET, device.bytes), world.params, tolerance)
    rec = result.record
    assert rec.mode == (policy.MODE_BOTH if watermark else policy.MODE_FINGERPRINT), rec.reason
    key = world.issuer_key
    entry = E.Issuance(
        device.bytes, bytes.fromhex(world.params.backbone_id),
        bytes.fromhex(rec.watermark_commitment) if rec.watermark_commitment else None,
        result.fingerprint.hash(), rec.mode, ISSUED_AT + len(world.issued), E.issuer_key_id(logsrv.public_bytes(key)))
    res = world.client.append(E.sign_entry(entry, key).encode())
    world.client.put_side_record(res.index, result.fingerprint.to_cbor())
    issued = Issued(device, result.core, res.index, rec.mode)
    world.issued.append(issued)
    return issued


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory):
    """The log server, the issuer, and four issuances: three watermarked, one fingerprint-only."""
    files = logsrv.init_log(tmp_path_factory.mktemp("verify-log"))
    server = logsrv.ServerProcess(files.db, workers=1, threads=4).start()
    try:
        client = LogClient(server.url, operator_token=files.token)
        key = logsrv.ed25519_key("verify-issuer")
        params = tiny_params()
        reg = E.IssuerRegistration(logsrv.public_bytes(key), "Acme Edge Models", params.to_cbor(), ISSUED_AT - 100)
        client.register_issuer(E.sign_entry(reg, key).encode())
        w = World(server.url, files.verifier.verifier_key(), client, params, TINY, key)
        for n in range(3):
            issue(w, tiny_core(n), uuid.UUID(int=0x1000 + n))
        issue(w, tiny_core(3), uuid.UUID(int=0x2000), watermark=False)
        yield w
    finally:
        server.stop()


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The marking suite's attacks and this directory's core maker (tests cannot import this conftest)."""
    return SimpleNamespace(refactorise=mh.refactorise, int8_rows=mh.int8_rows, prune=mh.prune, noise=mh.noise,
                           tiny_core=tiny_core, issue=issue)
