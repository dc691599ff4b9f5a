"""``rtml ingest``: an exchange's trades and books into NATS JetStream (the broker layout, docs/broker.md)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import click

from rtml_core.settings import Settings
from rtml_core.symbols import normalize_symbol


def running(process, **options):
    """``process`` with ``run(stop)`` taking these options, for ``rtml_stream.command.run_until_signalled``."""
    return SimpleNamespace(run=lambda stop: process.run(stop, **options))


@click.command("ingest")
@click.option("--exchange", type=click.Choice(("kraken", "binance", "coinbase")), required=True)
@click.option("--symbols", required=True, help="Comma-separated symbols, e.g. BTC-USD,ETH-USD.")
@click.option("--to", "to", default=None, help="NATS URL, e.g. nats://127.0.0.1:4222 (default RTML_BROKER_URL).")
@click.option("--ws-url", default=None, help="WebSocket URL instead of the exchange's public one.")
@click.option("--rest-url", default=None, help="REST URL (Kraken gap backfill, Binance depth snapshots).")
@click.option("--no-book", is_flag=True, help="Trades only: no order-book channel.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--max-trades", type=int, default=None, help="Stop after this many trades.")
@click.option("--health-port", type=int, default=None,
              help="/metrics and /health port (default RTML_BROKER_INGEST_METRICS_PORT; 0 = any free port, -1 = off).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.option("--log-format", type=click.Choice(("auto", "json", "console")), default="auto", show_default=True)
def ingest(exchange, symbols, to, ws_url, rest_url, no_book, duration, max_trades, health_port, as_json,
           log_format) -> None:
    """Publish normalized trades and book updates to JetStream until stopped (SIGTERM/SIGINT)."""
    from rtml_core.logs import configure_logging
    from rtml_stream.app import parse_list
    from rtml_stream.broker.build import build_ingestor
    from rtml_stream.broker.jetstream import BrokerConfig
    from rtml_stream.command import build_source, echo_summary, run_until_signalled
    from rtml_stream.metrics import StreamMetrics

    settings = Settings()
    configure_logging(settings.log_level, json_logs=None if log_format == "auto" else log_format == "json")
    names = [normalize_symbol(s) for s in parse_list(symbols)]
    if not names:
        raise click.UsageError("--symbols names no symbol")
    config = BrokerConfig.from_settings(settings, to)
    source, _markets = build_source(exchange, names, ws_url=ws_url, rest_url=rest_url, replay=None, speed="max",
                                    fmt=None, replay_exchange="replay", book=not no_book, metrics=StreamMetrics())
    ingestor = build_ingestor(settings, config, source, health_port=health_port)
    summary = asyncio.run(run_until_signalled(running(ingestor, duration_s=duration, max_trades=max_trades)))
    echo_summary(summary, as_json, f"{summary['trades']} trades, {summary['book_updates']} book updates -> "
                 f"{config.stream}: {summary['published']} messages published, {summary['buffered']} still "
                 f"buffered, {summary['dropped']} dropped, in {summary['seconds']:.1f} s")
    if summary["buffered"]:
        raise SystemExit(3)  # stopped with messages not published (NATS stayed down)
