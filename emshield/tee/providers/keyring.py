"""`keyring` provider: the device secret as a `user` key in the Linux kernel keyring, via `keyctl`.

As the seed's mount script does. The secret never touches disk (it is also lost at reboot: the
device must then be re-provisioned). The secret goes to `keyctl padd` on stdin, never on a command
line. Default keyring is the user keyring `@u`: a process without a session keyring (the normal
case here) reaches `@u` through its user-session keyring and *possesses* the key, which the default
key permissions require for reading. Inside `keyctl session` the key is not possessed; use
`--keyring @s` there, or `keyctl link @u @s`.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from emshield.tee.devicekey import held_secret
from emshield.tee.errors import ProviderError, ProviderUnavailableError

KEYRINGS = ("@u", "@s", "@us")


class KeyringKeyProvider:
    name: ClassVar[str] = "keyring"

    def __init__(self, device_dir: Path, config: dict[str, Any]) -> None:
        unknown = set(config) - {"keyring", "description"}
        if unknown:
            raise ProviderError(f"keyring provider: unknown settings {sorted(unknown)}")
        self.keyring = config.get("keyring", "@u")
        if self.keyring not in KEYRINGS:
            raise ProviderError(f"keyring must be one of {', '.join(KEYRINGS)}, got {self.keyring!r}")
        self.description: str | None = config.get("description")

    def _keyctl(self, *args: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        exe = shutil.which("keyctl")
        if exe is None:
            raise ProviderUnavailableError("keyctl not found (install keyutils)")
        out = subprocess.run([exe, *args], input=stdin, capture_output=True, timeout=30)
        if check and out.returncode != 0:
            msg = out.stderr.decode(errors="replace").strip()
            if "Permission denied" in msg:
                msg += (f" (the key in {self.keyring} is not possessed by this process: inside `keyctl session` "
                        "use --keyring @s, or run `keyctl link @u @s`)")
            raise ProviderError(f"keyctl {args[0]} failed: {msg}")
        return out

    def available(self) -> tuple[bool, str]:
        if shutil.which("keyctl") is None:
            return False, "keyctl not found (install keyutils)"
        out = self._keyctl("show", self.keyring, check=False)
        if out.returncode != 0:
            return False, f"kernel keyring {self.keyring} not usable: {out.stderr.decode(errors='replace').strip()}"
        return True, ""

    def config(self) -> dict[str, Any]:
        return {"keyring": self.keyring, "description": self.description}

    def _find(self) -> str | None:
        out = self._keyctl("search", self.keyring, "user", self._require_description(), check=False)
        return out.stdout.decode().strip() if out.returncode == 0 else None

    def _require_description(self) -> str:
        if not self.description:
            raise ProviderError("device record names no keyring key description")
        return self.description

    def create(self, device_uuid: uuid.UUID, secret: bytearray) -> None:
        self.description = f"emshield:device:{device_uuid}"
        if self._find() is not None:
            raise ProviderError(f"a key {self.description!r} already exists in {self.keyring}; refusing to replace it")
        self._keyctl("padd", "user", self.description, self.keyring, stdin=bytes(secret))

    @contextmanager
    def unlock(self) -> Iterator[bytearray]:
        key_id = self._find()
        if key_id is None:
            raise ProviderError(
                f"no key {self._require_description()!r} in kernel keyring {self.keyring} "
                "(keyring keys do not survive a reboot: re-provision the device)")
        out = self._keyctl("pipe", key_id)
        with held_secret(bytearray(out.stdout), f"keyring key {self.description!r}") as secret:
            yield secret

    def destroy(self) -> None:
        key_id = self._find()
        if key_id is not None:
            self._keyctl("invalidate", key_id)
