"""Every command of ``rtml``: name -> "module:attribute", imported only when the command runs.

Each module owns its commands; loading lazily keeps ``rtml --help`` and light commands from
paying for dagster, pandas or xgboost imports they do not use.
"""

from __future__ import annotations

COMMANDS: dict[str, str] = {
    "candles": "rtml_cli.candles:candles",
    "import": "rtml_cli.candles:import_history",
    "backfill": "rtml_cli.candles:backfill",
    "markets": "rtml_cli.markets:markets",
    "history": "rtml_cli.history:history",
    "features": "rtml_cli.features:features",
    "online": "rtml_cli.online:online",
    "stream": "rtml_stream.command:stream",
    "ingest": "rtml_cli.ingest:ingest",
    "archive": "rtml_cli.archive:archive",
    "models": "rtml_cli.models:models",
    "train": "rtml_cli.train:train",
    "serve": "rtml_cli.serve:serve",
    "demo": "rtml_cli.demo:demo",
    "up": "rtml_cli.up:up",
}
