"""Verifier test set-up: a real log server on 127.0.0.1, an issuer registered with real marking
parameters for the committed tiny Llama backbone, and cores issued to devices through the
issuance pipeline (emshield.issue: mark, log, side record, seal, bundle).

The log server, cores and attacks come from `_kit`, so the verifier is tested against the same
server and attacks as those stages.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from _kit.cores import tiny_core
from _kit.logs import ServerProcess, ed25519_key, init_log
from _kit.paths import TINY
from emshield.core import LoraFactors
from emshield.issue.devices import DeviceTarget
from emshield.issue.keys import IssuerKeys
from emshield.issue.pipeline import POLICY_AUTO, POLICY_FINGERPRINT, issue_to_device, mark_for_device, prepare_run
from emshield.issue.registration import marking_params_for, register_issuer
from emshield.logclient.http import LogClient
from emshield.marking.params import MarkingParams
from emshield.model.io import backbone_id
from emshield.tee.devicekey import DevicePublicKey
from emshield.tlog.checkpoint import NoteVerifier
from verifier.verify.cli import main as verify_main

SECRET = bytes(range(100, 132))  # the issuer's marking secret (fixed: deterministic tests)
ISSUED_AT = 1_795_000_000
ISSUER_NAME = "Acme Edge Models"


@dataclass
class Issued:
    device: uuid.UUID
    core: dict[str, LoraFactors]  # the core as issued (marked or not): what a device would leak
    index: int
    mode: str
    bundle: Path


@dataclass
class World:
    """One running log with one registered issuer, and what was issued through it."""

    url: str
    log_key: str
    client: LogClient
    issuer_keys: IssuerKeys
    params: MarkingParams
    backbone: Path
    out: Path
    tiles: Path  # the static tile mirror the log's sequencer writes (`serve --tiles-dir`)
    issued: list[Issued] = field(default_factory=list)

    def verify(self, suspect: Path, *extra: str, log: str | None = "", backbone: bool = False,
               log_key: str | None = None) -> tuple[int, dict]:
        """`emshield-verify SUSPECT --json` in-process: (exit code, JSON). ``log``: URL to use, "" for
        this world's log, None for none (offline)."""
        args = [str(suspect), "--log-key", log_key or self.log_key, "--json", *extra]
        if log is not None:
            args += ["--log", log or self.url]
        if backbone:
            args += ["--backbone", str(self.backbone)]
        result = CliRunner().invoke(verify_main, args)
        try:
            out = json.loads(result.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"not JSON (exit {result.exit_code}): {result.stdout!r} {result.stderr!r} {result.exception!r}")
        assert out["exit_code"] == result.exit_code
        return result.exit_code, out


def device_target(device: uuid.UUID) -> DeviceTarget:
    """A device's public keys from a fixed secret (the verifier never needs the device itself)."""
    return DeviceTarget(device, DevicePublicKey.from_secret(hashlib.sha256(device.bytes).digest()))


def issue(world: World, core: dict[str, LoraFactors], devices: list[uuid.UUID], policy: str = POLICY_AUTO,
          allow_shared_core: bool = False) -> None:
    """Issue ``core`` to ``devices`` with the issuance pipeline (emshield.issue), keeping what each got."""
    issuer = prepare_run(world.client, NoteVerifier.from_verifier_key(world.log_key), world.issuer_keys,
                            core, world.backbone, policy=policy, allow_shared_core=allow_shared_core)
    for device in devices:
        res = issue_to_device(issuer, device_target(device), world.out, now=ISSUED_AT + len(world.issued))
        marked = mark_for_device(issuer, device, res.salt)  # deterministic: the core that was sealed into the bundle
        world.issued.append(Issued(device, marked.core, res.index, res.policy, Path(res.bundle)))


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory):
    """The log server and one issuer. Issued: one core to three devices with the watermark (as in the
    demo), one core fingerprint-only to one device, and one core fingerprint-only to two devices."""
    tmp = tmp_path_factory.mktemp("verify-world")
    files = init_log(tmp)
    server = ServerProcess(files.db, workers=1, threads=4, tiles_dir=tmp / "tiles").start()
    try:
        client = LogClient(server.url, operator_token=files.token)
        keys = IssuerKeys(ed25519_key("verify-issuer"), SECRET)
        params = marking_params_for(keys, backbone_id(TINY), tiny_core(0))
        register_issuer(client, keys, ISSUER_NAME, params, now=ISSUED_AT - 100)
        w = World(server.url, files.verifier.verifier_key(), client, keys, params, TINY, tmp / "bundles", tmp / "tiles")
        issue(w, tiny_core(0), [uuid.UUID(int=0x1000 + n) for n in range(3)])
        assert [i.mode for i in w.issued] == ["both"] * 3
        issue(w, tiny_core(3), [uuid.UUID(int=0x2000)], POLICY_FINGERPRINT)
        issue(w, tiny_core(4), [uuid.UUID(int=0x3000), uuid.UUID(int=0x3001)], POLICY_FINGERPRINT,
              allow_shared_core=True)  # refused without: the copies are indistinguishable
        yield w
    finally:
        server.stop()
