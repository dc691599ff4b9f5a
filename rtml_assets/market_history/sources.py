"""A market's history for a partition window: its source file through rtml_core's importers, or
its exchange's REST API day by day (``rest_days``), and stored frames back into structs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from decimal import Decimal
from functools import lru_cache

import msgspec
import pandas as pd

from rtml_assets.market_history.markets import MarketSource
from rtml_assets.market_history.partitions import MarketWindow, day_start_ns
from rtml_core import ingest
from rtml_core.errors import InputError
from rtml_core.schemas import Candle, Trade


def _read_trades(market: MarketSource) -> Iterator[Trade]:
    return ingest.read_trades(market.source, market.format, exchange=market.exchange, symbol=market.symbol,
                              mapping=market.mapping, preset=market.preset)


def _read_candles(market: MarketSource) -> Iterator[Candle]:
    return ingest.read_candles(market.source, market.format, timeframe=market.timeframe,
                               exchange=market.exchange, symbol=market.symbol, mapping=market.mapping,
                               preset=market.preset)


def as_market(items: Iterable, market: MarketSource) -> Iterator:
    """The importer's records under the market's own exchange and symbol names."""
    for item in items:
        if item.exchange != market.exchange or item.symbol != market.symbol:
            item = msgspec.structs.replace(item, exchange=market.exchange, symbol=market.symbol)
        yield item


@lru_cache(maxsize=1)
def _all_trades(market: MarketSource, mtime_ns: int) -> tuple[Trade, ...]:
    """A source file parsed once per process while it is unchanged (only the latest is kept)."""
    return tuple(as_market(_read_trades(market), market))


@lru_cache(maxsize=1)
def _all_candles(market: MarketSource, mtime_ns: int) -> tuple[Candle, ...]:
    candles = tuple(as_market(_read_candles(market), market))
    wrong = next((c for c in candles if c.timeframe != market.timeframe), None)
    if wrong is not None:
        raise InputError(f"the file holds {wrong.timeframe} candles, the market is {market.timeframe}",
                         source=str(market.source))
    return candles


def _mtime(market: MarketSource) -> int:
    try:
        return market.source.stat().st_mtime_ns
    except OSError as error:
        raise InputError(f"cannot read the market's source file: {error.strerror}", source=str(market.source)) from None


def trades_in_window(market: MarketSource, start_ns: int, end_ns: int) -> list[Trade]:
    return [t for t in _all_trades(market, _mtime(market)) if start_ns <= t.time_ns < end_ns]


def candles_in_window(market: MarketSource, start_ns: int, end_ns: int) -> list[Candle]:
    return [c for c in _all_candles(market, _mtime(market)) if start_ns <= c.start_ns < end_ns]


def _exact(value: object) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))  # shortest round-trip text: the decimal the float came from
    return Decimal(str(value))


def frame_to_trades(frame: pd.DataFrame, market: MarketSource) -> Iterator[Trade]:
    """Stored trades (``time, trade_id, price, size, side``) back into Trade structs."""
    times = frame["time"].dt.as_unit("ns").astype("int64")
    for time_ns, trade_id, price, size, side in zip(
        times.tolist(), frame["trade_id"].tolist(), frame["price"].tolist(), frame["size"].tolist(),
        frame["side"].tolist(), strict=True,
    ):
        yield Trade(market.exchange, market.symbol, int(trade_id), time_ns, _exact(price), _exact(size), side)


def trades_frame(trades: list[Trade]) -> pd.DataFrame:
    """Trades as the store's frame shape (time, trade_id, price, size, side), for summaries."""
    return pd.DataFrame({
        "time": pd.to_datetime([t.time_ns for t in trades], unit="ns", utc=True).as_unit("ns"),
        "trade_id": pd.array([t.trade_id for t in trades], dtype="int64"),
        "price": [t.price for t in trades],
        "size": [t.size for t in trades],
        "side": [t.side for t in trades],
    })


def rest_days(window: MarketWindow) -> Iterator[tuple[dt.date, int, int]]:
    """(day, start_ns, end_ns) of each day of ``window`` inside the market's own days."""
    market = window.market
    first = max(window.first_day, market.first_day)
    last = min(window.last_day, market.last_day) if market.last_day else window.last_day
    day = first
    while day <= last:
        yield day, day_start_ns(day), day_start_ns(day + dt.timedelta(days=1))
        day += dt.timedelta(days=1)


def frame_to_candles(frame: pd.DataFrame, exchange: str, symbol: str, timeframe: str) -> list[Candle]:
    """Stored candles read with ``exact=True`` back into Candle structs."""
    times = frame["time"].dt.as_unit("ns").astype("int64").tolist()
    return [
        Candle(exchange, symbol, timeframe, start, _exact(o), _exact(h), _exact(lo),
               _exact(c), _exact(v), None if vw is None or pd.isna(vw) else _exact(vw), int(n))
        for start, o, h, lo, c, v, vw, n in zip(
            times, frame["open"].tolist(), frame["high"].tolist(), frame["low"].tolist(),
            frame["close"].tolist(), frame["volume"].tolist(), frame["vwap"].tolist(),
            frame["trade_count"].tolist(), strict=True)
    ]


def with_logged_candles(logged: Iterable[Candle], rebuilt: Iterable[Candle]) -> tuple[list[Candle], int]:
    """A streamed market's candles: the ones the sidecar logged, and the rebuilt ones for the
    intervals it did not log (before it started, while it was down). (candles, how many logged)."""
    by_start = {c.start_ns: c for c in rebuilt}
    kept = {c.start_ns: c for c in logged}
    by_start.update(kept)
    return [by_start[start] for start in sorted(by_start)], len(kept)
