"""``rtml candles``, ``rtml import`` and ``rtml backfill``: market history in."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import click

from rtml_core.candles import build_candles, write_candles_csv
from rtml_core.errors import InputError
from rtml_core.ingest import FORMATS, PRESETS, format_kind, read_candles, read_trades
from rtml_core.ingest.formats import TimeParser, parse_mapping
from rtml_core.schemas import Trade
from rtml_core.timeframes import timeframe_seconds

BATCH_SIZE = 50_000
UNKNOWN_SYMBOL = "UNKNOWN-UNKNOWN"
"""Symbol of trades from a tick CSV that names none (the candle CSV does not show it)."""

_format_help = f"Input format: {', '.join(FORMATS)}."
_map_help = (
    "Column mapping for CSV files: time=Date,open=BTC.open,... (fields: time, price, size, "
    "trade_id, side, symbol; open, high, low, close, volume, vwap, trade_count)."
)
_preset_help = f"Column preset for CSV files: {', '.join(PRESETS)} (found by itself when it can)."


def _input_options(function):
    for option in reversed(
        [
            click.option("--format", "fmt", required=True, help=_format_help),
            click.option(
                "--exchange", default=None, help="Exchange name kept beside the symbol (CSV files)."
            ),
            click.option(
                "--symbol", default=None, help="Symbol, e.g. BTC-USD (when the file does not say)."
            ),
            click.option("--map", "mapping", default=None, help=_map_help),
            click.option("--preset", default=None, help=_preset_help),
        ]
    ):
        function = option(function)
    return function


def _single_symbol(trades: Iterable[Trade], source: str) -> Iterator[Trade]:
    """Pass trades through, refusing a file that mixes symbols (candles are per symbol)."""
    iterator = iter(trades)
    first = next(iterator, None)
    if first is None:
        return
    yield first
    symbol = first.symbol
    for trade in iterator:
        if trade.symbol != symbol:
            raise InputError(
                f"the file mixes symbols ({symbol}, {trade.symbol}): pass --symbol or split it",
                source=source,
            )
        yield trade


@click.command("candles")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@_input_options
@click.option(
    "--timeframe", default="1m", show_default=True, help="Window: 30s, 1m, 5m, 15m, 1h, ..."
)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV to write: time,open,high,low,close,volume,vwap,trade_count.",
)
@click.option(
    "--fill-gaps", is_flag=True, help="Fill empty intervals with the previous close, zero volume."
)
def candles(
    input_path: Path,
    fmt: str,
    exchange: str | None,
    symbol: str | None,
    mapping: str | None,
    preset: str | None,
    timeframe: str,
    output: Path,
    fill_gaps: bool,
) -> None:
    """Build exact candles from a trade file and write them as CSV (atomically)."""
    source = str(input_path)
    if format_kind(fmt, source) != "trades":
        raise InputError(
            f"format {fmt!r} holds candles; rtml candles needs trades "
            "(kraken-rest, binance-trades, ticks-csv)",
            source=source,
        )
    timeframe_seconds(timeframe)
    started = time.perf_counter()
    trades = read_trades(
        input_path,
        fmt,
        exchange=exchange,
        symbol=symbol,
        mapping=parse_mapping(mapping),
        preset=preset,
        default_symbol=UNKNOWN_SYMBOL,
    )
    rows = write_candles_csv(
        build_candles(_single_symbol(trades, source), timeframe, fill_gaps=fill_gaps), output
    )
    click.echo(
        f"wrote {rows} {timeframe} candles to {output} in {time.perf_counter() - started:.2f} s"
    )


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@click.command("import")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@_input_options
@click.option(
    "--timeframe", default=None, help="Candle files: the interval (read from the file when it can)."
)
@click.option(
    "--batch-size", default=BATCH_SIZE, show_default=True, help="Rows per store transaction."
)
def import_history(
    input_path: Path,
    fmt: str,
    exchange: str | None,
    symbol: str | None,
    mapping: str | None,
    preset: str | None,
    timeframe: str | None,
    batch_size: int,
) -> None:
    """Import trades or candles from a file into the offline store (idempotent upserts).

    Rows are written in batches, one transaction each; on bad input the command stops at
    the bad line, earlier batches stay stored (importing again changes nothing).
    """
    kind = format_kind(fmt, str(input_path))
    if timeframe is not None:
        timeframe_seconds(timeframe)
    options = dict(exchange=exchange, symbol=symbol, mapping=parse_mapping(mapping), preset=preset)
    if kind == "trades":
        rows = read_trades(input_path, fmt, **options)
    else:
        rows = read_candles(input_path, fmt, timeframe=timeframe, **options)
    started = time.perf_counter()
    counted = _Counted(rows)
    written = _store_batches(counted, kind, batch_size)
    seconds = time.perf_counter() - started
    click.echo(
        f"imported {counted.n} {kind} from {input_path}: {written} new or changed, "
        f"in {seconds:.2f} s "
        f"({counted.n / seconds if seconds else 0:,.0f} rows/s)"
    )


class _Counted:
    """An iterable that counts what passed through it."""

    def __init__(self, items: Iterable):
        self._items = items
        self.n = 0

    def __iter__(self) -> Iterator:
        for item in self._items:
            self.n += 1
            yield item


@click.group("backfill")
def backfill() -> None:
    """Fetch history from an exchange's public REST API into the offline store."""


