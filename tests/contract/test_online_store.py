"""One contract for every online store: embedded SQLite and real Redis (``online_url``).

Plus the Redis key schema trading bots read directly, round trips per batch, and a subscription
that lives through a real Redis restart (a throwaway ``redis-server`` of the test's own).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rtml_core.errors import InputError
from rtml_core.schemas import FeatureRow
from rtml_core.stores.online import open_online_store
from rtml_core.stores.online_base import LiveValues, OnlineStoreUnavailable, decode_row_json, encode_row_json
from rtml_core.stores.online_redis import RedisOnlineStore
from rtml_core.stores.online_sqlite import SqliteOnlineStore
from tests.conftest import IN_CI

T0 = 1_763_700_000_000_000_000  # 2025-11-21 04:40:00 UTC
MINUTE = 60_000_000_000


def make_row(k: int, *, exchange="kraken", symbol="BTC-USD", timeframe="1m", version="v1", values=None):
    if values is None:
        values = {"close": 100.0 + k, "rsi_14": 50.0 + k / 10, "macd": float("nan")}
    return FeatureRow(exchange, symbol, timeframe, T0 + k * MINUTE, version, values)


def same_float(a: float, b: float) -> bool:
    """Bit-for-bit the same value (NaN equals NaN, -0.0 differs from 0.0)."""
    return np.float64(a).tobytes() == np.float64(b).tobytes() or (math.isnan(a) and math.isnan(b))


def assert_same_row(got: FeatureRow | None, want: FeatureRow) -> None:
    assert got is not None
    assert (got.exchange, got.symbol, got.timeframe, got.event_time_ns, got.feature_set_version) == (
        want.exchange, want.symbol, want.timeframe, want.event_time_ns, want.feature_set_version)
    assert list(got.values) == list(want.values) or set(got.values) == set(want.values)
    for name, value in want.values.items():
        assert same_float(got.values[name], float(value)), (name, got.values[name], value)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("redis-cluster", marks=pytest.mark.redis)])
def online_url(request, tmp_path):
    """conftest's backends (embedded SQLite, real Redis) plus a real 3-node Redis Cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'online.sqlite'}", "rtml"
    if request.param == "redis":
        return request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return request.getfixturevalue("redis_cluster").url, f"rtmltest:{uuid.uuid4().hex[:10]}"


@pytest.fixture
def store(online_url):
    url, prefix = online_url
    opened = open_online_store(url, prefix=prefix, history=5)
    yield opened
    opened.close()


# --- the contract ---------------------------------------------------------------------------

def test_empty_store_reads_nothing(store):
    assert store.ping()
    assert store.read_latest("kraken", "BTC-USD", "1m") is None
    assert store.read_history("kraken", "BTC-USD", "1m", 10) == []
    assert store.read_live("kraken", "BTC-USD") is None


def test_every_float_round_trips_bit_for_bit(store):
    tricky = {
        "nan": float("nan"), "inf": float("inf"), "minus_inf": float("-inf"), "minus_zero": -0.0,
        "denormal": 5e-324, "huge": 1.7976931348623157e308, "tenth_sum": 0.1 + 0.2,
        "numpy": np.float64(1) / 3, "negative": -123456.789012345678,
    }
    row = make_row(1, values=tricky)
    store.write_rows([row])
    assert_same_row(store.read_latest("kraken", "BTC-USD", "1m"), row)
    (from_history,) = store.read_history("kraken", "BTC-USD", "1m", 5)
    assert_same_row(from_history, row)


def test_newest_event_time_stays_latest_when_an_older_row_comes_later(store):
    newer, older = make_row(3), make_row(1)
    store.write_rows([newer])
    store.write_rows([older])
    assert_same_row(store.read_latest("kraken", "BTC-USD", "1m"), newer)
    assert [r.event_time_ns for r in store.read_history("kraken", "BTC-USD", "1m", 5)] == [
        newer.event_time_ns, older.event_time_ns]


