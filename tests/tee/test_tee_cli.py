"""`emshield device init|show|seal|mount`: outputs, child commands on the mounted core, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from _kit.tee import BACKBONE, LEAF, make_core, require
from emshield.core import core_to_bytes
from emshield.device.cli import device_group

ROOT = Path(__file__).resolve().parents[2]
IDS = ["--backbone-id", BACKBONE.hex(), "--leaf-hash", LEAF.hex()]
CHILD = ("import hashlib; from emshield.tee.mount import attach_inherited\n"
         "with attach_inherited() as v: print('child-sha256', hashlib.sha256(v).hexdigest(), len(v))")


def cli(*args: str):
    return CliRunner().invoke(device_group, list(args), catch_exceptions=False)


@pytest.fixture
def sealed(tmp_path: Path) -> tuple[Path, Path, bytes]:
    dev = tmp_path / "dev"
    assert cli("init", "--dir", str(dev)).exit_code == 0
    plaintext = core_to_bytes(make_core(seed=9))
    core_file = tmp_path / "issuer-side-core.safetensors"  # the issuer's copy; the device never writes one
    core_file.write_bytes(plaintext)
    blob = tmp_path / "core.sealed"
    r = cli("seal", str(core_file), str(blob), "--to", str(dev), *IDS, "--suite", "mlkem768-x25519", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["suite"] == "mlkem768-x25519"
    return dev, blob, plaintext


def test_init_prints_uuid_and_public_key_and_show_repeats_it(tmp_path: Path) -> None:
    r = cli("init", "--dir", str(tmp_path / "d"), "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)
    assert rec["format"] == "emshield-device/v1" and rec["provider"] == "file" and len(rec["x25519_public"]) == 64
    shown = cli("show", "--dir", str(tmp_path / "d"))
    assert rec["uuid"] in shown.output and rec["x25519_public"] in shown.output
    again = cli("init", "--dir", str(tmp_path / "d"))
    assert again.exit_code == 2 and "already holds a device identity" in again.output


def test_mount_prints_verified_metadata_and_hands_the_core_to_a_child(sealed, capfd) -> None:
    dev, blob, plaintext = sealed
    import hashlib

    r = cli("mount", str(blob), *IDS, "--dir", str(dev), "--json", "--", sys.executable, "-c", CHILD)
    assert r.exit_code == 0, r.output
    meta = json.loads(r.output)
    assert meta["verified"] is True and meta["leaf_hash"] == LEAF.hex() and meta["tensors"] == 4
    assert meta["plaintext_length"] == len(plaintext)
    child = capfd.readouterr().out
    assert f"child-sha256 {hashlib.sha256(plaintext).hexdigest()} {len(plaintext)}" in child


def test_mount_propagates_the_child_exit_status(sealed) -> None:
    dev, blob, _ = sealed
    r = cli("mount", str(blob), *IDS, "--dir", str(dev), "--", sys.executable, "-c", "raise SystemExit(7)")
    assert r.exit_code == 7


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b[:-1], "truncated blob"),
    (lambda b: b[:-20] + bytes([b[-20] ^ 1]) + b[-19:], "tampered blob"),
    (lambda b: b[:300] + bytes([b[300] ^ 1]) + b[301:], "key unwrap failed"),
    (lambda b: b + b"x", "extended blob"),
    (lambda b: b"GIF89a" + b[6:], "not a sealed blob"),
    (lambda b: b[:8] + b"\x00\x09" + b[10:], "unsupported version"),
])
def test_mount_errors_say_what_happened(sealed, tmp_path, mutate, message: str) -> None:
    dev, blob, _ = sealed
    bad = tmp_path / "bad.sealed"
    bad.write_bytes(mutate(blob.read_bytes()))
    r = cli("mount", str(bad), *IDS, "--dir", str(dev), "--", sys.executable, "-c", "print('must not run')")
    assert r.exit_code == 2 and message in r.output and "must not run" not in r.output


def test_mount_binding_and_device_errors(sealed, tmp_path) -> None:
    dev, blob, _ = sealed
    r = cli("mount", str(blob), "--backbone-id", BACKBONE.hex(), "--leaf-hash", "ab" * 32, "--dir", str(dev))
    assert r.exit_code == 2 and "bound to another issuance" in r.output
    r = cli("mount", str(blob), "--backbone-id", "cd" * 32, "--leaf-hash", LEAF.hex(), "--dir", str(dev))
    assert r.exit_code == 2 and "wrong backbone" in r.output
    assert cli("init", "--dir", str(tmp_path / "other")).exit_code == 0
    r = cli("mount", str(blob), *IDS, "--dir", str(tmp_path / "other"))
    assert r.exit_code == 2 and "wrong device" in r.output
    r = cli("mount", str(blob), *IDS, "--dir", str(tmp_path / "nothing"))
    assert r.exit_code == 2 and "no device record" in r.output
    r = cli("mount", str(blob), "--backbone-id", "zz", "--leaf-hash", LEAF.hex(), "--dir", str(dev))
    assert r.exit_code == 2 and "must be hex" in r.output


def test_seal_refuses_a_non_core_and_overwrites(sealed, tmp_path) -> None:
    dev, blob, _ = sealed
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x10" + bytes(100))
    r = cli("seal", str(junk), str(tmp_path / "j.sealed"), "--to", str(dev), *IDS)
    assert r.exit_code == 2 and "malformed core" in r.output
    assert cli("seal", str(junk), str(tmp_path / "j.sealed"), "--to", str(dev), *IDS, "--content", "opaque").exit_code == 0
    r = cli("seal", str(junk), str(blob), "--to", str(dev), *IDS, "--content", "opaque")
    assert r.exit_code == 2 and "refusing to overwrite" in r.output


def test_provider_unavailable_is_a_clear_cli_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    r = cli("init", "--provider", "keyring", "--dir", str(tmp_path / "d"))
    assert r.exit_code == 2 and "key provider unavailable" in r.output and "keyctl not found" in r.output
    r = cli("init", "--provider", "tpm", "--tcti", "swtpm:host=127.0.0.1,port=1", "--dir", str(tmp_path / "t"))
    assert r.exit_code == 2 and "key provider unavailable" in r.output


def test_tpm_init_and_mount_through_the_cli(tmp_path, swtpm, core) -> None:
    dev = tmp_path / "dev"
    r = cli("init", "--provider", "tpm", "--tcti", swtpm, "--dir", str(dev), "--json")
    assert r.exit_code == 0, r.output
    assert "sealed_private" not in r.output  # the public summary omits the TPM blobs
    core_file = tmp_path / "c.safetensors"
    core_file.write_bytes(core_to_bytes(core))
    assert cli("seal", str(core_file), str(tmp_path / "c.sealed"), "--to", str(dev), *IDS).exit_code == 0
    r = cli("mount", str(tmp_path / "c.sealed"), *IDS, "--dir", str(dev))
    assert r.exit_code == 0 and "verified: True" in r.output


def test_console_script_end_to_end(sealed) -> None:
    """The installed `emshield` entry point, not only the click group."""
    dev, blob, plaintext = sealed
    exe = Path(sys.executable).parent / "emshield"
    require(exe.exists(), "emshield console script not installed")
    out = subprocess.run([str(exe), "device", "mount", str(blob), *IDS, "--dir", str(dev), "--",
                          sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "verified: True" in out.stdout and f"{len(plaintext)}" in out.stdout
