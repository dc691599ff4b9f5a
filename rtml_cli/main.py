"""``rtml``: one group whose commands live in their own modules and load on first use."""

from __future__ import annotations

import importlib
import sys

import click

from rtml_cli.commands import COMMANDS
from rtml_core.errors import RtmlError


class _LazyGroup(click.Group):
    """Loads each command's module only when that command runs (or help lists it), and turns
    rtml's own errors into one clear line with exit status 2, never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module_name), attribute)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RtmlError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="rtml")
def cli() -> None:
    """rtml: real-time ML for crypto trading bots."""