def test_history_keeps_the_newest_n_newest_first_and_rewrites_are_idempotent(store):
    store.write_rows([make_row(k) for k in range(4)])
    store.write_rows([make_row(k) for k in range(4, 8)])
    history = store.read_history("kraken", "BTC-USD", "1m", 100)
    assert [r.event_time_ns for r in history] == [T0 + k * MINUTE for k in (7, 6, 5, 4, 3)]
    assert [r.event_time_ns for r in store.read_history("kraken", "BTC-USD", "1m", 2)] == [T0 + 7 * MINUTE,
                                                                                        T0 + 6 * MINUTE]
    corrected = make_row(7, values={"close": 999.0, "rsi_14": 1.0, "macd": 2.0})
    store.write_rows([corrected])  # the same event time again: replaces, never duplicates
    store.write_rows([corrected])
    history = store.read_history("kraken", "BTC-USD", "1m", 100)
    assert len(history) == 5
    assert_same_row(history[0], corrected)
    assert_same_row(store.read_latest("kraken", "BTC-USD", "1m"), corrected)


def test_a_new_feature_set_leaves_no_stale_features(store):
    store.write_rows([make_row(1, values={"a": 1.0, "b": 2.0, "c": 3.0})])
    replacement = make_row(2, version="v2", values={"a": 10.0, "d": 40.0})
    store.write_rows([replacement])
    latest = store.read_latest("kraken", "BTC-USD", "1m")
    assert latest.values == {"a": 10.0, "d": 40.0}
    assert latest.feature_set_version == "v2"


def test_one_batch_of_many_markets_lands_each_row_in_its_place(store):
    markets = [(e, s, tf) for e in ("kraken", "binance", "coinbase") for s in ("BTC-USD", "ETH-USD")
               for tf in ("1m", "5m")]
    rows = [make_row(k, exchange=e, symbol=s, timeframe=tf,
                     values={"k": float(k), "market": float(i)})
            for i, (e, s, tf) in enumerate(markets) for k in range(7)]
    random.Random(4).shuffle(rows)
    store.write_rows(rows)
    for i, (e, s, tf) in enumerate(markets):
        latest = store.read_latest(e, s, tf)
        assert latest.event_time_ns == T0 + 6 * MINUTE and latest.values == {"k": 6.0, "market": float(i)}
        assert [r.values["k"] for r in store.read_history(e, s, tf, 10)] == [6.0, 5.0, 4.0, 3.0, 2.0]


def test_live_values_merge_per_market_and_the_latest_value_wins(store):
    store.write_live("kraken", "BTC-USD", T0, {"spread_bps": 1.5, "microprice": 100.25})
    store.write_live("kraken", "BTC-USD", T0 + 1000, {"spread_bps": 2.0, "book_imbalance": float("nan")})
    store.write_live("kraken", "ETH-USD", T0 + 5, {"spread_bps": 9.0})
    live = store.read_live("kraken", "BTC-USD")
    assert live.time_ns == T0 + 1000
    assert live.values["spread_bps"] == 2.0 and live.values["microprice"] == 100.25
    assert math.isnan(live.values["book_imbalance"])
    assert store.read_live("kraken", "ETH-USD").values == {"spread_bps": 9.0}


def test_rows_and_live_values_write_together(store):
    store.write_batch([make_row(1), make_row(2)], [LiveValues("kraken", "BTC-USD", T0, {"trade_count": 12.0})])
    assert store.read_latest("kraken", "BTC-USD", "1m").event_time_ns == T0 + 2 * MINUTE
    assert store.read_live("kraken", "BTC-USD").values == {"trade_count": 12.0}


def test_a_row_beyond_now_plus_one_timeframe_is_refused_and_nothing_is_written(store):
    now = time.time_ns()
    minute_end = now - now % MINUTE + MINUTE  # the row of the candle open now: accepted
    current = FeatureRow("kraken", "BTC-USD", "1m", minute_end, "v1", {"close": 1.0})
    future = FeatureRow("kraken", "BTC-USD", "1m", now + 365 * 24 * 60 * MINUTE, "v1", {"close": 2.0})
    with pytest.raises(InputError, match="beyond now"):
        store.write_batch([current, future])
    assert store.read_latest("kraken", "BTC-USD", "1m") is None
    store.write_batch([current])
    assert store.read_latest("kraken", "BTC-USD", "1m").event_time_ns == minute_end


