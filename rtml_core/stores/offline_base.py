"""The offline store interface: market history, feature rows and everything rtml logs.

Implementations: ``SqlOfflineStore`` (SQLAlchemy; SQLite embedded, PostgreSQL real).
Frames returned by readers have a ``time`` column of dtype ``datetime64[ns, UTC]`` first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert

from rtml_core.schemas import Candle, Trade
from rtml_core.stores.offline_tables import Migration


class OfflineStore(ABC):
    """Durable, idempotent history. Every write is one transaction per batch.

    Packages that keep their own tables in the store (the model registry, the prediction log,
    the stream's corrections) use only ``apply_migrations``, ``begin_write``, ``connect``,
    ``insert`` and ``dialect``: they never see an engine or a URL.
    """

    @abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema to this version of rtml, keeping existing data."""

    @abstractmethod
    def apply_migrations(self, component: str, steps: Sequence[Migration], *, target: int | None = None) -> list[int]:
        """Run the missing ``steps`` of another package's ``component`` in one transaction."""

    @property
    @abstractmethod
    def dialect(self) -> str:
        """The SQL dialect: ``sqlite`` or ``postgresql``."""

    @abstractmethod
    def begin_write(self) -> AbstractContextManager[Connection]:
        """A write transaction: commits on success, rolls back on error."""

    @abstractmethod
    def connect(self) -> AbstractContextManager[Connection]:
        """A connection for reads."""

    @abstractmethod
    def insert(self, table: sa.Table) -> Insert:
        """The dialect's ``INSERT`` of ``table`` (``on_conflict_do_nothing`` / ``on_conflict_do_update``)."""

    @abstractmethod
    def write_trades(self, trades: Iterable[Trade]) -> int:
        """Upsert on (exchange, symbol, trade_id); return the number of rows written."""

    @abstractmethod
    def write_candles(self, candles: Iterable[Candle]) -> int:
        """Upsert on (exchange, symbol, timeframe, start time); return rows written."""

    @abstractmethod
    def replace_candles(
        self, candles: Iterable[Candle], *, exchange: str, symbol: str, timeframe: str, start_ns: int, end_ns: int
    ) -> int:
        """Delete the candles in [start, end) and write ``candles`` (all inside it), atomically."""

    @abstractmethod
    def read_trades(
        self,
        exchange: str,
        symbol: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        exact: bool = False,
    ) -> pd.DataFrame:
        """Trades in [start, end) ordered by time then trade_id: time, trade_id, price, size, side.

        ``exact=True`` gives ``Decimal`` prices and sizes instead of float64.
        """

    @abstractmethod
    def read_candles(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        exact: bool = False,
    ) -> pd.DataFrame:
        """Candles in [start, end) by start time: time, open, high, low, close, volume, vwap, trade_count."""

    @abstractmethod
    def register_feature_set(self, version: str, names: list[str], spec: dict) -> None:
        """Record a feature-set version (idempotent); its rows live apart from other versions."""

    @abstractmethod
    def write_features(
        self, frame: pd.DataFrame, *, exchange: str, symbol: str, timeframe: str, feature_set_version: str
    ) -> int:
        """Upsert rows (``time`` plus one float column per feature) on (exchange, symbol, timeframe, time)."""

    @abstractmethod
    def replace_features(
        self,
        frame: pd.DataFrame,
        *,
        exchange: str,
        symbol: str,
        timeframe: str,
        feature_set_version: str,
        start_ns: int,
        end_ns: int,
    ) -> int:
        """Delete the version's rows in [start, end) and write ``frame`` (all inside it), atomically."""

    @abstractmethod
    def read_features(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        feature_set_version: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> pd.DataFrame:
        """Feature rows in [start, end) by time: ``time`` then the features in registered order."""

    @abstractmethod
    def feature_set_versions(self) -> list[dict]:
        """Every registered version: dicts with version, names, spec, created_at."""

    @abstractmethod
    def markets(self) -> pd.DataFrame:
        """What is stored: kind, exchange, symbol, timeframe, feature_set_version, first, last, rows."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
