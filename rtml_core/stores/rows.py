"""Validation of what is written to the offline store: trades, candles and feature frames.

Every check names the row and what was wrong (``InputError``); a bad row stops the batch
before its transaction commits, so nothing stored is lost or half-written.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from rtml_core.errors import InputError
from rtml_core.schemas import Candle, Trade
from rtml_core.stores.offline_tables import to_decimal
from rtml_core.timeframes import timeframe_seconds

_INT64 = (-(2**63), 2**63 - 1)
_SIDES = frozenset({"buy", "sell", "unknown"})
_CANDLE_PRICES = ("open", "high", "low", "close")


def trade_rows(trades: Iterable[Trade], exact: Callable) -> Iterator[tuple]:
    """Validated ``(exchange, symbol, trade_id, time_ns, price, size, side)`` tuples."""
    for index, trade in enumerate(trades):
        try:
            price, size = to_decimal(trade.price), to_decimal(trade.size)
            if price <= 0:
                raise ValueError(f"price {price} is not positive")
            if size < 0:
                raise ValueError(f"size {size} is negative")
            if trade.side not in _SIDES:
                raise ValueError(f"side {trade.side!r} is not buy, sell or unknown")
            row = (
                name(trade.exchange, "exchange"),
                name(trade.symbol, "symbol"),
                int64(trade.trade_id, "trade_id"),
                int64(trade.time_ns, "time_ns"),
                exact(price),
                exact(size),
                trade.side,
            )
        except (TypeError, ValueError, AttributeError) as error:
            raise InputError(f"trade {index} of the batch ({describe(trade)}): {error}") from None
        yield row


def candle_rows(
    candles: Iterable[Candle], exact: Callable, only: tuple[str, str, str, int, int] | None = None
) -> Iterator[tuple]:
    """Validated candle tuples (key, then OHLC, volume, vwap, trade_count); ``only``: a replaced range."""
    for index, candle in enumerate(candles):
        try:
            prices = [to_decimal(getattr(candle, price)) for price in _CANDLE_PRICES]
            if min(prices) <= 0:
                raise ValueError(f"prices {[str(p) for p in prices]} must be positive")
            volume = to_decimal(candle.volume)
            if volume < 0:
                raise ValueError(f"volume {volume} is negative")
            vwap = None if candle.vwap is None else exact(to_decimal(candle.vwap))
            trade_count = int64(candle.trade_count, "trade_count")
            if trade_count < 0:
                raise ValueError(f"trade_count {trade_count} is negative")
            timeframe_seconds(candle.timeframe)
            key = (
                name(candle.exchange, "exchange"),
                name(candle.symbol, "symbol"),
                candle.timeframe,
                int64(candle.start_ns, "start_ns"),
            )
            if only is not None:
                if key[:3] != only[:3]:
                    raise ValueError(f"candle of {key[:3]} in a replace of {only[:3]}")
                if not only[3] <= key[3] < only[4]:
                    raise ValueError(f"start_ns {key[3]} is outside the replaced range [{only[3]}, {only[4]})")
            row = (*key, *(exact(p) for p in prices), exact(volume), vwap, trade_count)
        except (TypeError, ValueError, AttributeError, InputError) as error:
            raise InputError(f"candle {index} of the batch ({describe(candle)}): {error}") from None
        yield row


def name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} {value!r} must be a non-empty string")
    return value


def int64(value: object, what: str) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} {value!r} is not an integer") from None
    if not _INT64[0] <= number <= _INT64[1]:
        raise ValueError(f"{what} {number} does not fit in 64 bits")
    return number


def describe(item: object) -> str:
    keys = ("exchange", "symbol", "timeframe", "trade_id", "start_ns", "time_ns")
    return ", ".join(f"{k}={getattr(item, k)!r}" for k in keys if hasattr(item, k)) or repr(item)[:80]


def check_range(start_ns: int, end_ns: int) -> None:
    if not isinstance(start_ns, int) or not isinstance(end_ns, int) or start_ns >= end_ns:
        raise InputError(f"range [{start_ns}, {end_ns}) is empty or not integer nanoseconds")


def frame_times_ns(frame: pd.DataFrame) -> np.ndarray:
    """The ``time`` column of a feature frame as int64 ns: tz-aware datetimes or integer ns."""
    if "time" not in frame.columns:
        raise InputError("the frame has no 'time' column")
    time = frame["time"]
    if pd.api.types.is_integer_dtype(time.dtype):
        return time.to_numpy(dtype=np.int64)
    if not isinstance(time.dtype, pd.DatetimeTZDtype):
        raise InputError(f"'time' must be timezone-aware datetimes (UTC) or integer ns, not {time.dtype}")
    if time.isna().any():
        raise InputError(f"'time' is missing on row {int(np.flatnonzero(time.isna().to_numpy())[0])}")
    return pd.DatetimeIndex(time).as_unit("ns").asi8


def feature_matrix(
    frame: pd.DataFrame,
    names: list[str],
    exchange: str,
    symbol: str,
    timeframe: str,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a feature frame; return its times (int64 ns) and values (float64, rows x names)."""
    try:
        name(exchange, "exchange"), name(symbol, "symbol")
    except ValueError as error:
        raise InputError(str(error)) from None
    timeframe_seconds(timeframe)
    missing = [column for column in names if column not in frame.columns]
    if missing:
        raise InputError(f"the frame lacks feature columns {missing}")
    times = frame_times_ns(frame)
    if start_ns is not None and len(times):
        outside = np.flatnonzero((times < start_ns) | (times >= end_ns))
        if len(outside):
            raise InputError(
                f"row {int(outside[0])}: time {int(times[outside[0]])} is outside the replaced range [{start_ns}, {end_ns})"
            )
    values = np.empty((len(frame), len(names)), dtype=np.float64)
    for position, column in enumerate(names):
        try:
            values[:, position] = pd.to_numeric(frame[column], errors="raise").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
        except (TypeError, ValueError) as error:
            raise InputError(f"feature column {column!r} is not numeric: {error}") from None
    return times, values