def test_reserved_names_are_refused_and_nothing_is_written(store):
    with pytest.raises(InputError, match="reserved"):
        store.write_rows([make_row(1), make_row(2, values={"event_time": 1.0})])
    with pytest.raises(InputError, match="reserved"):
        store.write_live("kraken", "BTC-USD", T0, {"written_at": 1.0})
    assert store.read_latest("kraken", "BTC-USD", "1m") is None
    assert store.read_live("kraken", "BTC-USD") is None
    for bad in ({"symbol": "BTC:USD"}, {"exchange": "kra ken"}, {"timeframe": "{1m}"}):
        with pytest.raises(InputError, match="cannot be part of an online-store key"):
            store.write_rows([make_row(1, **bad)])
    with pytest.raises(InputError, match="cannot be part of an online-store key"):
        store.write_live("kraken", "BTC*", T0, {"spread_bps": 1.0})


async def test_subscribers_hear_each_new_row_in_order_and_nothing_older(store):
    store.write_rows([make_row(5)])
    rows = await store.subscribe("kraken", "BTC-USD", "1m")
    try:
        store.write_rows([make_row(3)])  # older than the latest at subscription: not news
        store.write_rows([make_row(6), make_row(7)])
        store.write_rows([make_row(8, values={"close": float("nan")})])
        got = [await asyncio.wait_for(rows.__anext__(), 5) for _ in range(3)]
    finally:
        await rows.aclose()
    assert [r.event_time_ns for r in got] == [T0 + 6 * MINUTE, T0 + 7 * MINUTE, T0 + 8 * MINUTE]
    assert_same_row(got[2], make_row(8, values={"close": float("nan")}))


async def test_a_subscription_works_as_async_for_and_context_manager(store):
    subscribed = asyncio.Event()

    async def first_two():
        async with store.subscribe("kraken", "ETH-USD", "5m") as rows:
            subscribed.set()
            seen = []
            async for row in rows:
                seen.append(row.values["k"])
                if len(seen) == 2:
                    return seen

    listener = asyncio.create_task(first_two())
    await asyncio.wait_for(subscribed.wait(), 10)
    for k in range(2):
        store.write_rows([make_row(k, symbol="ETH-USD", timeframe="5m", values={"k": float(k)})])
        await asyncio.sleep(0.01)
    assert await asyncio.wait_for(listener, 5) == [0.0, 1.0]


_READER = textwrap.dedent("""
    import json, sys, time
    from rtml_core.stores.online import open_online_store
    url, prefix, last_k, features = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = open_online_store(url, prefix=prefix)
    reads = torn = 0
    deadline = time.monotonic() + 60
    print("ready", flush=True)
    while time.monotonic() < deadline:
        row = store.read_latest("kraken", "BTC-USD", "1m")
        if row is None:
            continue
        reads += 1
        k = row.values["k"]
        if (len(row.values) != features or any(v != k for v in row.values.values())
                or row.event_time_ns != 1_763_700_000_000_000_000 + int(k) * 60_000_000_000):
            torn += 1
        if k == last_k:
            break
    print(json.dumps({"reads": reads, "torn": torn, "last": k}))
""")


