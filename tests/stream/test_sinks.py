"""Sinks: batching, coalescing, bounded buffers, and real outages (a Redis server of the test's
own killed and restarted; PostgreSQL behind a loopback proxy that is cut and restored)."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from decimal import Decimal

import numpy as np
import pytest
import sqlalchemy as sa

from rtml_core.errors import InputError
from rtml_core.schemas import Candle, FeatureRow
from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.online import open_online_store
from rtml_core.stores.online_redis import RedisOnlineStore
from rtml_stream.sinks import Backoff, OfflineLogSink, OnlineSink
from tests.contract.test_online_store import free_port, throwaway_redis_server

T0 = 1_763_700_000_000_000_000
MINUTE = 60_000_000_000
NAMES = ("sma_10", "rsi_14", "macd")


class TestClock:
    """A clock the test moves by hand (monotonic seconds)."""

    __test__ = False

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def row(k: int, symbol: str = "BTC-USD", timeframe: str = "1m", version: str = "v1") -> FeatureRow:
    """Every feature equals k, so a torn row would show."""
    return FeatureRow("kraken", symbol, timeframe, T0 + k * MINUTE, version, {name: float(k) for name in NAMES})


def candle(k: int, symbol: str = "BTC-USD") -> Candle:
    price = Decimal("100.5") + k
    return Candle("kraken", symbol, "1m", T0 + k * MINUTE, price, price + 1, price - 1, price,
                  Decimal("2.25"), price, 3)


def whole(rows: list[FeatureRow]) -> bool:
    return all(set(r.values) == set(NAMES) and all(v == (r.event_time_ns - T0) // MINUTE for v in r.values.values())
               for r in rows)


@pytest.fixture
def online_store(online_url):
    url, prefix = online_url
    store = open_online_store(url, prefix=prefix, history=200)
    yield store
    store.close()


@pytest.fixture
def own_redis(tmp_path):
    server = throwaway_redis_server(tmp_path)
    yield server
    server.kill()


# --- OnlineSink --------------------------------------------------------------------------------

def test_closed_candle_rows_are_due_at_once_and_written_in_one_batch(online_store):
    clock = TestClock()
    written = []
    sink = OnlineSink(online_store, clock=clock, on_rows_written=lambda rows, now: written.append(len(rows)))
    sink.add_rows([row(k, symbol=s) for k in range(3) for s in ("BTC-USD", "ETH-USD")])
    assert sink.next_due() <= clock.now
    assert sink.flush_sync()
    assert sink.stats.writes == 1 and written == [6] and sink.pending == 0 and sink.healthy
    for symbol in ("BTC-USD", "ETH-USD"):
        assert online_store.read_latest("kraken", symbol, "1m").event_time_ns == T0 + 2 * MINUTE


def test_live_values_are_coalesced_never_a_write_per_trade(online_store):
    clock = TestClock()
    sink = OnlineSink(online_store, clock=clock, coalesce_ms=100)
    for i in range(1000):  # a burst of trades and book updates
        sink.add_live("kraken", "BTC-USD", T0 + i, {"trade_count": float(i), "spread_bps": 1.0 + i / 1000})
        if i % 10 == 0:
            sink.add_live("kraken", "ETH-USD", T0 + i, {"book_imbalance": i / 1000})
        sink.flush_sync()
    assert sink.stats.writes == 0 and online_store.read_live("kraken", "BTC-USD") is None
    clock.advance(0.1)
    assert sink.next_due() <= clock.now
    sink.flush_sync()
    assert sink.stats.writes == 1 and sink.stats.written_by_kind == {"live": 2}
    btc = online_store.read_live("kraken", "BTC-USD")
    assert btc.time_ns == T0 + 999 and btc.values == {"trade_count": 999.0, "spread_bps": 1.999}
    assert online_store.read_live("kraken", "ETH-USD").values == {"book_imbalance": 0.99}
    assert sink.next_due() is None


def test_rows_carry_pending_live_values_in_the_same_round_trip(online_store):
    clock = TestClock()
    sink = OnlineSink(online_store, clock=clock, coalesce_ms=100)
    sink.add_live("kraken", "BTC-USD", T0, {"microprice": 100.1})
    sink.add_rows([row(1)])
    sink.flush_sync()
    assert sink.stats.writes == 1 and sink.pending == 0
    assert online_store.read_live("kraken", "BTC-USD").values == {"microprice": 100.1}


def test_a_full_buffer_drops_the_oldest_live_values_first_then_the_oldest_rows():
    down = RedisOnlineStore(f"redis://127.0.0.1:{free_port()}/0", "rtmltest")  # nothing listens there
    clock = TestClock()
    sink = OnlineSink(down, clock=clock, max_buffer=5, coalesce_ms=0)
    sink.add_live("kraken", "A-USD", T0 + 3, {"x": 1.0})
    sink.add_live("kraken", "B-USD", T0 + 1, {"x": 1.0})
    sink.add_rows([row(0), row(1), row(2)])
    assert not sink.flush_sync() and not sink.healthy and sink.stats.write_errors == 1
    assert "Redis at" in sink.stats.last_error
    sink.add_rows([row(3)])  # 6 > 5: the oldest live value goes (B, time T0+1)
    assert sink.stats.dropped_by_kind == {"live": 1}
    sink.add_rows([row(4), row(5)])  # then the last live value, then the oldest row
    assert sink.stats.dropped_by_kind == {"live": 2, "rows": 1}
    assert sink.pending == 5 and [r.event_time_ns for r in sink._rows] == [T0 + k * MINUTE for k in range(1, 6)]
    down.close()


def test_a_row_the_store_cannot_hold_is_refused_when_added():
    sink = OnlineSink(RedisOnlineStore("redis://127.0.0.1:1/0"), clock=TestClock())
    bad = FeatureRow("kraken", "BTC-USD", "1m", T0, "v1", {"written_at": 1.0})
    with pytest.raises(InputError, match="reserved"):
        sink.add_rows([bad])
    with pytest.raises(InputError, match="reserved"):
        sink.add_live("kraken", "BTC-USD", T0, {"event_time": 1.0})
    with pytest.raises(InputError, match="online-store key"):  # would break the whole batch later
        sink.add_rows([FeatureRow("kraken", "BTC:USD", "1m", T0, "v1", {"close": 1.0})])
    with pytest.raises(InputError, match="online-store key"):
        sink.add_live("kraken", "BTC USD", T0, {"spread_bps": 1.0})
    assert sink.pending == 0


def test_redis_down_keeps_consuming_buffers_bounded_and_catches_up_whole(own_redis):
    store = RedisOnlineStore(own_redis.url, "rtml", history=100)
    clock = TestClock()
    sink = OnlineSink(store, clock=clock, max_buffer=50, max_batch=20, backoff=Backoff(0.05, 1.0, random.Random(1)))
    sink.add_rows([row(0)])
    assert sink.flush_sync() and sink.healthy

    own_redis.kill()
    for k in range(1, 81):  # a candle closes every "minute" while Redis is down
        sink.add_rows([row(k)])
        sink.add_live("kraken", "BTC-USD", T0 + k * MINUTE, {"trade_count": float(k)})
        sink.flush_sync()
        clock.advance(0.5)
    assert not sink.healthy and sink.stats.write_errors >= 5
    status = sink.status()
    assert status["healthy"] is False and status["pending"] == 50 and "Connection refused" in status["last_error"]
    assert sink.pending == 50 and sink.stats.dropped_by_kind["rows"] == 30  # 31..80 kept (+ live dropped)
    assert sink.stats.dropped_by_kind["live"] >= 1

    own_redis.start()  # an empty server: data and the Lua script cache are gone
    clock.advance(5.0)  # past any backoff
    assert sink.flush_sync()
    assert sink.healthy and sink.pending == 0 and sink.stats.writes == 1 + 3  # 50 rows, 20 per write
    assert sink.status()["seconds_since_success"] == 0 and sink.status()["written"]["rows"] == 51
    latest = store.read_latest("kraken", "BTC-USD", "1m")
    assert latest.event_time_ns == T0 + 80 * MINUTE and whole([latest])
    history = store.read_history("kraken", "BTC-USD", "1m", 100)
    assert [r.event_time_ns for r in history] == [T0 + k * MINUTE for k in range(80, 30, -1)]
    assert whole(history)
    store.close()


def test_backoff_grows_with_jitter_up_to_its_cap():
    backoff = Backoff(0.1, 2.0, random.Random(7))
    delays = [backoff.delay(n) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(2.0, 0.1 * 2 ** (n - 1))
        assert ceiling / 2 <= delay < ceiling
    assert len({round(d / min(2.0, 0.1 * 2 ** (n - 1)), 6) for n, d in enumerate(delays, 1)}) > 1  # jittered


async def test_the_sink_task_writes_at_once_survives_an_outage_and_drains_on_stop(own_redis):
    store = RedisOnlineStore(own_redis.url, "rtml", history=100)
    sink = OnlineSink(store, coalesce_ms=20, backoff=Backoff(0.02, 0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))

    async def until(condition, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.005)

    sink.add_rows([row(0)])
    await until(lambda: store.read_latest("kraken", "BTC-USD", "1m") is not None, timeout=2)

    own_redis.kill()
    for k in range(1, 6):
        sink.add_rows([row(k)])
        sink.add_live("kraken", "BTC-USD", T0 + k, {"spread_bps": float(k)})
        await asyncio.sleep(0.05)  # the event loop keeps running while writes fail
    # a failed batch returns to the buffer once its write attempt ends: wait for that, not a fixed moment
    await until(lambda: not sink.healthy and sink.pending >= 5)

    own_redis.start()
    await until(lambda: sink.healthy and sink.pending == 0)
    assert store.read_latest("kraken", "BTC-USD", "1m").event_time_ns == T0 + 5 * MINUTE
    assert store.read_live("kraken", "BTC-USD").values == {"spread_bps": 5.0}

    sink.add_rows([row(6)])
    stop.set()
    await asyncio.wait_for(task, 5)
    assert store.read_latest("kraken", "BTC-USD", "1m").event_time_ns == T0 + 6 * MINUTE
    store.close()


# --- OfflineLogSink ----------------------------------------------------------------------------

def test_offline_log_batches_by_size_or_interval_and_is_idempotent(offline_url):
    store = open_offline_store(offline_url)
    clock = TestClock()
    sink = OfflineLogSink(store, batch_size=10, flush_interval_s=1.0, clock=clock)
    sink.add_candles([candle(k) for k in range(3)])
    sink.add_rows([row(k) for k in range(3)])
    assert sink.flush_sync() and sink.stats.writes == 0  # 6 < 10 and not yet a second old: nothing due
    assert sink.pending == 6
    clock.advance(1.0)
    assert sink.flush_sync() and sink.pending == 0 and sink.stats.writes == 1

    sink.add_candles([candle(k) for k in range(3, 8)])
    sink.add_rows([row(k) for k in range(3, 8)])  # 10 items: due at once
    assert sink.next_due() <= clock.now
    sink.flush_sync()
    sink.add_candles([candle(k) for k in range(8)])  # the same again: upserts, no duplicates
    sink.add_rows([row(k) for k in range(8)])
    clock.advance(1.0)
    sink.flush_sync()
    assert sink.stats.written_by_kind == {"candles": 16, "rows": 16}

    candles = store.read_candles("kraken", "BTC-USD", "1m", exact=True)
    assert len(candles) == 8 and list(candles["close"]) == [Decimal("100.5") + k for k in range(8)]
    features = store.read_features("kraken", "BTC-USD", "1m", "v1")
    assert list(features.columns) == ["time", *NAMES] and len(features) == 8
    assert str(features["time"].dtype) == "datetime64[ns, UTC]"
    assert features["time"].iloc[-1].value == T0 + 6 * MINUTE  # keyed by candle start: event time - 1m
    assert np.array_equal(features["rsi_14"].to_numpy(), np.arange(8, dtype=float))
    store.close()


def test_offline_log_writes_each_market_and_version_apart_and_drops_refused_groups(tmp_path):
    store = open_offline_store(f"sqlite:///{tmp_path / 'offline.sqlite'}")
    store.register_feature_set("v9", ["other"], {})  # v9 means other features: rows claiming v9 are refused
    clock = TestClock()
    sink = OfflineLogSink(store, batch_size=100, clock=clock, feature_specs={"v2": {"window": 14}})
    sink.add_rows([row(k, symbol=s) for k in range(4) for s in ("BTC-USD", "ETH-USD")])
    sink.add_rows([row(k, version="v9") for k in range(2)])
    sink.add_rows([row(k, timeframe="5m", version="v2") for k in range(3)])
    clock.advance(2.0)
    assert sink.flush_sync() and sink.healthy and sink.pending == 0
    assert sink.stats.dropped_by_kind == {"rejected": 2}
    assert len(store.read_features("kraken", "ETH-USD", "1m", "v1")) == 4
    assert len(store.read_features("kraken", "BTC-USD", "5m", "v2")) == 3
    assert {v["version"]: v["spec"] for v in store.feature_set_versions()}["v2"] == {"window": 14}
    store.close()


class CuttableProxy:
    """A loopback TCP proxy to a real server; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            client.settimeout(None)
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@pytest.mark.postgres
def test_postgres_down_keeps_the_offline_log_buffered_and_catches_up(postgres_url):
    proxy = CuttableProxy(("127.0.0.1", sa.make_url(postgres_url).port or 5432))
    proxy.start()
    url = sa.make_url(postgres_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    store = open_offline_store(url)
    symbol = f"T{random.randrange(10**6)}-USD"  # the session database is shared by other tests
    clock = TestClock()
    sink = OfflineLogSink(store, batch_size=5, max_buffer=30, clock=clock,
                          backoff=Backoff(0.05, 1.0, random.Random(3)))
    sink.add_candles([candle(0, symbol)])
    sink.add_rows([row(0, symbol)])
    clock.advance(1.0)
    assert sink.flush_sync() and sink.healthy

    proxy.cut()
    for k in range(1, 21):
        sink.add_candles([candle(k, symbol)])
        sink.add_rows([row(k, symbol)])
        sink.flush_sync()
        clock.advance(0.5)
    assert not sink.healthy and sink.stats.write_errors >= 3
    # 40 items for a buffer of 30: feature rows go first (the batch engine can recompute them)
    assert sink.pending == 30 and sink.stats.dropped_by_kind == {"rows": 10}

    proxy.start()
    clock.advance(5.0)
    assert sink.flush_sync() and sink.healthy and sink.pending == 0
    candles = store.read_candles("kraken", symbol, "1m")
    assert len(candles) == 21
    features = store.read_features("kraken", symbol, "1m", "v1")
    assert [t.value for t in features["time"]] == [T0 + (k - 1) * MINUTE for k in [0, *range(11, 21)]]  # candle starts
    store.close()
    proxy.cut()


@pytest.mark.postgres
def test_the_offline_log_starts_while_postgres_is_down_and_opens_it_later(postgres_url):
    proxy = CuttableProxy(("127.0.0.1", sa.make_url(postgres_url).port or 5432))  # not listening yet
    url = sa.make_url(postgres_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    symbol = f"T{random.randrange(10**6)}-USD"
    clock = TestClock()
    sink = OfflineLogSink(lambda: open_offline_store(url), batch_size=2, clock=clock,
                          backoff=Backoff(0.05, 1.0, random.Random(5)))
    sink.add_candles([candle(0, symbol)])
    sink.add_rows([row(0, symbol)])
    assert not sink.flush_sync() and not sink.healthy and sink.pending == 2
    assert "OperationalError" in sink.stats.last_error

    proxy.start()
    clock.advance(2.0)
    assert sink.flush_sync() and sink.healthy and sink.pending == 0
    assert len(sink.store.read_candles("kraken", symbol, "1m")) == 1
    assert len(sink.store.read_features("kraken", symbol, "1m", "v1")) == 1
    sink.store.close()
    proxy.cut()
