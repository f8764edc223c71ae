"""`mount`: unseal a core into secret memory, hand it to the caller, wipe it on exit.

Order of operations (each step fails with a typed error before the next starts):
read and range-check the header → compare its binding with the expected device, backbone and
issuance → unlock the device secret, unwrap the data key, lock the secret away again → allocate
secret memory of the declared plaintext size → decrypt every chunk into it, verifying each tag and
the end of the stream → only then parse and yield. On any failure or on exit the plaintext memory
is overwritten with zeros, so a caller never sees a partial core.
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from emshield.core import Core
from emshield.tee import devicekey
from emshield.tee.blobformat import CONTENT_CORE, Header, read_header
from emshield.tee.coreio import core_from_safetensors_buffer
from emshield.tee.device import Device
from emshield.tee.errors import MalformedCoreError, SealError
from emshield.tee.secmem import SHAREABLE_KINDS, SecretBuffer, enter_undumpable, leave_undumpable
from emshield.tee.seal import Progress, check_binding, decrypt_chunks, open_blob, unwrap_data_key

ENV_FD, ENV_SIZE, ENV_KIND = "EMSHIELD_CORE_FD", "EMSHIELD_CORE_SIZE", "EMSHIELD_CORE_MEMORY"


class ViewsOutliveMountWarning(UserWarning):
    """The caller kept arrays of the core after the mount closed; they now read zeros."""


@dataclass
class MountedCore:
    """What `mount` yields. Valid only inside the `with` block."""

    header: Header
    plaintext: memoryview  # read-only, over secret memory
    memory_kind: str       # memfd_secret | memfd+mlock | anon+mlock | memfd (unlocked)
    fd: int                # the secret memory's fd (for a child, see `emshield device mount`); -1 for anon+mlock
    core: Core | None      # zero-copy arrays over `plaintext` when the blob's content type is a core


@contextmanager
def mount(blob: str | os.PathLike | bytes | BinaryIO, device: Device, expected_backbone_id: bytes,
          expected_leaf_hash: bytes, *, allow_unlocked: bool = False,
          memory_kinds: tuple[str, ...] = SHAREABLE_KINDS,
          progress: Progress | None = None) -> Iterator[MountedCore]:
    """Unseal `blob` for `device` into memory only; yield it; wipe it on exit (also on exceptions).

    `memory_kinds`: secret-memory kinds to try in order (see emshield.tee.secmem); memfd_secret
    first. The default kinds give an fd a child command can map; a caller that uses the core only
    in-process can pass `IN_PROCESS_KINDS`, whose locked fallback (no memfd_secret) faults in far
    faster. Dropping memfd_secret trades direct-map removal for speed (its first touch costs tens
    of µs a page, spec/sealed.md §Performance) or allows hibernation."""
    src = open_blob(blob)
    try:
        header = read_header(src)
        check_binding(header, device.binding(expected_backbone_id, expected_leaf_hash))
        with device.unlock() as secret:
            data_key = unwrap_data_key(header, secret)
        enter_undumpable()
        try:
            try:
                buf = SecretBuffer.allocate(header.plaintext_length, allow_unlocked=allow_unlocked, kinds=memory_kinds)
                view = buf.view
                try:
                    decrypt_chunks(src, header, data_key, view, progress)
                except BaseException as e:
                    if isinstance(e, SealError):
                        e.__traceback__ = None  # its frames hold slices of the buffer; the message says it all
                    view.release()
                    buf.wipe_and_close()
                    raise
                view.release()
            finally:
                devicekey.wipe(data_key)
            try:
                mounted = _parse(header, buf)
                try:
                    yield mounted
                finally:
                    mounted.core = mounted.plaintext = None  # the caller's `as` name outlives the block
                    del mounted
            finally:
                if not buf.wipe_and_close():
                    warnings.warn("arrays or views of the core were kept past the mount; they now read zeros",
                                  ViewsOutliveMountWarning, stacklevel=3)
        finally:
            leave_undumpable()
    finally:
        if src is not blob:
            src.close()


def _parse(header: Header, buf: SecretBuffer) -> MountedCore:
    """Wrap the verified plaintext; for a core, build zero-copy arrays. A malformed core is re-raised
    without its traceback, whose frames would otherwise keep views of the secret memory alive."""
    plaintext = buf.view.toreadonly()
    if header.content_type != CONTENT_CORE:
        return MountedCore(header, plaintext, buf.kind, buf.fd, None)
    try:
        return MountedCore(header, plaintext, buf.kind, buf.fd, core_from_safetensors_buffer(plaintext))
    except MalformedCoreError as e:
        problem = str(e)
    plaintext.release()
    raise MalformedCoreError(problem)


@contextmanager
def attach_inherited() -> Iterator[memoryview]:
    """In a child of `emshield device mount`: map the inherited plaintext fd read-only.

    The child does not own the memory (the parent wipes it when the command ends)."""
    try:
        fd, size = int(os.environ[ENV_FD]), int(os.environ[ENV_SIZE])
    except (KeyError, ValueError):
        raise RuntimeError(f"not running under `emshield device mount` ({ENV_FD}/{ENV_SIZE} unset)") from None
    m = mmap.mmap(fd, max(size, mmap.PAGESIZE), mmap.MAP_SHARED, mmap.PROT_READ)
    view = memoryview(m)[:size]
    try:
        yield view
    finally:
        view.release()
        m.close()
