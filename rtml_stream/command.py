"""``rtml stream`` and ``python -m rtml_stream``: the streaming sidecar (live exchange or file replay) into
the online store, or with ``--source nats://...`` the feature service of the broker layout (docs/broker.md)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import click

from rtml_core.errors import InputError
from rtml_core.logs import configure_logging
from rtml_core.settings import Settings
from rtml_core.symbols import normalize_symbol
from rtml_core.timeframes import timeframe_seconds

EXCHANGES = ("kraken", "binance", "coinbase", "replay")


def replay_format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    name = path.name.lower()
    if name.endswith(".json"):
        return "kraken-rest"
    return "ticks-csv"


def build_source(exchange: str, symbols: list[str], *, ws_url: str | None, rest_url: str | None,
                 replay: Path | None, speed: str, fmt: str | None, replay_exchange: str, book: bool, metrics):
    """The source a command line names, and the markets (exchange, symbol) it will produce."""
    if exchange == "replay":
        from rtml_stream.sources.replay import ReplaySource

        if replay is None:
            raise click.UsageError("--exchange replay needs --replay FILE")
        fmt = replay_format(replay, fmt)
        file_exchange = {"kraken-rest": "kraken", "binance-trades": "binance"}.get(fmt, replay_exchange)
        source = ReplaySource.from_file(replay, fmt, symbol=symbols[0], exchange=file_exchange, speed=speed,
                                        metrics=metrics)
        return source, [(file_exchange, symbols[0])]
    options: dict = {"metrics": metrics}
    if ws_url:
        options["url"] = ws_url
    if rest_url:
        options["rest_url"] = rest_url
    if exchange == "kraken":
        from rtml_stream.sources.kraken import KrakenSource

        source = KrakenSource(symbols, channels=("trade", "book") if book else ("trade",), **options)
    elif exchange == "binance":
        from rtml_stream.sources.binance import BinanceSource

        source = BinanceSource(symbols, channels=("trade", "depth") if book else ("trade",), **options)
    else:
        from rtml_stream.sources.coinbase import CoinbaseSource

        source = CoinbaseSource(symbols, channels=("market_trades", "level2") if book else ("market_trades",),
                                **options)
    return source, [(exchange, s) for s in symbols]


@click.command("stream")
@click.option("--exchange", type=click.Choice(EXCHANGES), required=True, help="Where trades come from.")
@click.option("--symbols", required=True, help="Comma-separated symbols, e.g. BTC-USD,ETH-USD (replay: the file's).")
@click.option("--timeframes", default=None, help="Comma-separated timeframes (default RTML_STREAM_TIMEFRAMES, 1m,5m).")
@click.option("--ws-url", default=None, help="WebSocket URL instead of the exchange's public one.")
@click.option("--rest-url", default=None, help="REST URL (trade gap backfill; Binance depth snapshots).")
@click.option("--replay", "replay", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Trades file to replay (ticks CSV/.csv.gz, Kraken REST JSON, Binance trades CSV).")
@click.option("--speed", default="max", show_default=True, help="Replay speed: max (or 0), 1 = real time, N = N x.")
@click.option("--format", "fmt", type=click.Choice(("ticks-csv", "kraken-rest", "binance-trades")), default=None,
              help="Replay file format (default from the file name: .json = kraken-rest, else ticks-csv).")
@click.option("--replay-exchange", default="replay", show_default=True,
              help="Exchange name the replayed ticks are stored under (ticks-csv files name none).")
@click.option("--no-book", is_flag=True, help="Trades only: no order-book channel.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--max-trades", type=int, default=None, help="Stop after this many trades.")
@click.option("--health-port", type=int, default=None,
              help="/metrics and /health port (default RTML_STREAM_METRICS_PORT; 0 = any free port, -1 = off).")
@click.option("--no-checkpoint", is_flag=True, help="Neither restore nor write checkpoints.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.option("--log-format", type=click.Choice(("auto", "json", "console")), default="auto", show_default=True)
@click.option("--source", "broker", default=None, help="nats://host:4222: consume the markets from JetStream "
              "(the broker layout, docs/broker.md) instead of the exchange.")
@click.option("--from-start", is_flag=True, help="With --source: rebuild from the start of the stream (cold).")
def stream(exchange, symbols, timeframes, ws_url, rest_url, replay, speed, fmt, replay_exchange, no_book, duration,
           max_trades, health_port, no_checkpoint, as_json, log_format, broker, from_start) -> None:
    """Stream trades into candles, features and the online store until stopped (SIGTERM/SIGINT)."""
    from rtml_stream.app import build_sidecar, parse_list
    from rtml_stream.metrics import StreamMetrics
    from rtml_stream.sources.replay import parse_speed

    settings = Settings()
    configure_logging(settings.log_level, json_logs=None if log_format == "auto" else log_format == "json")
    names = [normalize_symbol(s) for s in parse_list(symbols)]
    if not names:
        raise click.UsageError("--symbols names no symbol")
    tfs = parse_list(timeframes) if timeframes else parse_list(settings.stream_timeframes)
    for tf in tfs:
        timeframe_seconds(tf)
    try:
        parse_speed(speed)
    except ValueError as error:
        raise InputError(str(error)) from None
    if broker or from_start:
        return stream_from_broker(settings, broker, exchange, names, tfs, health_port=health_port, duration=duration,
                                  from_start=from_start, as_json=as_json)
    metrics = StreamMetrics()
    source, markets = build_source(exchange, names, ws_url=ws_url, rest_url=rest_url, replay=replay, speed=speed,
                                   fmt=fmt, replay_exchange=replay_exchange, book=not no_book, metrics=metrics)
    sidecar = build_sidecar(settings, source, markets, timeframes=tfs, metrics=metrics, duration_s=duration,
                            max_trades=max_trades, health_port=health_port, checkpoints=not no_checkpoint)
    summary = asyncio.run(run_until_signalled(sidecar))
    sidecar.close()
    document = {
        "trades": summary.trades, "candles": summary.candles, "feature_rows": summary.rows,
        "late_trades": summary.late, "duplicates_skipped": summary.duplicates,
        "processing_errors": summary.processing_errors, "malformed_events": summary.malformed,
        "gaps_not_filled": summary.gaps, "started": summary.started,
        "online_pending": summary.online.get("pending"), "online_written": summary.online.get("written"),
        "offline_pending": summary.offline.get("pending") if summary.offline else None,
        "checkpoints": summary.checkpoint_files, "seconds": summary.seconds,
    }
    if as_json:
        click.echo(json.dumps(document))
    else:
        click.echo(f"{summary.trades} trades -> {summary.candles} candles, {summary.rows} feature rows "
                   f"({summary.late} late, {summary.duplicates} already processed) in {summary.seconds:.1f} s")
        click.echo(f"online written {summary.online.get('written')}, pending {summary.online.get('pending')}")
        if summary.checkpoint_files:
            click.echo(f"checkpoint: {', '.join(summary.checkpoint_files)}")
    if summary.online.get("pending") or (summary.offline and summary.offline.get("pending")):
        sys.exit(3)  # stopped with rows not written (a store stayed down): not a clean run


def echo_summary(summary: dict, as_json: bool, text: str) -> None:
    """A run's summary: one JSON object with ``--json``, else ``text``."""
    click.echo(json.dumps(summary) if as_json else text)


