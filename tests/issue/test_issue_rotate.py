"""Rotating the issuer's signing key keeps old issuances traceable (issue #17, key custody): the
marking secret stays, both registrations are found by their verification key, and the
attribution signed with the new key is checked by `emshield-verify` like any other."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from _kit.paths import TINY as BACKBONE
from click.testing import CliRunner

from emshield.core import core_to_bytes
from emshield.issue.keys import (
    ISSUER_KEY_FILE,
    NEXT_KEY_FILE,
    RETIRED_KEY_PREFIX,
    load_issuer,
)
from emshield.issue.pipeline import mark_for_device, prepare_run
from emshield.logclient.http import LogClient
from emshield.marking.policy import Tolerance
from emshield.tee.device import init_device
from verifier.verify.cli import main as verify_main

from .test_issue_flow import TOKEN_ENV, cli, issue_args, setup_issuer


def test_rotation_keeps_old_issuances_traceable_and_disclosable(tmp_path: Path, log, core) -> None:
    issuer_dir, core_file = setup_issuer(tmp_path, log, core, name="Rotating Issuer")
    old_key = load_issuer(issuer_dir)
    old_pem = (issuer_dir / ISSUER_KEY_FILE).read_bytes()
    dev_a, dev_b = (init_device(tmp_path / n, "file") for n in ("a", "b"))
    out = tmp_path / "bundles"
    first = json.loads(cli(*issue_args(log, issuer_dir, core_file, out, "--device", dev_a.directory)).stdout)
    (res_a,) = first["issued"]
    assert res_a["policy"] == "both" and res_a["secret_mark_commitment"]

    rotated = json.loads(cli("issuer", "rotate", "--log", log.url, "--dir", issuer_dir, "--json",
                             env={TOKEN_ENV: log.token}).stdout)
    new_key = load_issuer(issuer_dir)
    assert rotated["old_key_id"] == old_key.key_id.hex() and rotated["new_key_id"] == new_key.key_id.hex()
    assert new_key.marking_secret == old_key.marking_secret and new_key.key_id != old_key.key_id
    retired = issuer_dir / f"{RETIRED_KEY_PREFIX}{old_key.key_id.hex()}"
    assert retired.read_bytes() == old_pem and retired.stat().st_mode & 0o077 == 0  # kept, still 0600
    assert not (issuer_dir / NEXT_KEY_FILE).exists()

    second = json.loads(cli(*issue_args(log, issuer_dir, core_file, out, "--device", dev_b.directory)).stdout)
    (res_b,) = second["issued"]

    # Device A (issued under the old key) leaks its core.
    client = LogClient(log.url)
    run = prepare_run(client, log.verifier, old_key, core, BACKBONE, tolerance=Tolerance(max_perturbation=0.5))
    leaked = tmp_path / "leaked.safetensors"
    leaked.write_bytes(core_to_bytes(mark_for_device(run, uuid.UUID(res_a["device_uuid"]), bytes.fromhex(
        res_a["secret_mark_salt"])).core))

    traced = json.loads(cli("trace", leaked, "--log", log.url, "--log-key", log.verifier_key, "--dir", issuer_dir,
                            "--disclose", "--json").stdout)
    assert [r["leaf_index"] for r in traced["named"]] == [res_a["index"]]
    assert {r["leaf_index"] for r in traced["ranked"]} == {res_a["index"], res_b["index"]}  # both keys' issuances
    (d,) = traced["disclosures"]
    assert d["verified"] and d["created"]

    result = CliRunner().invoke(verify_main, [str(leaked), "--log", log.url, "--log-key", log.verifier_key, "--json"])
    verdict = json.loads(result.stdout)
    assert result.exit_code == 0, verdict
    (m,) = [x for x in verdict["disclosed"] if x["attribution_index"] == d["leaf_index"]]
    assert m["device_uuid"] == res_a["device_uuid"] and not m["signed_by_issuing_key"]
    assert m["signer_key_id"] == new_key.key_id.hex() and m["issuer_key_id"] == old_key.key_id.hex()
