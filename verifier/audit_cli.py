"""`emshield-audit`: check that a transparency log stays append-only and consistent."""

from __future__ import annotations

import click

from emshield.notbuilt import NOT_BUILT_EXIT


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log", "log_url", metavar="URL", help="Base URL of the transparency log.")
@click.option("--key", metavar="VERIFIER_KEY", help="The log's verifier key (C2SP signed-note format).")
@click.option("--state", type=click.Path(), help="State file holding the last verified checkpoint.")
@click.option("--replay", is_flag=True, help="Download every entry and recompute the tree.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def main(log_url: str | None, key: str | None, state: str | None, replay: bool, as_json: bool) -> None:
    """Fetch the log's latest checkpoint, verify its signature and its consistency with the
    last checkpoint this auditor verified, and report forks, rollbacks and rewritten entries.

    Not built yet (issue #7).
    """
    click.echo("emshield-audit: not built yet (issue #7).", err=True)
    raise SystemExit(NOT_BUILT_EXIT)
