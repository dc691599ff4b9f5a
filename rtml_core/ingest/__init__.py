"""Importers (files -> Trade or Candle iterators) and REST backfill clients.

``read_trades(path, fmt, ...)`` and ``read_candles(path, fmt, ...)`` pick the importer by
format name; every importer streams, raises ``InputError(problem, source=, line=)`` on bad
input and yields symbols normalized to BASE-QUOTE with the exchange beside them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rtml_core.errors import InputError
from rtml_core.ingest.binance import read_binance_klines, read_binance_trades
from rtml_core.ingest.csv_files import PRESETS, read_candle_csv, read_tick_csv
from rtml_core.ingest.kraken import read_kraken_ohlc, read_kraken_trades
from rtml_core.schemas import Candle, Trade

TRADE_FORMATS = ("kraken-rest", "binance-trades", "ticks-csv")
CANDLE_FORMATS = ("kraken-ohlc", "binance-klines", "candles-csv")
FORMATS = TRADE_FORMATS + CANDLE_FORMATS

__all__ = [
    "CANDLE_FORMATS",
    "FORMATS",
    "PRESETS",
    "TRADE_FORMATS",
    "format_kind",
    "read_binance_klines",
    "read_binance_trades",
    "read_candle_csv",
    "read_candles",
    "read_kraken_ohlc",
    "read_kraken_trades",
    "read_tick_csv",
    "read_trades",
]


def format_kind(fmt: str, source: str | None = None) -> str:
    """``'trades'`` or ``'candles'`` for a format name; InputError for an unknown one."""
    if fmt in TRADE_FORMATS:
        return "trades"
    if fmt in CANDLE_FORMATS:
        return "candles"
    raise InputError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})", source=source)


def read_trades(
    path: str | Path,
    fmt: str,
    *,
    exchange: str | None = None,
    symbol: str | None = None,
    mapping: dict[str, str] | None = None,
    preset: str | None = None,
    default_symbol: str | None = None,
) -> Iterator[Trade]:
    """Trades from ``path`` in format ``fmt`` (one of ``TRADE_FORMATS``).

    ``default_symbol`` serves a tick CSV that has no symbol column when none is given.
    """
    if format_kind(fmt, str(path)) != "trades":
        raise InputError(f"format {fmt!r} holds candles, not trades", source=str(path))
    if fmt == "kraken-rest":
        return read_kraken_trades(path, symbol=symbol)
    if fmt == "binance-trades":
        return read_binance_trades(path, symbol=symbol)
    return read_tick_csv(
        path,
        exchange=exchange or "file",
        symbol=symbol,
        mapping=mapping,
        preset=preset,
        default_symbol=default_symbol,
    )


def read_candles(
    path: str | Path,
    fmt: str,
    *,
    timeframe: str | None = None,
    exchange: str | None = None,
    symbol: str | None = None,
    mapping: dict[str, str] | None = None,
    preset: str | None = None,
) -> Iterator[Candle]:
    """Candles from ``path`` in format ``fmt`` (one of ``CANDLE_FORMATS``)."""
    if format_kind(fmt, str(path)) != "candles":
        raise InputError(f"format {fmt!r} holds trades, not candles", source=str(path))
    if fmt == "kraken-ohlc":
        return read_kraken_ohlc(path, symbol=symbol, timeframe=timeframe)
    if fmt == "binance-klines":
        return read_binance_klines(path, symbol=symbol, timeframe=timeframe)
    if timeframe is None:
        raise InputError("candles-csv needs --timeframe (the file does not say)", source=str(path))
    return read_candle_csv(
        path,
        timeframe=timeframe,
        exchange=exchange or "file",
        symbol=symbol,
        mapping=mapping,
        preset=preset,
    )
