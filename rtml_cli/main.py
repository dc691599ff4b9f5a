"""``rtml``: one group; each command group lives in its own module and is added here."""

from __future__ import annotations

import sys

import click

from rtml_core.errors import RtmlError


class _Group(click.Group):
    """Turns rtml's own errors into one clear line and exit status 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RtmlError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="rtml")
def cli() -> None:
    """rtml: real-time ML for crypto trading bots."""


def _register() -> None:
    from rtml_cli import commands

    for command in commands.ALL:
        cli.add_command(command)


_register()
