"""`emshield issuer ...` and `emshield issue`: the issuance pipeline's command line."""

from __future__ import annotations

import click

from emshield.notbuilt import not_built_command


@click.group(name="issuer")
def issuer_group() -> None:
    """Issuer keys and registration of the issuer in the transparency log."""


issuer_group.add_command(not_built_command("init", 8, "Create the issuer's Ed25519 signing key and marking key."))
issuer_group.add_command(
    not_built_command("register", 8, "Publish the issuer key and public marking parameters to the log.")
)

issue_cmd = not_built_command(
    "issue", 8, "Issue a marked, sealed core to one or many devices: log entry, inclusion proof, bundle."
)
