"""`emshield-log`: create and serve the transparency log."""

from __future__ import annotations

import click

from emshield.notbuilt import not_built_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run the EMShield transparency log (RFC 9162 Merkle log, C2SP checkpoints)."""


main.add_command(not_built_command("init", 3, "Create the log store and the log's Ed25519 key; print the verifier key."))
main.add_command(not_built_command("serve", 3, "Serve the log over HTTP (production WSGI server)."))