def test_a_reader_in_another_process_never_sees_a_partial_row(store, online_url):
    url, prefix = online_url
    features, last_k = 300, 400
    reader = subprocess.Popen([sys.executable, "-c", _READER, url, prefix, str(last_k), str(features)],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    assert reader.stdout.readline().strip() == "ready"
    names = [f"f{i:03d}" for i in range(features - 1)]
    for k in range(last_k + 1):
        values = {"k": float(k), **{name: float(k) for name in names}}
        store.write_rows([make_row(k, values=values)])
    out, _ = reader.communicate(timeout=60)
    result = json.loads(out)
    assert result["last"] == last_k
    assert result["reads"] > 10
    assert result["torn"] == 0


def test_an_unreachable_store_raises_a_named_error(tmp_path):
    unreachable = RedisOnlineStore(f"redis://127.0.0.1:{free_port()}/0", prefix="rtmltest")
    assert unreachable.ping() is False
    with pytest.raises(OnlineStoreUnavailable, match="Redis at redis://127.0.0.1"):
        unreachable.write_rows([make_row(1)])
    with pytest.raises(OnlineStoreUnavailable):
        unreachable.read_latest("kraken", "BTC-USD", "1m")
    unreachable.close()

    path = tmp_path / "online.sqlite"
    locked = SqliteOnlineStore(path, busy_timeout_s=0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(OnlineStoreUnavailable, match="locked"):
            locked.write_rows([make_row(1)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    locked.write_rows([make_row(1)])  # and it works once the lock is gone
    assert locked.read_latest("kraken", "BTC-USD", "1m").event_time_ns == T0 + MINUTE
    locked.close()


def test_bad_urls_prefixes_and_names_are_refused(tmp_path):
    with pytest.raises(InputError, match="redis://"):
        open_online_store("mysql://localhost/x")
    with pytest.raises(InputError, match="must name a file"):
        open_online_store("sqlite:///:memory:")
    with pytest.raises(InputError, match="braces"):
        open_online_store("redis://127.0.0.1:6379/0", prefix="a{b}")
    store = open_online_store(f"sqlite:///{tmp_path / 'x.sqlite'}")
    store.close()
    redis_store = RedisOnlineStore("redis://127.0.0.1:1/0")
    with pytest.raises(InputError, match="symbol"):
        redis_store.keys.market("kraken", "BTC:USD", "1m")
    redis_store.close()


def test_row_json_is_plain_json_with_null_for_nan():
    data = encode_row_json(make_row(2, values={"a": 1.5, "b": float("nan"), "c": float("-inf")}), written_at_ns=7)
    plain = json.loads(data)
    assert plain["values"] == {"a": 1.5, "b": None, "c": "-inf"}
    assert plain["event_time"] == T0 + 2 * MINUTE and plain["event_time_iso"] == "2025-11-21T04:42:00Z"
    assert plain["written_at"] == 7
    assert_same_row(decode_row_json(data), make_row(2, values={"a": 1.5, "b": float("nan"), "c": float("-inf")}))


# --- Redis: the key schema bots read, round trips, restarts ----------------------------------

@pytest.mark.redis
def test_redis_keys_are_the_documented_schema(redis_url, redis_prefix):
    store = RedisOnlineStore(redis_url, redis_prefix, history=3, clock_ns=lambda: T0 + 10 * MINUTE)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    channel = f"{redis_prefix}:updates:{{kraken:BTC-USD}}:1m"
    pubsub.subscribe(channel)
    store.write_rows([make_row(k) for k in range(4)])
    store.write_live("kraken", "BTC-USD", T0 + 5, {"spread_bps": 1.25})

    features = raw.hgetall(f"{redis_prefix}:features:{{kraken:BTC-USD}}:1m")
    assert features == {"close": "103.0", "rsi_14": "50.3", "macd": "nan", "event_time": str(T0 + 3 * MINUTE),
                        "event_time_iso": "2025-11-21T04:43:00Z", "feature_set_version": "v1",
                        "written_at": str(T0 + 10 * MINUTE)}
    history_key = f"{redis_prefix}:history:{{kraken:BTC-USD}}:1m"
    assert raw.zcard(history_key) == 3
    newest, score = raw.zrevrange(history_key, 0, 0, withscores=True)[0]
    assert score == (T0 + 3 * MINUTE) // 1_000_000
    assert json.loads(newest)["values"] == {"close": 103.0, "rsi_14": 50.3, "macd": None}
    live = raw.hgetall(f"{redis_prefix}:live:{{kraken:BTC-USD}}")
    assert live == {"spread_bps": "1.25", "event_time": str(T0 + 5), "event_time_iso": "2025-11-21T04:40:00.000000005Z",
                    "written_at": str(T0 + 10 * MINUTE)}
    published = []
    deadline = time.monotonic() + 5
    while len(published) < 4 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message:
            published.append(json.loads(message["data"])["event_time"])
    assert published == [T0 + k * MINUTE for k in range(4)]
    # one market's keys share a Redis Cluster slot (the {exchange:symbol} hash tag)
    from redis.crc import key_slot

    slots = {key_slot(key.encode()) for key in (history_key, f"{redis_prefix}:live:{{kraken:BTC-USD}}",
                                               f"{redis_prefix}:features:{{kraken:BTC-USD}}:5m")}
    assert len(slots) == 1
    pubsub.close()
    raw.close()
    store.close()


class CountingConnection(redis.Connection):
    """A real connection that counts the packets it sends (one per round trip)."""

    sends = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.sends += 1
        return super().send_packed_command(command, check_health)


@pytest.mark.redis
def test_redis_writes_a_whole_batch_in_one_round_trip(redis_url, redis_prefix):
    pool = redis.ConnectionPool.from_url(redis_url, decode_responses=True, connection_class=CountingConnection)
    store = RedisOnlineStore(redis_url, redis_prefix, client=redis.Redis(connection_pool=pool))
    store.ping()
    store.write_rows([make_row(0)])  # loads the Lua script on a fresh server
    rows = [make_row(k, symbol=f"C{i}-USD") for i in range(50) for k in range(20)]
    live = [LiveValues("kraken", f"C{i}-USD", T0, {"spread_bps": float(i)}) for i in range(50)]
    CountingConnection.sends = 0
    store.write_batch(rows, live)
    assert CountingConnection.sends == 1
    assert store.read_latest("kraken", "C49-USD", "1m").event_time_ns == T0 + 19 * MINUTE
    store.close()


# --- a Redis server of the test's own, to kill and restart ----------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayRedis:
    """``redis-server`` on a free loopback port, no persistence: start, kill, start again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 50_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue


class ThrowawayRedisCluster:
    """Three ``redis-server --cluster-enabled yes`` masters on free ports, slots split in three."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = [free_cluster_port() for _ in range(3)]
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        for port in self.ports:
            self.processes.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                 "--cluster-node-timeout", "2000", "--dir", str(self.workdir)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        nodes = [redis.Redis(port=port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
                 for port in self.ports]
        deadline = time.monotonic() + 20
        for node in nodes:
            while True:
                try:
                    node.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis cluster node did not start"
                    time.sleep(0.02)
        bounds = [0, 5461, 10923, 16384]
        for i, node in enumerate(nodes):
            node.execute_command("CLUSTER", "ADDSLOTS", *range(bounds[i], bounds[i + 1]))
        for port in self.ports[1:]:
            nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        while not all(b"cluster_state:ok" in node.execute_command("CLUSTER", "INFO") and
                      len(node.execute_command("CLUSTER", "SLOTS")) == 3 for node in nodes):
            assert time.monotonic() < deadline, "redis cluster did not converge"
            time.sleep(0.05)
        for node in nodes:
            node.close()

    def kill(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        self.processes = []


def _need_redis_server() -> None:
    if shutil.which("redis-server") is None:
        message = "redis-server binary not found"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: never a skip)")
        pytest.skip(message)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    _need_redis_server()
    cluster = ThrowawayRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()


def throwaway_redis_server(tmp_path: Path):
    if shutil.which("redis-server") is None:
        message = "redis-server binary not found"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: never a skip)")
        pytest.skip(message)
    server = ThrowawayRedis(tmp_path)
    server.start()
    return server


@pytest.fixture
def own_redis(tmp_path):
    server = throwaway_redis_server(tmp_path)
    yield server
    server.kill()


async def test_a_redis_subscription_lives_through_a_restart_and_catches_up(own_redis):
    store = RedisOnlineStore(own_redis.url, "rtml")
    store.write_rows([make_row(0)])
    rows = await store.subscribe("kraken", "BTC-USD", "1m")
    try:
        store.write_rows([make_row(1)])
        assert (await asyncio.wait_for(rows.__anext__(), 5)).event_time_ns == T0 + MINUTE
        own_redis.kill()
        waiting = asyncio.create_task(rows.__anext__())
        await asyncio.sleep(0.3)  # the subscriber notices and retries with backoff
        own_redis.start()  # empty again (no persistence): script cache and data are gone
        store.write_rows([make_row(2), make_row(3)])  # may land before the subscriber is back
        got = [await asyncio.wait_for(waiting, 10)]
        got.append(await asyncio.wait_for(rows.__anext__(), 5))
        assert [r.event_time_ns for r in got] == [T0 + 2 * MINUTE, T0 + 3 * MINUTE]
    finally:
        await rows.aclose()
        store.close()


# --- rtml online get ---------------------------------------------------------------------------

def test_rtml_online_get_prints_the_latest_row_with_event_time_and_age(store, online_url):
    from click.testing import CliRunner

    from rtml_cli.main import cli

    url, prefix = online_url
    env = {"RTML_ONLINE_URL": url, "RTML_ONLINE_PREFIX": prefix}
    store.write_rows([make_row(1), make_row(2)])
    store.write_live("kraken", "BTC-USD", T0, {"spread_bps": 1.5})
    runner = CliRunner()
    args = ["online", "get", "--exchange", "kraken", "--symbol", "BTC/USD", "--timeframe", "1m"]

    text = runner.invoke(cli, args + ["--live"], env=env)
    assert text.exit_code == 0, text.output
    assert "kraken BTC-USD 1m  feature set v1" in text.output
    assert "event time  2025-11-21T04:42:00Z  (age " in text.output
    assert "rsi_14" in text.output and "macd" in text.output and "spread_bps" in text.output

    as_json = runner.invoke(cli, args + ["--json"], env=env)
    document = json.loads(as_json.output)
    assert document["event_time"] == "2025-11-21T04:42:00Z" and document["event_time_ns"] == T0 + 2 * MINUTE
    assert document["values"] == {"close": 102.0, "rsi_14": 50.2, "macd": None}
    assert document["age_s"] == pytest.approx((time.time_ns() - (T0 + 2 * MINUTE)) / 1e9, abs=60)

    missing = runner.invoke(cli, ["online", "get", "--exchange", "kraken", "--symbol", "ETH-USD",
                                  "--timeframe", "1m"], env=env)
    assert missing.exit_code == 1 and "no online feature row for kraken ETH-USD 1m" in missing.output

    bad = runner.invoke(cli, args[:-1] + ["5min"], env=env)
    assert bad.exit_code == 2 and "timeframe '5min'" in bad.output


def test_rtml_online_get_names_an_unreachable_store():
    from click.testing import CliRunner

    from rtml_cli.main import cli

    result = CliRunner().invoke(cli, ["online", "get", "--exchange", "kraken", "--symbol", "BTC-USD",
                                      "--timeframe", "1m"],
                                env={"RTML_ONLINE_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert result.exit_code == 2 and "error: Redis at redis://127.0.0.1" in result.output


# --- properties: any float and any feature name survive every path -----------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rtml_core.stores.online_base import RESERVED_FIELDS, row_from_hash_fields, row_hash_fields  # noqa: E402

feature_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda name: name not in RESERVED_FIELDS)
feature_values = st.dictionaries(feature_names, st.floats(allow_nan=True, allow_infinity=True), max_size=12)


@given(values=feature_values, k=st.integers(0, 10**6))
def test_row_json_and_hash_fields_round_trip_any_values(values, k):
    row = make_row(k, values=values)
    assert_same_row(decode_row_json(encode_row_json(row, written_at_ns=1)), row)
    assert_same_row(row_from_hash_fields("kraken", "BTC-USD", "1m", row_hash_fields(row, 1)), row)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=feature_values)
def test_every_store_round_trips_any_values(store, values):
    row = make_row(1, values=values)
    store.write_rows([row])
    assert_same_row(store.read_latest("kraken", "BTC-USD", "1m"), row)
    assert_same_row(store.read_history("kraken", "BTC-USD", "1m", 1)[0], row)


def test_the_same_event_time_twice_in_one_batch_keeps_the_later_row(store):
    first, second = make_row(1, values={"a": 1.0}), make_row(1, values={"a": 2.0})
    store.write_rows([first, second])
    assert store.read_latest("kraken", "BTC-USD", "1m").values == {"a": 2.0}
    assert [r.values for r in store.read_history("kraken", "BTC-USD", "1m", 5)] == [{"a": 2.0}]


# --- the async read interface (the API's request path) ---------------------------------------
async def test_async_reads_give_the_latest_row_and_live_values_of_each_market(store):
    symbols = [f"C{i}-USD" for i in range(20)]
    store.write_batch([make_row(i, symbol=s) for i, s in enumerate(symbols)],
                      [LiveValues("kraken", symbols[0], T0, {"book_spread_bps": 1.5, "book_microprice": 100.25})])
    try:
        reads = await asyncio.gather(*(store.aread_market("kraken", s, "1m") for s in symbols * 3),
                                     store.aread_market("kraken", "NOPE-USD", "1m"))
        for symbol, market in zip(symbols * 3, reads):
            assert_same_row(market.row, make_row(symbols.index(symbol), symbol=symbol))
        assert dict(reads[0].live) == {"book_spread_bps": 1.5, "book_microprice": 100.25}
        assert reads[1].live == {}
        assert reads[-1].row is None and reads[-1].live == {}
        assert_same_row(await store.aread_latest("kraken", symbols[3], "1m"), make_row(3, symbol=symbols[3]))
        assert await store.aread_latest("kraken", "NOPE-USD", "1m") is None
        live = await store.aread_live("kraken", symbols[0])
        assert (live.exchange, live.symbol, live.time_ns) == ("kraken", symbols[0], T0)
        assert live.values == {"book_spread_bps": 1.5, "book_microprice": 100.25}
        assert await store.aread_live("kraken", "NOPE-USD") is None
        store.write_rows([make_row(30, symbol=symbols[0])])  # a newer row is read at once
        assert (await store.aread_market("kraken", symbols[0], "1m")).row.event_time_ns == T0 + 30 * MINUTE
    finally:
        await store.aclose()
    # closed async connections are opened again by the next read
    assert (await store.aread_market("kraken", symbols[1], "1m")).row.symbol == symbols[1]
    await store.aclose()


async def test_async_reads_refuse_names_that_cannot_be_keys_with_input_error(store):
    for exchange, symbol, timeframe in (("a:b", "BTC-USD", "1m"), ("kraken", "BTC{USD", "1m"),
                                        ("kraken", "BTC-USD", "1 m"), ("", "BTC-USD", "1m")):
        with pytest.raises(InputError):
            await store.aread_market(exchange, symbol, timeframe)
    with pytest.raises(InputError):
        await store.aread_live("kraken", "BTC USD")
    await store.aclose()


async def test_shared_counters_count_across_store_instances_or_fail_loudly(store, online_url):
    from rtml_core.errors import UnsupportedOperation

    if isinstance(store, SqliteOnlineStore):
        with pytest.raises(UnsupportedOperation, match="does not keep shared counters"):
            await store.acount("hits", 1)
        return
    url, prefix = online_url
    other = open_online_store(url, prefix=prefix)  # another worker process's store
    name = f"hits:{uuid.uuid4().hex[:8]}"
    try:
        assert [await store.acount(name, 5), await other.acount(name, 5), await store.acount(name, 5)] == [1, 2, 3]
        client = (redis.RedisCluster if store.cluster else redis.Redis).from_url(store.node_url)
        assert 0 < client.ttl(f"{prefix}:counter:{name}") <= 5  # the window ends by itself
        client.close()
        with pytest.raises(InputError):
            await store.acount("a b", 5)
    finally:
        await store.aclose()
        await other.aclose()
        other.close()


async def test_async_reads_of_an_unreachable_redis_raise_the_named_error():
    dead = RedisOnlineStore(f"redis://127.0.0.1:{free_port()}/0", prefix="rtmltest")
    try:
        with pytest.raises(OnlineStoreUnavailable, match="Redis at redis://127.0.0.1"):
            await dead.aread_market("kraken", "BTC-USD", "1m")
        with pytest.raises(OnlineStoreUnavailable):
            await dead.aread_live("kraken", "BTC-USD")
        with pytest.raises(OnlineStoreUnavailable):
            await dead.acount("hits", 1)
    finally:
        await dead.aclose()
        dead.close()


class HungServer:
    """A TCP server that accepts every connection and never answers (a hung Redis)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []

    def accept_pending(self) -> None:
        self.sock.setblocking(False)
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except BlockingIOError:
                return

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


@pytest.mark.parametrize("auth", [False, True], ids=["plain", "auth-handshake"])
async def test_failed_reads_of_a_hung_redis_close_every_connection(auth):
    from rtml_core.stores.resp import PipelinedRedis, pack_command

    hung = HungServer()
    url = f"redis://:secret@127.0.0.1:{hung.port}/3" if auth else f"redis://127.0.0.1:{hung.port}/0"
    reader = PipelinedRedis(url, connect_timeout_s=0.02, reply_timeout_s=0.02)
    try:
        with pytest.raises(TimeoutError):  # warm up whatever the loop allocates once
            await reader.execute(pack_command("PING"), 1)
        hung.accept_pending()
        before = open_fds() - len(hung.accepted)  # the client side: this process minus the server's
        for _ in range(100):
            with pytest.raises(TimeoutError):
                await reader.execute(pack_command("PING"), 1)
            hung.accept_pending()
        assert len(hung.accepted) == 101  # every read connected (and timed out in its handshake or reply)
        assert open_fds() - len(hung.accepted) <= before
        await reader.aclose()
        assert open_fds() - len(hung.accepted) <= before
    finally:
        hung.close()


async def next_row(feed, timeout: float = 10.0) -> FeatureRow:
    return await asyncio.wait_for(feed.__anext__(), timeout)


async def test_one_feed_delivers_every_watched_market_in_order_and_nothing_else(store):
    store.write_rows([make_row(0), make_row(0, symbol="ETH-USD"), make_row(0, timeframe="5m")])
    feed = store.feed()
    try:
        await feed.add("kraken", "BTC-USD", "1m")
        await feed.add("kraken", "ETH-USD", "1m")
        await feed.add("kraken", "SOL-USD", "1m")  # no row yet: its first row is delivered
        assert sorted(feed.markets) == [("kraken", s, "1m") for s in ("BTC-USD", "ETH-USD", "SOL-USD")]
        store.write_rows([make_row(1, timeframe="5m"), make_row(1, symbol="DOGE-USD")])  # not watched
        store.write_rows([make_row(-5)])  # older than BTC-USD's latest: never delivered
        store.write_rows([make_row(1), make_row(2)])
        store.write_rows([make_row(1, symbol="ETH-USD"), make_row(1, symbol="SOL-USD")])
        got = [await next_row(feed) for _ in range(4)]
        by_market = {}
        for row in got:
            by_market.setdefault(row.symbol, []).append(row.event_time_ns)
        assert by_market == {"BTC-USD": [T0 + MINUTE, T0 + 2 * MINUTE], "ETH-USD": [T0 + MINUTE],
                             "SOL-USD": [T0 + MINUTE]}
        assert_same_row(next(row for row in got if row.symbol == "BTC-USD"), make_row(1))
        feed.discard("kraken", "ETH-USD", "1m")
        store.write_rows([make_row(2, symbol="ETH-USD"), make_row(3)])
        assert (await next_row(feed)).event_time_ns == T0 + 3 * MINUTE  # ETH-USD no longer watched
        with pytest.raises(TimeoutError):
            await next_row(feed, timeout=0.5)
        with pytest.raises(InputError):
            await feed.add("a:b", "BTC-USD", "1m")
    finally:
        await feed.aclose()
        await store.aclose()


async def test_a_redis_feed_uses_one_connection_and_catches_up_after_a_restart(own_redis):
    store = RedisOnlineStore(own_redis.url, "rtml")
    symbols = [f"C{i}-USD" for i in range(30)]
    store.write_rows([make_row(0, symbol=s) for s in symbols])
    admin = redis.Redis.from_url(own_redis.url)
    before = len(admin.client_list())
    feed = store.feed()
    try:
        for symbol in symbols:
            await feed.add("kraken", symbol, "1m")
        assert len(admin.client_list()) - before <= 2  # the feed's one connection (+ the store's reads)
        admin.close()
        own_redis.kill()
        waiting = asyncio.create_task(next_row(feed, 20))
        await asyncio.sleep(0.3)  # the feed notices and retries with backoff
        own_redis.start()  # empty again: the rows below may land before the feed is back
        store.write_rows([make_row(1, symbol=symbols[0]), make_row(1, symbol=symbols[7])])
        got = sorted([(await waiting).symbol, (await next_row(feed)).symbol])
        assert got == sorted([symbols[0], symbols[7]])
    finally:
        await feed.aclose()
        await store.aclose()
        store.close()


def test_redis_key_names_cached_per_market_stay_bounded():
    from rtml_core.stores.online_redis import CACHED_MARKETS, RedisKeys

    keys = RedisKeys("rtmltest")
    for i in range(2 * CACHED_MARKETS + 7):  # names from requests: one new exchange each
        keys.market(f"ex{i}", "BTC-USD", "1m")
    assert len(keys._cache) <= CACHED_MARKETS
    assert keys.market("ex1", "BTC-USD", "1m")[0] == "rtmltest:features:{ex1:BTC-USD}:1m"