async def run_until_signalled(sidecar):
    """Run the sidecar; SIGTERM and SIGINT stop it cleanly (flush, checkpoint, exit 0)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests calling the command in-process)
            pass
    try:
        return await sidecar.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass


def stream_from_broker(settings: Settings, url: str | None, exchange: str, symbols: list[str],
                       timeframes: list[str], *, health_port: int | None, duration: float | None, from_start: bool,
                       as_json: bool) -> None:
    """The broker layout's feature service: consume the markets from JetStream until stopped."""
    from rtml_stream.broker.build import build_feature_service
    from rtml_stream.broker.jetstream import BrokerConfig

    if exchange == "replay":
        raise click.UsageError("--source reads the markets of a live exchange: --exchange kraken|binance|coinbase")
    config = BrokerConfig.from_settings(settings, url)
    service = build_feature_service(settings, config, [(exchange, s) for s in symbols], timeframes=timeframes,
                                    health_port=health_port, from_start=from_start, duration_s=duration)
    summary = asyncio.run(run_until_signalled(service))
    service.close()
    echo_summary(summary, as_json, f"{summary['trades']} trades from {config.stream} -> {summary['candles']} candles, "
                 f"{summary['feature_rows']} feature rows; {summary['acknowledged']} messages acknowledged "
                 f"in {summary['seconds']:.1f} s")
    if summary["online_pending"] or summary["offline_pending"]:
        sys.exit(3)  # stopped with rows not written (a store stayed down): not a clean run
