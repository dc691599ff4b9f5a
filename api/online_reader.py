"""Non-blocking reads of the online store for the request path: one round trip per prediction.

``OnlineStore`` is synchronous. For Redis the API reads through ``redis.asyncio`` instead:
the latest feature hash and the live hash in one pipelined round trip, decoded with the
store's own ``row_from_hash_fields``, so many requests are in flight at once and the event
loop never waits on a socket. SQLite (a local file, microseconds) is read directly; Redis
Cluster goes through the store in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from rtml_core.schemas import FeatureRow
from rtml_core.stores.online_base import row_from_hash_fields

SPREAD_KEYS = ("book_spread_bps", "spread_bps")
PRICE_KEYS = ("book_microprice", "microprice")


class MarketRead:
    __slots__ = ("row", "live")

    def __init__(self, row: FeatureRow | None, live: Mapping[str, float] | None) -> None:
        self.row = row
        self.live = live or {}

    def live_value(self, names: tuple[str, ...]) -> float | None:
        for name in names:
            value = self.live.get(name)
            if value is not None:
                return float(value)
        return None


class StoreReader:
    """Reads through the store's own methods (SQLite directly; others in a thread)."""

    def __init__(self, store, in_thread: bool) -> None:
        self.store = store
        self.in_thread = in_thread

    def _read(self, exchange: str, symbol: str, timeframe: str) -> MarketRead:
        row = self.store.read_latest(exchange, symbol, timeframe)
        live = self.store.read_live(exchange, symbol) if row is not None else None
        return MarketRead(row, live.values if live is not None else None)

    async def read(self, exchange: str, symbol: str, timeframe: str) -> MarketRead:
        if self.in_thread:
            return await asyncio.to_thread(self._read, exchange, symbol, timeframe)
        return self._read(exchange, symbol, timeframe)

    async def aclose(self) -> None:
        return None


class RedisReader:
    """One pipelined HGETALL of the latest feature hash and the live hash, on redis.asyncio."""

    def __init__(self, store) -> None:
        import redis.asyncio

        self.keys = store.keys
        self.client = redis.asyncio.Redis.from_url(
            store.url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0,
            max_connections=256,
        )

    async def read(self, exchange: str, symbol: str, timeframe: str) -> MarketRead:
        latest_key, _, _ = self.keys.market(exchange, symbol, timeframe)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(latest_key)
        pipe.hgetall(self.keys.live(exchange, symbol))
        latest, live = await pipe.execute()
        row = row_from_hash_fields(exchange, symbol, timeframe, latest) if latest else None
        return MarketRead(row, live)

    async def aclose(self) -> None:
        await self.client.aclose()


def reader_for(store) -> StoreReader | RedisReader:
    name = type(store).__name__
    if name == "RedisOnlineStore" and not getattr(store, "cluster", False):
        return RedisReader(store)
    return StoreReader(store, in_thread=name != "SqliteOnlineStore")
