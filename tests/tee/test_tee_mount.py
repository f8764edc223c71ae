"""mount: plaintext only in secret memory, zero-copy core, wiped on exit and on errors, typed failures."""

from __future__ import annotations

import ctypes
import io
import mmap
import os
import shutil
import subprocess
import sys
import uuid
import warnings

import numpy as np
import pytest

from _kit.tee import BACKBONE, LEAF, cores_equal
from emshield.core import LoraFactors
from emshield.tee import errors
from emshield.tee.blobformat import CONTENT_CORE
from emshield.tee.device import init_device
from emshield.tee.mount import mount
from emshield.tee.seal import seal_bytes, seal_core
from emshield.tee.secmem import IN_PROCESS_KINDS, KIND_LOCKED, KIND_PRIVATE, KIND_SECRET, SecretBuffer

PR_GET_DUMPABLE = 3


def _seal_core(device, core, **kw) -> bytes:
    return seal_core(core, device.record.public, device.binding(BACKBONE, LEAF), chunk_size=256, **kw)


@pytest.mark.parametrize("suite", ["x25519", "mlkem768-x25519"])
def test_mount_yields_the_core_zero_copy_in_secret_memory(device, core, tmp_path, suite: str) -> None:
    path = tmp_path / "core.sealed"
    path.write_bytes(_seal_core(device, core, suite=suite))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ViewsOutliveMountWarning / UnlockedMemoryWarning
        with mount(path, device, BACKBONE, LEAF) as m:
            assert m.memory_kind in (KIND_SECRET, KIND_LOCKED)
            assert m.plaintext.readonly
            assert cores_equal(m.core, core)
            a = next(iter(m.core.values())).a
            assert np.shares_memory(a, np.frombuffer(m.plaintext, dtype=np.uint8))
            del a
            merged = {k: f.delta() for k, f in m.core.items()}  # a caller's use: merge into a backbone
    assert all(np.allclose(merged[k], core[k].delta()) for k in core)


def test_plaintext_is_wiped_on_exit_and_on_exceptions(device, core) -> None:
    blob = _seal_core(device, core)
    for raise_inside in (False, True):
        spy = None
        try:
            with mount(blob, device, BACKBONE, LEAF) as m:
                # a second mapping of the same memory outlives the mount and shows what is left in it
                spy = mmap.mmap(m.fd, len(m.plaintext), mmap.MAP_SHARED, mmap.PROT_READ)
                assert bytes(spy[:8]) == bytes(m.plaintext[:8]) != bytes(8)
                if raise_inside:
                    raise KeyError("caller failed")
        except KeyError:
            assert raise_inside
        assert spy is not None and bytes(spy) == bytes(len(spy)), "plaintext left in memory after mount"
        spy.close()


def test_process_is_undumpable_only_while_mounted(device, core) -> None:
    libc = ctypes.CDLL(None)
    assert libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1
    with mount(_seal_core(device, core), device, BACKBONE, LEAF):
        assert libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
    assert libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1


def test_tampered_last_chunk_never_yields_a_partial_core(device, core) -> None:
    blob = bytearray(_seal_core(device, core))
    blob[-3] ^= 1
    entered = False
    with pytest.raises(errors.TamperedBlobError, match="failed authentication"):
        with mount(bytes(blob), device, BACKBONE, LEAF):
            entered = True
    assert not entered


@pytest.mark.parametrize(("backbone", "leaf", "err"), [
    (bytes(32), LEAF, errors.WrongBackboneError),
    (BACKBONE, bytes(32), errors.WrongIssuanceError),
])
def test_binding_errors(device, core, backbone, leaf, err) -> None:
    with pytest.raises(err):
        with mount(_seal_core(device, core), device, backbone, leaf):
            pass


def test_blob_for_another_device(device, core, tmp_path) -> None:
    other = init_device(tmp_path / "other", "file")
    with pytest.raises(errors.WrongDeviceError, match=str(other.uuid)):
        with mount(_seal_core(other, core), device, BACKBONE, LEAF):
            pass


def test_device_reprovisioned_with_same_uuid_cannot_open_old_blob(device, core, tmp_path) -> None:
    """Same UUID, new key (a re-provisioned device): HPKE refuses, reported as such."""
    blob = _seal_core(device, core)
    key = device.provider.path
    key.unlink()
    device.provider.create(device.uuid, bytearray(os.urandom(32)))
    with pytest.raises(errors.DeviceRecordError, match="does not match"):
        with mount(blob, device, BACKBONE, LEAF):
            pass