def _time_ns(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    try:
        return TimeParser()(text)
    except ValueError:
        raise InputError(
            f"--{what} {text!r} is not a date-time (2025-11-10T17:00:00Z) or epoch number"
        ) from None


def _store_batches(items: Iterable, kind: str, batch_size: int = BATCH_SIZE) -> int:
    """Write trades or candles to the offline store of this process's Settings."""
    from rtml_core.settings import Settings
    from rtml_core.stores.offline import open_offline_store

    store = open_offline_store(Settings().resolved_offline_url)
    written = 0
    try:
        write = store.write_trades if kind == "trades" else store.write_candles
        for batch in _batches(items, batch_size):
            written += write(batch)
    finally:
        store.close()
    return written


@backfill.command("kraken")
@click.option("--symbol", required=True, help="BTC-USD, or Kraken's pair name (XBTUSD).")
@click.option("--since", required=True, help="Start time: ISO 8601 UTC or epoch (s, ms, µs or ns).")
@click.option("--until", default=None, help="End time (default: now).")
@click.option("--base-url", default="https://api.kraken.com", show_default=True)
@click.option("--min-interval", default=1.0, show_default=True, help="Seconds between requests.")
def backfill_kraken(
    symbol: str, since: str, until: str | None, base_url: str, min_interval: float
) -> None:
    """Trades from Kraken's /0/public/Trades, following the ``last`` cursor."""
    from rtml_core.ingest.backfill import KrakenRestClient

    since_ns = _time_ns(since, "since")
    until_ns = _time_ns(until, "until")
    with KrakenRestClient(base_url, min_interval_s=min_interval) as client:
        written = _store_batches(client.trades(symbol, since_ns, until_ns=until_ns), "trades")
        click.echo(f"stored {written} Kraken trades for {symbol} in {client.requests} requests")


@backfill.command("binance")
@click.option("--symbol", required=True, help="BTC-USDT, or Binance's BTCUSDT.")
@click.option("--timeframe", "interval", default="1m", show_default=True, help="Kline interval.")
@click.option("--start", required=True, help="Start time: ISO 8601 UTC or epoch.")
@click.option("--end", default=None, help="End time (default: now).")
@click.option("--base-url", default="https://api.binance.com", show_default=True)
@click.option("--min-interval", default=0.2, show_default=True, help="Seconds between requests.")
def backfill_binance(
    symbol: str, interval: str, start: str, end: str | None, base_url: str, min_interval: float
) -> None:
    """Klines from Binance's /api/v3/klines, 1,000 per request."""
    from rtml_core.ingest.backfill import BinanceRestClient

    timeframe_seconds(interval)
    start_ms = _time_ns(start, "start") // 1_000_000
    end_ns = _time_ns(end, "end")
    end_ms = (
        end_ns if end_ns is not None else int(datetime.now(UTC).timestamp() * 1e9)
    ) // 1_000_000
    with BinanceRestClient(base_url, min_interval_s=min_interval) as client:
        written = _store_batches(client.klines(symbol, interval, start_ms, end_ms), "candles")
        click.echo(
            f"stored {written} Binance {interval} candles for {symbol} "
            f"in {client.requests} requests"
        )
