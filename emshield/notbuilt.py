"""Honest placeholders for lifecycle stages whose issue has not landed yet.

A command backed by one of these exits with status 3 and says which issue builds it,
instead of printing anything that could be mistaken for a result.
"""

from __future__ import annotations

import click

NOT_BUILT_EXIT = 3


def not_built_command(name: str, issue: int, help_text: str) -> click.Command:
    """A click command that reports its stage is not built yet and exits non-zero."""

    @click.command(
        name=name,
        help=f"{help_text}\n\nNot built yet (issue #{issue}).",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    @click.pass_context
    def _cmd(ctx: click.Context) -> None:
        click.echo(f"emshield: '{ctx.command_path}' is not built yet (issue #{issue}).", err=True)
        ctx.exit(NOT_BUILT_EXIT)

    return _cmd
