"""The key-provider interface every store of a device secret implements."""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol, runtime_checkable

from emshield.tee.errors import ProviderUnavailableError


@runtime_checkable
class KeyProvider(Protocol):
    """Holds one device's 32-byte secret; releases it only inside :meth:`unlock`.

    Constructed as ``Provider(device_dir, config)`` where config is what :meth:`config` returned
    when the device was created (stored in the device record), or the user's options at creation.
    """

    name: ClassVar[str]

    def available(self) -> tuple[bool, str]:
        """(True, "") when this provider can work here, else (False, why not)."""
        ...

    def create(self, device_uuid: uuid.UUID, secret: bytearray) -> None:
        """Store a new secret for the device; refuses to overwrite an existing one."""
        ...

    def config(self) -> dict[str, Any]:
        """JSON-able settings needed to find the secret again (goes into the device record)."""
        ...

    def unlock(self) -> AbstractContextManager[bytearray]:
        """Yield the secret in a bytearray that is wiped when the context exits."""
        ...

    def destroy(self) -> None:
        """Delete the stored secret (device decommissioning, test clean-up)."""
        ...


def require_available(provider: KeyProvider) -> None:
    ok, why = provider.available()
    if not ok:
        raise ProviderUnavailableError(f"key provider '{provider.name}' is not available: {why}")
