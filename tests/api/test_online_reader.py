"""The API's pipelined Redis reader against real Redis: replies matched in order, reconnects."""

from __future__ import annotations

import asyncio

import pytest
import redis

from api.online_reader import RedisReader, reader_for
from rtml_core.schemas import FeatureRow
from rtml_core.stores.online import open_online_store

pytestmark = pytest.mark.redis

SYMBOLS = [f"C{i}-USD" for i in range(40)]


def _row(symbol: str, close: float) -> FeatureRow:
    return FeatureRow(exchange="kraken", symbol=symbol, timeframe="1m", event_time_ns=1_700_000_000_000_000_000,
                      feature_set_version="fs", values={"close": close, "rsi_14": close / 10})


@pytest.fixture
def store(redis_url, redis_prefix):
    store = open_online_store(redis_url, redis_prefix)
    store.write_rows([_row(symbol, 100.0 + i) for i, symbol in enumerate(SYMBOLS)])
    store.write_live("kraken", SYMBOLS[0], 1_700_000_000_000_000_000, {"book_spread_bps": 1.5})
    yield store
    store.close()


async def test_concurrent_reads_get_their_own_rows_and_a_missing_market_is_none(store):
    reader = reader_for(store)
    assert isinstance(reader, RedisReader)
    try:
        reads = await asyncio.gather(*(reader.read("kraken", s, "1m") for s in SYMBOLS * 5),
                                     reader.read("kraken", "NOPE-USD", "1m"))
        for symbol, market in zip(SYMBOLS * 5, reads):
            assert market.row.symbol == symbol
            assert market.row.values["close"] == 100.0 + SYMBOLS.index(symbol)
            assert market.row.event_time_ns == 1_700_000_000_000_000_000
        assert float(reads[0].live["book_spread_bps"]) == 1.5
        assert reads[1].live == {}
        assert reads[-1].row is None
    finally:
        await reader.aclose()


async def test_a_dropped_connection_fails_in_flight_reads_and_the_next_read_reconnects(store, redis_url):
    reader = reader_for(store)
    try:
        assert (await reader.read("kraken", SYMBOLS[1], "1m")).row.values["close"] == 101.0
        host, port = reader._connection.transport.get_extra_info("sockname")[:2]
        client = redis.Redis.from_url(redis_url)
        assert client.client_kill(f"{host}:{port}")  # only this reader's connection
        client.close()
        await asyncio.sleep(0.05)
        market = await reader.read("kraken", SYMBOLS[2], "1m")  # the lost connection is replaced
        assert market.row.values["close"] == 102.0
    finally:
        await reader.aclose()


async def test_unreachable_redis_raises_quickly():
    class DeadStore:
        url = "redis://127.0.0.1:1/0"
        keys = None

    from rtml_core.stores.online_redis import RedisKeys

    DeadStore.keys = RedisKeys("rtmltest-dead")
    reader = RedisReader(DeadStore())
    with pytest.raises(OSError):
        await reader.read("kraken", "BTC-USD", "1m")
    await reader.aclose()
