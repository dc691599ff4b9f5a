"""The offline store interface: market history, feature rows and everything rtml logs.

Implementations: ``SqlOfflineStore`` (SQLAlchemy; SQLite embedded, PostgreSQL real).
Frames returned by readers have a ``time`` column of dtype ``datetime64[ns, UTC]`` first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import pandas as pd

from rtml_core.schemas import Candle, Trade


class OfflineStore(ABC):
    """Durable, idempotent history. Every write is one transaction per batch."""

    @abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema to this version of rtml, keeping existing data."""

    @abstractmethod
    def write_trades(self, trades: Iterable[Trade]) -> int:
        """Upsert on (exchange, symbol, trade_id); return the number of rows written."""

    @abstractmethod
    def write_candles(self, candles: Iterable[Candle]) -> int:
        """Upsert on (exchange, symbol, timeframe, start time); return rows written."""

    @abstractmethod
    def read_trades(
        self, exchange: str, symbol: str, start_ns: int | None = None, end_ns: int | None = None
    ) -> pd.DataFrame:
        """Trades in [start, end) ordered by time then trade_id: time, trade_id, price, size, side."""

    @abstractmethod
    def read_candles(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> pd.DataFrame:
        """Candles in [start, end) by start time: time, open, high, low, close, volume, vwap, trade_count."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