def test_opaque_content_has_no_core_and_malformed_core_is_refused(device) -> None:
    opaque = seal_bytes(b"not a core", device.record.public, device.binding(BACKBONE, LEAF))
    with mount(io.BytesIO(opaque), device, BACKBONE, LEAF) as m:
        assert m.core is None and bytes(m.plaintext) == b"not a core"
    lying = seal_bytes(b"not a core", device.record.public, device.binding(BACKBONE, LEAF), content_type=CONTENT_CORE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(errors.MalformedCoreError):
            with mount(lying, device, BACKBONE, LEAF):
                pass


def test_kept_views_read_zeros_and_are_reported(device, core) -> None:
    with pytest.warns(UserWarning, match="kept past the mount"):
        with mount(_seal_core(device, core), device, BACKBONE, LEAF) as m:
            kept = next(iter(m.core.values())).a
    assert not kept.any()


def test_locked_memfd_fallback_holds_wipes_and_frees() -> None:
    buf = SecretBuffer.allocate(10_000, kinds=(KIND_LOCKED,))
    assert buf.kind == KIND_LOCKED
    buf.view[:5] = b"hello"
    kept = np.frombuffer(buf.view, dtype=np.uint8)
    assert bytes(kept[:5]) == b"hello"
    assert not buf.wipe_and_close()  # a view was alive: zeroed but not unmapped
    assert not kept.any()
    del kept
    again = SecretBuffer.allocate(10_000, kinds=(KIND_LOCKED,))
    again.view[:5] = b"hello"
    fd = os.dup(again.fd)
    assert again.wipe_and_close()
    assert os.fstat(fd).st_size == 0  # pages released: the memfd was truncated after zeroing
    os.close(fd)


def _locked_kib() -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmLck:"))


@pytest.mark.parametrize("kind", [KIND_LOCKED, KIND_PRIVATE])
def test_locked_kinds_lock_every_page_as_it_is_first_written(kind: str) -> None:
    size = (6 << 20) + 12345
    before = _locked_kib()
    buf = SecretBuffer.allocate(size, kinds=(kind,))
    assert buf.kind == kind and (buf.fd == -1) == (kind == KIND_PRIVATE)
    buf.view[:] = b"\x01" * size
    assert _locked_kib() - before >= size // 1024  # mlock2(MLOCK_ONFAULT): locked as faulted in
    kept = np.frombuffer(buf.view, dtype=np.uint8)
    assert not buf.wipe_and_close() and not kept.any()
    del kept


def test_in_process_kinds_mount_a_multi_step_core(device) -> None:
    rng = np.random.default_rng(5)
    core = {f"model.layers.{i}.mlp.up_proj.weight": LoraFactors(rng.standard_normal((8, 4096)).astype(np.float32),
                                                                rng.standard_normal((4096, 8)).astype(np.float32), 1.5)
            for i in range(20)}  # ~5 MiB, many chunks
    blob = seal_core(core, device.record.public, device.binding(BACKBONE, LEAF))
    with mount(blob, device, BACKBONE, LEAF, memory_kinds=IN_PROCESS_KINDS) as m:
        assert m.memory_kind in IN_PROCESS_KINDS
        assert cores_equal(m.core, core)


LIMIT_SCRIPT = """
import sys, warnings
from emshield.tee.secmem import IN_PROCESS_KINDS, SecretBuffer
from emshield.tee.errors import InsecureMemoryError
for options in ({}, {"kinds": IN_PROCESS_KINDS}):
    try:
        SecretBuffer.allocate(16 << 20, **options)
        print("allocated")
    except InsecureMemoryError as e:
        print("refused:", e)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    b = SecretBuffer.allocate(16 << 20, allow_unlocked=True)
    print("fallback:", b.kind, "|", w[0].message if w else "no warning")
    b.wipe_and_close()
"""


def test_memlock_limit_is_honest_not_silent() -> None:
    """Without CAP_IPC_LOCK and with an 8 MiB RLIMIT_MEMLOCK, 16 MiB of secret memory is refused with
    the reason, and swappable memory is used only when asked for, with a warning."""
    setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
    if setpriv is None or prlimit is None:
        pytest.skip("setpriv/prlimit (util-linux) not installed")
    cmd = [prlimit, "--memlock=8388608", sys.executable, "-c", LIMIT_SCRIPT]
    if os.geteuid() == 0:
        cmd = [setpriv, "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("refused:") == 2 and "allocated" not in out.stdout
    assert "anonymous memory refused" in out.stdout and "RLIMIT_MEMLOCK" in out.stdout and "ulimit -l" in out.stdout
    assert "fallback: memfd (unlocked) | plaintext core is held in UNLOCKED memory" in out.stdout


def test_empty_plaintext_mounts(device) -> None:
    blob = seal_bytes(b"", device.record.public, device.binding(BACKBONE, LEAF))
    with mount(blob, device, BACKBONE, LEAF) as m:
        assert len(m.plaintext) == 0


def test_blob_binding_checked_before_the_key_is_touched(tmp_path, core) -> None:
    """A wrong-device blob is refused even when the key provider is broken: no unlock attempted."""
    device = init_device(tmp_path / "d", "file")
    blob = seal_bytes(b"x", device.record.public, device.binding(BACKBONE, LEAF))
    device.provider.path.chmod(0o644)  # the key would be refused if it were read
    other_binding_device = init_device(tmp_path / "e", "file")
    with pytest.raises(errors.WrongDeviceError):
        with mount(blob, other_binding_device, BACKBONE, LEAF):
            pass
    with pytest.raises(errors.KeyFilePermissionError):
        with mount(blob, device, BACKBONE, LEAF):
            pass
    assert uuid.UUID(str(device.uuid)) == device.uuid


def test_tampered_last_chunk_of_a_large_blob_fails_in_every_memory_kind(device) -> None:
    """5 MiB of plaintext decrypted before the last tag fails: the error comes out, the buffer is
    wiped and freed (no views kept, no warning) and the process can mount again."""
    plaintext = bytes(range(256)) * (5 << 12)
    blob = bytearray(seal_bytes(plaintext, device.record.public, device.binding(BACKBONE, LEAF)))
    blob[-1] ^= 1
    for kind in (KIND_SECRET, KIND_LOCKED, KIND_PRIVATE):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(errors.TamperedBlobError, match="chunk 4 of 5"):
                with mount(bytes(blob), device, BACKBONE, LEAF, memory_kinds=(kind,)):
                    pass
    blob[-1] ^= 1
    with mount(bytes(blob), device, BACKBONE, LEAF) as m:
        assert bytes(m.plaintext) == plaintext
