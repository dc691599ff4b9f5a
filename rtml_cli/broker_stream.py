"""``rtml stream --source nats://...``: the feature service of the broker layout (docs/broker.md)."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from rtml_core.settings import Settings


def stream_from_broker(settings: Settings, url: str | None, exchange: str, symbols: list[str],
                       timeframes: list[str], *, health_port: int | None, duration: float | None, from_start: bool,
                       as_json: bool) -> None:
    from rtml_cli.stream import run_until_signalled
    from rtml_stream.broker.build import build_feature_service
    from rtml_stream.broker.jetstream import BrokerConfig

    if exchange == "replay":
        raise click.UsageError("--source reads the markets of a live exchange: --exchange kraken|binance|coinbase")
    config = BrokerConfig.from_settings(settings, url)
    service = build_feature_service(settings, config, [(exchange, s) for s in symbols], timeframes=timeframes,
                                    health_port=health_port, from_start=from_start, duration_s=duration)
    summary = asyncio.run(run_until_signalled(service))
    service.close()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"{summary['trades']} trades from {config.stream} -> {summary['candles']} candles, "
                   f"{summary['feature_rows']} feature rows; {summary['acknowledged']} messages acknowledged "
                   f"in {summary['seconds']:.1f} s")
    if summary["online_pending"] or summary["offline_pending"]:
        sys.exit(3)  # stopped with rows not written (a store stayed down): not a clean run
