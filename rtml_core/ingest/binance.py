"""Binance public-data dumps (data.binance.vision), read row by row.

- trades: ``id,price,qty,quote_qty,time,is_buyer_maker[,is_best_match]``, with or without
  a header; ``is_buyer_maker`` true means the taker sold.
- klines: ``open_time,open,high,low,close,volume,close_time,quote_volume,count,
  taker_buy_base_volume,taker_buy_quote_volume,ignore``, with or without a header.

Times are milliseconds, or microseconds in spot dumps from 2025 on: told apart by size.
The symbol comes from the argument or the file name (``BTCUSDT-trades-2025-01-01.csv``).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Context, Decimal
from pathlib import Path

from rtml_core.errors import InputError
from rtml_core.ingest.formats import (
    CsvRows,
    canonical_timeframe,
    checked_symbol,
    epoch_to_ns,
    parse_decimal,
)
from rtml_core.schemas import Candle, Trade
from rtml_core.timeframes import timeframe_ns

_PRICES = ("open", "high", "low", "close")
EXCHANGE = "binance"
_TRUE = {
    "true": True,
    "True": True,
    "TRUE": True,
    "1": True,
    "false": False,
    "False": False,
    "FALSE": False,
    "0": False,
}
_VWAP = Context(prec=28)


def symbol_from_file_name(path: str | Path) -> str | None:
    """``BTCUSDT-trades-2025-01-01.csv`` -> ``BTCUSDT`` (None when the name has no dash)."""
    name = Path(path).name
    head, dash, _ = name.partition("-")
    return head if dash and head else None


def _symbol(path: str | Path, symbol: str | None) -> str:
    raw = symbol or symbol_from_file_name(path)
    if not raw:
        raise InputError(
            "no symbol: pass one (e.g. --symbol BTC-USDT) or keep Binance's file name",
            source=str(path),
        )
    return checked_symbol(raw, str(path))


def _rows(path: str | Path, columns: int, header_first: str) -> Iterator[tuple[int, list[str]]]:
    """(line, cells) of each data row, skipping a header and checking the column count."""
    source = str(path)
    with CsvRows(path) as reader:
        for cells in reader:
            line = reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if line == 1 and cells[0].strip().lower() == header_first:
                continue
            if len(cells) < columns:
                raise InputError(
                    f"expected {columns} columns, found {len(cells)}", source=source, line=line
                )
            yield line, cells


def read_binance_trades(path: str | Path, *, symbol: str | None = None) -> Iterator[Trade]:
    """Trades from a Binance ``trades`` dump (``.csv`` or ``.csv.gz``)."""
    source = str(path)
    canonical = _symbol(path, symbol)
    for line, cells in _rows(path, 6, "id"):
        try:
            trade_id = int(cells[0])
            time_ns = epoch_to_ns(int(cells[4]))
        except ValueError:
            raise InputError(
                f"id {cells[0]!r} or time {cells[4]!r} is not an integer", source=source, line=line
            ) from None
        maker = _TRUE.get(cells[5].strip())
        if maker is None:
            raise InputError(
                f"is_buyer_maker {cells[5]!r} is not true/false", source=source, line=line
            )
        yield Trade(
            EXCHANGE,
            canonical,
            trade_id,
            time_ns,
            parse_decimal(cells[1], "price", source, line, positive=True),
            parse_decimal(cells[2], "qty", source, line),
            "sell" if maker else "buy",
        )


def read_binance_klines(
    path: str | Path, *, symbol: str | None = None, timeframe: str | None = None
) -> Iterator[Candle]:
    """Candles from a Binance ``klines`` dump; the interval from open/close times unless given.

    vwap is ``quote_volume / volume`` (28 significant digits), None for zero volume.
    """
    source = str(path)
    canonical = _symbol(path, symbol)
    tf_ns = timeframe_ns(timeframe) if timeframe else None
    for line, cells in _rows(path, 11, "open_time"):
        if timeframe is None:
            timeframe = _kline_timeframe(cells, source, line)
            tf_ns = timeframe_ns(timeframe)
        yield parse_kline(cells, canonical, timeframe, tf_ns, source, line)


def _kline_timeframe(cells, source: str, line: int | None) -> str:
    """The interval of a kline row: close_time is the last unit (ms or µs) of the interval."""
    try:
        open_raw, close_raw = int(cells[0]), int(cells[6])
    except (TypeError, ValueError):
        raise InputError(
            "open_time or close_time is not an integer", source=source, line=line
        ) from None
    span_ns = epoch_to_ns(close_raw) - epoch_to_ns(open_raw)
    unit_ns = 1_000 if open_raw >= 10**14 else 1_000_000
    seconds, rest = divmod(span_ns + unit_ns, 1_000_000_000)
    if rest or seconds <= 0:
        raise InputError(
            f"close_time {close_raw} does not end a whole-second interval", source=source, line=line
        )
    return canonical_timeframe(seconds)


def parse_kline(
    cells, symbol: str, timeframe: str, tf_ns: int, source: str, line: int | None
) -> Candle:
    """One kline row (dump cells or a REST array) -> Candle; vwap = quote volume / volume."""
    try:
        start = epoch_to_ns(int(cells[0]))
        count = int(cells[8])
    except (TypeError, ValueError):
        raise InputError("open_time or count is not an integer", source=source, line=line) from None
    if start % tf_ns:
        raise InputError(
            f"open_time {cells[0]} is not on a {timeframe} boundary", source=source, line=line
        )
    o, h, low, c, volume, quote = (
        parse_decimal(str(cells[i]), name, source, line, positive=name in _PRICES)
        for i, name in (
            (1, "open"),
            (2, "high"),
            (3, "low"),
            (4, "close"),
            (5, "volume"),
            (7, "quote_volume"),
        )
    )
    vwap = _divide(quote, volume) if volume else None
    return Candle(EXCHANGE, symbol, timeframe, start, o, h, low, c, volume, vwap, count)


def _divide(a: Decimal, b: Decimal) -> Decimal:
    return _VWAP.divide(a, b)


def parse_agg_trade(row: object, symbol: str, source: str) -> Trade:
    """One ``/api/v3/aggTrades`` object ``{"a": id, "p": price, "q": qty, "f": first id, "l": last id,
    "T": time ms, "m": buyer is maker, "M": best match}`` -> Trade (``trade_id`` = the aggregate id)."""
    if not isinstance(row, dict) or not {"a", "p", "q", "T", "m"} <= row.keys():
        raise InputError(f"aggregate trade {str(row)[:120]} lacks a, p, q, T or m", source=source)
    trade_id, time_ms, maker = row["a"], row["T"], row["m"]
    if not isinstance(trade_id, int) or not isinstance(time_ms, int) or not isinstance(maker, bool):
        raise InputError(f"aggregate trade {trade_id!r}: a and T must be integers, m a boolean", source=source)
    return Trade(
        EXCHANGE,
        symbol,
        trade_id,
        time_ms * 1_000_000,
        parse_decimal(str(row["p"]), "price", source, None, positive=True),
        parse_decimal(str(row["q"]), "qty", source, None),
        "sell" if maker else "buy",
    )
