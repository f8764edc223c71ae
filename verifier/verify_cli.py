"""`emshield-verify`: which issuance did a suspect model come from?"""

from __future__ import annotations

import click

from emshield.notbuilt import NOT_BUILT_EXIT


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path())
@click.option("--log", "log_url", metavar="URL", help="Base URL of the transparency log.")
@click.option("--backbone", type=click.Path(), help="Public backbone folder (for merged models).")
@click.option("--bundle", "--offline", "bundle", type=click.Path(), help="Verify offline against a bundle file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def main(model: str, log_url: str | None, backbone: str | None, bundle: str | None, as_json: bool) -> None:
    """Extract the watermark and fingerprint from MODEL, find the matching issuance in the
    public log, verify its signature, inclusion proof and checkpoint, and print a verdict.

    Not built yet (issue #8).
    """
    click.echo("emshield-verify: not built yet (issue #8).", err=True)
    raise SystemExit(NOT_BUILT_EXIT)
