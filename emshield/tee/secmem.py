"""Memory for plaintext cores: memfd_secret, else locked memory, else (only if allowed) unlocked memfd.

Why fd-backed mappings by default: `emshield device mount -- CMD` hands the plaintext to a child
process by inheriting the fd, and the child maps it; nothing is ever written to a file.

* ``memfd_secret`` (Linux ≥ 5.14, syscall 447): pages removed from the kernel's direct map, never
  swapped, invisible to other processes' /proc/PID/mem and to the kernel itself except through this
  mapping. The kernel charges them to RLIMIT_MEMLOCK (8 MiB here for unprivileged users; processes
  with CAP_IPC_LOCK, e.g. root, are not limited) and refuses larger mappings with EAGAIN.
* ``memfd+mlock``: an anonymous memfd whose mapping is mlock'ed (no swap), same RLIMIT_MEMLOCK.
* ``anon+mlock``: private anonymous memory, mlock'ed, ``MADV_DONTFORK`` (a child never inherits
  it) and ``MADV_HUGEPAGE`` (2 MiB pages where THP is enabled, as it is by default for anonymous
  memory: ~500× fewer page faults). It has no fd, so it only serves callers that use the core
  in-process; they ask for it explicitly (``IN_PROCESS_KINDS``).
* ``memfd (unlocked)``: only when the caller passes ``allow_unlocked=True`` (CLI
  ``--allow-unlocked``); may be swapped. A warning says so. Never chosen silently.

All mappings get MADV_DONTDUMP (no core dumps) and are overwritten with zeros on close.

Locking uses ``mlock2(MLOCK_ONFAULT)``: the limit is charged for the whole range at once (so a
refusal still comes before any plaintext exists), and each page is locked the moment decryption
first writes to it, instead of ``mlock`` populating every page in a separate pass first.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import resource
import threading
import warnings
from dataclasses import dataclass, field

from emshield.tee.errors import InsecureMemoryError

SYS_MEMFD_SECRET = 447  # x86_64 and aarch64
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4

KIND_SECRET = "memfd_secret"
KIND_LOCKED = "memfd+mlock"
KIND_PRIVATE = "anon+mlock"
KIND_UNLOCKED = "memfd (unlocked)"
SHAREABLE_KINDS = (KIND_SECRET, KIND_LOCKED)   # the default: an fd a child command can map
IN_PROCESS_KINDS = (KIND_SECRET, KIND_PRIVATE)  # no fd; the locked fallback is far cheaper to fault in
MLOCK_ONFAULT = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.munlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mlock2.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint)


class UnlockedMemoryWarning(UserWarning):
    """Plaintext is held in memory that may be swapped to disk."""


def _address(m: mmap.mmap) -> int:
    anchor = ctypes.c_char.from_buffer(m)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor  # release the buffer export at once, or mmap.close() would refuse


def _memlock_limit() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"


def _map(fd: int, size: int) -> mmap.mmap:
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m.madvise(mmap.MADV_DONTDUMP)
    return m


def _ask_for_huge_pages(m: mmap.mmap) -> None:
    """2 MiB pages where the kernel's THP settings allow them for this mapping (anonymous: `enabled`
    = madvise/always; memfd: `shmem_enabled` = advise/always): ~500× fewer page faults to unseal."""
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        pass  # THP not built in: 4 KiB pages, same protection, more page faults


def _try_memfd_secret(size: int) -> tuple[int, mmap.mmap] | str:
    fd = _libc.syscall(SYS_MEMFD_SECRET, os.O_CLOEXEC)
    if fd < 0:
        return f"memfd_secret unavailable ({os.strerror(ctypes.get_errno())})"
    try:
        os.ftruncate(fd, size)
        return fd, _map(fd, size)
    except OSError as e:
        os.close(fd)
        why = "exceeds RLIMIT_MEMLOCK" if e.errno in (errno.EAGAIN, errno.ENOMEM, errno.EPERM) else e.strerror
        return f"memfd_secret of {size} bytes refused ({why}; limit {_memlock_limit()})"


def _new_memfd(size: int) -> tuple[int, mmap.mmap]:
    fd = os.memfd_create("emshield-core", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        return fd, _map(fd, size)
    except OSError:
        os.close(fd)
        raise


def _lock_on_fault(m: mmap.mmap, size: int, what: str) -> str | None:
    """Lock the whole mapping (charged to RLIMIT_MEMLOCK now, pages locked as they fault in)."""
    if _libc.mlock2(_address(m), size, MLOCK_ONFAULT) == 0:
        return None
    return f"mlock of {size} bytes of {what} refused ({os.strerror(ctypes.get_errno())}; limit {_memlock_limit()})"


def _try_memfd_locked(size: int) -> tuple[int, mmap.mmap] | str:
    fd, m = _new_memfd(size)
    _ask_for_huge_pages(m)
    refused = _lock_on_fault(m, size, "memfd")
    if refused is None:
        return fd, m
    m.close()
    os.close(fd)
    return refused


def _try_private_locked(size: int) -> tuple[int, mmap.mmap] | str:
    m = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE)
    m.madvise(mmap.MADV_DONTDUMP)
    m.madvise(mmap.MADV_DONTFORK)
    _ask_for_huge_pages(m)
    refused = _lock_on_fault(m, size, "anonymous memory")
    if refused is None:
        return -1, m
    m.close()
    return refused


@dataclass
class SecretBuffer:
    """Plaintext memory of exactly `size` bytes (mapping rounded up to whole pages)."""

    size: int
    fd: int  # -1 for KIND_PRIVATE
    kind: str
    _map: mmap.mmap = field(repr=False)
    _locked: bool = False
    _closed: bool = False

    @classmethod
    def allocate(cls, size: int, *, allow_unlocked: bool = False,
                 kinds: tuple[str, ...] = SHAREABLE_KINDS) -> SecretBuffer:
        """Try `kinds` in order (default: memfd_secret, then locked memfd); unlocked memfd only if allowed.

        Pass ``kinds=(KIND_LOCKED,)`` to avoid memfd_secret, e.g. on hosts that must hibernate
        (the kernel refuses to hibernate while secret memory exists)."""
        mapped = max(mmap.PAGESIZE, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
        reasons = []
        for kind in kinds:
            got = {KIND_SECRET: _try_memfd_secret, KIND_LOCKED: _try_memfd_locked,
                   KIND_PRIVATE: _try_private_locked}[kind](mapped)
            if not isinstance(got, str):
                return cls(size, got[0], kind, got[1], _locked=kind in (KIND_LOCKED, KIND_PRIVATE))
            reasons.append(got)
        if not allow_unlocked:
            raise InsecureMemoryError(
                "no locked memory for the plaintext core: " + "; ".join(reasons)
                + ". Raise the locked-memory limit (ulimit -l, LimitMEMLOCK= in systemd), run with "
                "CAP_IPC_LOCK, or accept swappable memory explicitly (allow_unlocked / --allow-unlocked).")
        warnings.warn("plaintext core is held in UNLOCKED memory (may be swapped): " + "; ".join(reasons),
                      UnlockedMemoryWarning, stacklevel=2)
        fd, m = _new_memfd(mapped)
        return cls(size, fd, KIND_UNLOCKED, m)

    @property
    def view(self) -> memoryview:
        """Writable view of exactly `size` bytes."""
        return memoryview(self._map)[: self.size]

    def wipe_and_close(self) -> bool:
        """Zero every byte, unlock, unmap and close. Returns False when views of the buffer were still
        alive (they now read zeros; the mapping is released when they die)."""
        if self._closed:
            return True
        self._closed = True
        ctypes.memset(_address(self._map), 0, len(self._map))
        if self._locked:
            _libc.munlock(_address(self._map), len(self._map))
        released = True
        try:
            self._map.close()
        except BufferError:
            released = False
        if self.fd >= 0:
            if released and self.kind != KIND_SECRET:
                os.ftruncate(self.fd, 0)
            os.close(self.fd)
        return released



_dumpable_lock = threading.Lock()
_dumpable_depth = 0
_dumpable_saved = 1


def enter_undumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0) while any mount is open: no core dumps, no same-uid ptrace attach."""
    global _dumpable_depth, _dumpable_saved
    with _dumpable_lock:
        if _dumpable_depth == 0:
            _dumpable_saved = _libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
            _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        _dumpable_depth += 1


def leave_undumpable() -> None:
    global _dumpable_depth
    with _dumpable_lock:
        _dumpable_depth -= 1
        if _dumpable_depth == 0 and _dumpable_saved == 1:
            _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
