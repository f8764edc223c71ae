"""Key providers against the real stores: key file permissions, kernel keyring (keyctl), TPM (swtpm)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _kit.tee import BACKBONE, LEAF, require, start_swtpm
from emshield.tee import errors
from emshield.tee.device import DeviceRecord, init_device, load_device
from emshield.tee.mount import mount
from emshield.tee.providers.file import FileKeyProvider
from emshield.tee.providers.keyring import KeyringKeyProvider
from emshield.tee.providers.tpm import TCTI_ENV, TpmKeyProvider
from emshield.tee.seal import seal_bytes


def _round_trip(device, suite: str = "x25519") -> None:
    plaintext = os.urandom(3000)
    blob = seal_bytes(plaintext, device.record.public, device.binding(BACKBONE, LEAF), suite=suite, chunk_size=1024)
    reloaded = load_device(device.directory)
    with mount(blob, reloaded, BACKBONE, LEAF) as m:
        assert bytes(m.plaintext) == plaintext


# -- file ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suite", ["x25519", "mlkem768-x25519"])
def test_file_round_trip_and_mode(tmp_path, suite: str) -> None:
    device = init_device(tmp_path / "d", "file")
    assert (device.provider.path.stat().st_mode & 0o777) == 0o600
    _round_trip(device, suite)


def test_file_key_refuses_loose_permissions(tmp_path) -> None:
    device = init_device(tmp_path / "d", "file")
    for mode in (0o640, 0o604, 0o660):
        device.provider.path.chmod(mode)
        with pytest.raises(errors.KeyFilePermissionError, match=f"{mode:04o}"):
            with device.unlock():
                pass
    device.provider.path.chmod(0o600)
    with device.unlock() as secret:
        assert len(secret) == 32
    assert not any(secret), "secret not wiped after unlock"


def test_file_key_refuses_symlink_and_foreign_owner(tmp_path) -> None:
    device = init_device(tmp_path / "d", "file")
    real = device.provider.path
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(errors.ProviderError, match="cannot open"):
        with FileKeyProvider(tmp_path, {"path": str(link)}).unlock():
            pass
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    os.chown(real, 65534, 65534)
    with pytest.raises(errors.KeyFilePermissionError, match="owned by uid 65534"):
        with device.unlock():
            pass


def test_init_never_overwrites_an_identity(tmp_path) -> None:
    device = init_device(tmp_path / "d", "file")
    with pytest.raises(errors.DeviceRecordError, match="already holds"):
        init_device(tmp_path / "d", "file")
    (tmp_path / "d" / "device.json").unlink()
    with pytest.raises(errors.ProviderError, match="already exists"):
        init_device(tmp_path / "d", "file")
    assert device.provider.path.exists()


def test_record_is_strict(tmp_path) -> None:
    device = init_device(tmp_path / "d", "file")
    path = tmp_path / "d" / "device.json"
    good = json.loads(path.read_text())
    for bad, err, match in [({**good, "extra": 1}, errors.DeviceRecordError, "exactly the fields"),
                            ({**good, "format": "emshield-device/v9"}, errors.UnsupportedVersionError, "v9"),
                            ({**good, "x25519_public": "00"}, errors.DeviceRecordError, "malformed"),
                            ({**good, "uuid": "nope"}, errors.DeviceRecordError, "malformed")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(err, match=match):
            DeviceRecord.load(tmp_path / "d")
    path.write_text("{" * 10)
    with pytest.raises(errors.DeviceRecordError, match="not JSON"):
        DeviceRecord.load(path)
    path.write_text(json.dumps(good))
    assert DeviceRecord.load(path) == device.record


def test_record_swapped_to_another_key_is_detected(tmp_path) -> None:
    a = init_device(tmp_path / "a", "file")
    b = init_device(tmp_path / "b", "file")
    shutil.copy(b.provider.path, tmp_path / "stolen.key")
    forged = load_device(tmp_path / "a")
    forged.provider.path = tmp_path / "stolen.key"
    with pytest.raises(errors.DeviceRecordError, match="does not match"):
        with forged.unlock():
            pass
    assert a.uuid != b.uuid


# -- kernel keyring ----------------------------------------------------------------------------------

def _keyring_ok() -> tuple[bool, str]:
    return KeyringKeyProvider(None, {}).available()  # type: ignore[arg-type]


def test_keyring_round_trip_user_keyring(tmp_path, keyring_description_cleanup) -> None:
    ok, why = _keyring_ok()
    require(ok, f"kernel keyring: {why}")
    device = init_device(tmp_path / "d", "keyring")
    keyring_description_cleanup.append(device)
    assert device.record.provider_config == {"keyring": "@u", "description": f"emshield:device:{device.uuid}"}
    assert not list((tmp_path / "d").glob("*.key")), "keyring provider wrote a key file"
    _round_trip(device, "mlkem768-x25519")
    device.provider.destroy()
    with pytest.raises(errors.ProviderError, match="re-provision"):
        with load_device(device.directory).unlock():
            pass


KEYRING_SESSION_SCRIPT = """
import os, sys
from emshield.tee.device import init_device, load_device
from emshield.tee.mount import mount
from emshield.tee.seal import seal_bytes
from emshield.tee.errors import ProviderError
d = init_device(sys.argv[1], "keyring", {"keyring": "@s"})
blob = seal_bytes(b"session secret", d.record.public, d.binding(bytes(32), bytes(32)))
with mount(blob, load_device(sys.argv[1]), bytes(32), bytes(32)) as m:
    print("opened", bytes(m.plaintext).decode())
