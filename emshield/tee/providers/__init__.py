"""Key providers: where a device's 32-byte secret lives (file, kernel keyring, TPM 2.0).

A real TEE (SGX/TDX enclave, TrustZone/OP-TEE trusted application) plugs in here as one more
:class:`~emshield.tee.providers.base.KeyProvider`; see spec/threat-model.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emshield.tee.providers.base import KeyProvider
from emshield.tee.providers.file import FileKeyProvider
from emshield.tee.providers.keyring import KeyringKeyProvider
from emshield.tee.providers.tpm import TpmKeyProvider

PROVIDERS: dict[str, type] = {
    FileKeyProvider.name: FileKeyProvider,
    KeyringKeyProvider.name: KeyringKeyProvider,
    TpmKeyProvider.name: TpmKeyProvider,
}


def make_provider(name: str, device_dir: Path, config: dict[str, Any]) -> KeyProvider:
    """Build a provider from its name and the config stored in (or about to go into) the device record."""
    if name not in PROVIDERS:
        raise ValueError(f"unknown key provider {name!r}; choose one of {', '.join(PROVIDERS)}")
    return PROVIDERS[name](device_dir, config)


__all__ = ["PROVIDERS", "KeyProvider", "make_provider"]
