"""``python -m rtml_stream``: the sidecar as a process (the same options as ``rtml stream``).

Settings come from the environment (``RTML_*``, docs/stream.md); the command line names the
source and markets, e.g. ``python -m rtml_stream --exchange kraken --symbols BTC-USD,ETH-USD``.
"""

from __future__ import annotations

import sys

import click

from rtml_core.errors import RtmlError


def main(argv: list[str] | None = None) -> None:
    from rtml_stream.command import stream

    try:
        stream.main(sys.argv[1:] if argv is None else argv, prog_name="python -m rtml_stream",
                    standalone_mode=False)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.Abort:
        sys.exit(1)
    except RtmlError as error:  # rtml's own errors: one clear line, exit status 2 (like `rtml`)
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