d.provider.destroy()
"""


def test_keyring_inside_a_keyctl_session(tmp_path) -> None:
    ok, why = _keyring_ok()
    require(ok, f"kernel keyring: {why}")
    out = subprocess.run(["keyctl", "session", "-", sys.executable, "-c", KEYRING_SESSION_SCRIPT, str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "opened session secret" in out.stdout


def test_keyring_unavailable_says_why(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no keyctl on PATH
    with pytest.raises(errors.ProviderUnavailableError, match="keyctl not found"):
        init_device(tmp_path / "d", "keyring")
    assert not (tmp_path / "d" / "device.json").exists()


# -- TPM 2.0 (swtpm) --------------------------------------------------------------------------------

def test_tpm_round_trip(tmp_path, swtpm) -> None:
    device = init_device(tmp_path / "d", "tpm", {"tcti": swtpm})
    cfg = device.record.provider_config
    assert cfg["tcti"] == swtpm and cfg["sealed_public"] and cfg["sealed_private"]
    secret_hex = None
    with device.unlock() as secret:
        secret_hex = bytes(secret).hex()
    assert secret_hex not in (tmp_path / "d" / "device.json").read_text()
    _round_trip(device, "x25519")
    _round_trip(device, "mlkem768-x25519")


def _extend_pcr(tcti: str, index: int) -> None:
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
    from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA

    tc = TCTILdr.parse(tcti)
    e = ESAPI(tc)
    try:
        e.pcr_extend(getattr(ESYS_TR, f"PCR{index}"),
                     TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=b"\x01" * 32))]))
    finally:
        e.close()
        tc.close()


def test_tpm_pcr_policy_refuses_after_platform_change(tmp_path, swtpm) -> None:
    device = init_device(tmp_path / "d", "tpm", {"tcti": swtpm, "pcrs": "sha256:16"})
    _round_trip(device)
    _extend_pcr(swtpm, 16)  # PCR 16 is the debug PCR: resettable, nothing else depends on it
    with pytest.raises(errors.ProviderError, match="PCR policy not satisfied"):
        with load_device(device.directory).unlock():
            pass


def test_tpm_object_is_bound_to_its_tpm(tmp_path, swtpm) -> None:
    """The sealed object blobs are useless on another TPM (a fresh swtpm state is another chip)."""
    device = init_device(tmp_path / "d", "tpm", {"tcti": swtpm})
    (tmp_path / "other").mkdir()
    with start_swtpm(tmp_path / "other") as other_tcti:
        moved = TpmKeyProvider(tmp_path, {**device.record.provider_config, "tcti": other_tcti})
        with pytest.raises(errors.ProviderError, match="TPM refused to unseal"):
            with moved.unlock():
                pass
    with device.unlock() as secret:
        assert len(secret) == 32


def test_tpm_unavailable_says_why(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(TCTI_ENV, "swtpm:host=127.0.0.1,port=1")
    with pytest.raises(errors.ProviderUnavailableError, match="cannot reach a TPM"):
        init_device(tmp_path / "d", "tpm")
    assert not (tmp_path / "d" / "device.json").exists()


def test_file_device_made_with_a_relative_dir_works_from_anywhere(tmp_path, monkeypatch) -> None:
    """`device init --dir chain/device0` stored the key path relative to the working directory of init,
    so the device broke when used from elsewhere: the record now holds it relative to the device directory."""
    monkeypatch.chdir(tmp_path)
    device = init_device(Path("chain") / "device0", "file")
    assert device.record.provider_config == {"path": "device.key"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _round_trip(load_device(tmp_path / "chain" / "device0"))
    moved = tmp_path / "moved"
    (tmp_path / "chain" / "device0").rename(moved)
    _round_trip(load_device(moved))  # the directory moves as a whole
