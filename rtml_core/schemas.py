"""The wire and domain types every part of rtml shares: frozen msgspec Structs.

Times are integer nanoseconds since the Unix epoch, UTC (``*_ns``). Prices and sizes are
``Decimal`` exactly as the exchange sent them, so candles never pick up float drift.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

Side = Literal["buy", "sell", "unknown"]
"""The taker's side: ``buy`` when the aggressor bought."""


class Trade(msgspec.Struct, frozen=True, gc=False):
    exchange: str
    symbol: str  # BASE-QUOTE, e.g. BTC-USD
    trade_id: int
    time_ns: int
    price: Decimal
    size: Decimal
    side: Side = "unknown"


class BookLevel(msgspec.Struct, frozen=True, array_like=True, gc=False):
    price: Decimal
    size: Decimal  # 0 removes the level


class BookUpdate(msgspec.Struct, frozen=True, gc=False):
    """An L2 book message: a full snapshot or a diff of changed levels."""

    exchange: str
    symbol: str
    time_ns: int
    bids: tuple[BookLevel, ...]
    asks: tuple[BookLevel, ...]
    is_snapshot: bool = False
    sequence: int | None = None
    checksum: int | None = None


class Candle(msgspec.Struct, frozen=True, gc=False):
    """An event-time tumbling-window candle keyed by its start time."""

    exchange: str
    symbol: str
    timeframe: str  # "1m", "5m", "1h", "30s"
    start_ns: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    vwap: Decimal | None
    trade_count: int


ROW_CONTEXT_FIELDS = ("close",)
"""Values a stream row carries beside its features (the candle's close, the price the API
predicts from); written to the online store, never to the offline feature tables."""


class FeatureRow(msgspec.Struct, frozen=True):
    """One row of the feature set for (exchange, symbol, timeframe) at ``event_time_ns``.

    ``event_time_ns`` is the end (close time) of the candle the row was computed from, so a
    reader can refuse stale data. ``values`` maps feature name -> value (NaN during warm-up),
    plus the ``ROW_CONTEXT_FIELDS`` when the stream wrote it. Offline feature tables key the
    same row by the candle's start time (``event_time_ns - timeframe``).
    """

    exchange: str
    symbol: str
    timeframe: str
    event_time_ns: int
    feature_set_version: str
    values: dict[str, float]
