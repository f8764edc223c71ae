"""`emshield device ...`: device identity, sealed cores, mount."""

from __future__ import annotations

import click

from emshield.notbuilt import not_built_command


@click.group(name="device")
def device_group() -> None:
    """Device side: identity and key providers, sealed cores, mount in memory."""


for _name, _help, _issue in [
    ("init", "Create a device UUID and X25519 key pair in a key provider (file, keyring, tpm).", 6),
    ("mount", "Unseal a core into memory only and run a command while it is mounted.", 6),
    ("install", "Verify a bundle offline and accept its sealed core.", 8),
    ("run", "Mount the installed core, merge it with the backbone and answer a prompt.", 8),
]:
    device_group.add_command(not_built_command(_name, _issue, _help))
