"""The online store interface: the latest feature row per (exchange, symbol, timeframe).

Implementations: ``RedisOnlineStore`` (real) and ``SqliteOnlineStore`` (embedded). Both pass
``tests/contract/test_online_store.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from rtml_core.schemas import FeatureRow


class OnlineStore(ABC):
    @abstractmethod
    def write_rows(self, rows: Sequence[FeatureRow]) -> None:
        """Write rows in one round trip: latest hash, bounded history, one publish per row."""

    @abstractmethod
    def read_latest(self, exchange: str, symbol: str, timeframe: str) -> FeatureRow | None:
        """The newest row, or None when nothing was written."""

    @abstractmethod
    def read_history(self, exchange: str, symbol: str, timeframe: str, n: int) -> list[FeatureRow]:
        """Up to ``n`` newest rows, newest first."""

    @abstractmethod
    def ping(self) -> bool:
        """True when the store answers."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
