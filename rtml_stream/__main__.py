"""``python -m rtml_stream``: the sidecar as a process (the same options as ``rtml stream``).

Settings come from the environment (``RTML_*``, docs/stream.md); the command line names the
source and markets, e.g. ``python -m rtml_stream --exchange kraken --symbols BTC-USD,ETH-USD``.
"""

from __future__ import annotations

import sys

from rtml_cli.main import _Group
from rtml_cli.stream import stream


def main(argv: list[str] | None = None) -> None:
    group = _Group(commands={"stream": stream})  # rtml's error handling: `error: ...`, exit status 2
    group.main(["stream", *(sys.argv[1:] if argv is None else argv)], prog_name="python -m rtml_stream")


if __name__ == "__main__":
    main()
