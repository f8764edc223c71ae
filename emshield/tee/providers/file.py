"""`file` provider: the device secret in a 0600 file owned by the device user.

Protects against other local users (file mode) and nothing else: root, a process of the same user
or anyone who copies the disk can read it (spec/threat-model.md). The default because it works
everywhere; a key file with looser permissions is refused, as ssh refuses a readable private key.
"""

from __future__ import annotations

import os
import stat
import struct
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from emshield.tee.devicekey import SECRET_LEN, held_secret, wipe
from emshield.tee.errors import KeyFilePermissionError, ProviderError, UnsupportedVersionError

KEY_FILE = "device.key"
MAGIC = b"EMSHDKEY"
VERSION = 1
FILE_LEN = len(MAGIC) + 2 + SECRET_LEN


class FileKeyProvider:
    """The key file's path in the record is relative to the device directory (or absolute): a
    record written by `device init --dir some/relative/dir` works from any working directory, and
    the directory can be moved as a whole."""

    name: ClassVar[str] = "file"

    def __init__(self, device_dir: Path, config: dict[str, Any]) -> None:
        if set(config) - {"path"}:
            raise ProviderError(f"file provider: unknown settings {sorted(set(config) - {'path'})}")
        stored = config.get("path") or KEY_FILE
        if not isinstance(stored, str):
            raise ProviderError("file provider: path must be a string")
        self._stored = stored
        self.path = Path(device_dir) / stored  # an absolute stored path replaces the directory

    def available(self) -> tuple[bool, str]:
        return True, ""

    def config(self) -> dict[str, Any]:
        return {"path": self._stored}

    def create(self, device_uuid: uuid.UUID, secret: bytearray) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)  # created 0600 atomically; umask can only tighten it
        except FileExistsError:
            raise ProviderError(f"key file {self.path} already exists; refusing to overwrite a device key") from None
        try:
            os.write(fd, MAGIC + struct.pack(">H", VERSION) + bytes(secret))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _check(self, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise KeyFilePermissionError(f"key file {self.path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise KeyFilePermissionError(
                f"key file {self.path} is owned by uid {st.st_uid}, not by this user ({os.geteuid()})")
        if st.st_mode & 0o077:
            raise KeyFilePermissionError(
                f"key file {self.path} has mode {stat.S_IMODE(st.st_mode):04o}; it must not be accessible "
                f"to group or others (chmod 600 {self.path})")

    @contextmanager
    def unlock(self) -> Iterator[bytearray]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ProviderError(f"key file {self.path} not found") from None
        except OSError as e:
            raise ProviderError(f"cannot open key file {self.path}: {e.strerror}") from None
        raw = bytearray(FILE_LEN + 1)
        try:
            st = os.fstat(fd)  # check the opened file itself, not the path (no race with a swap)
            self._check(st)
            n = os.readv(fd, [raw])
        finally:
            os.close(fd)
        try:
            if n != FILE_LEN or raw[: len(MAGIC)] != MAGIC:
                raise ProviderError(f"key file {self.path} is not an EMShield device key")
            version = struct.unpack(">H", raw[len(MAGIC): len(MAGIC) + 2])[0]
            if version != VERSION:
                raise UnsupportedVersionError(f"key file version {version} is not supported")
            secret = bytearray(raw[len(MAGIC) + 2: FILE_LEN])
        finally:
            wipe(raw)
        with held_secret(secret, f"key file {self.path}") as secret:
            yield secret

    def destroy(self) -> None:
        self.path.unlink(missing_ok=True)
