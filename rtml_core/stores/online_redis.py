"""The Redis online store: one hash per market and timeframe, a bounded history, pub/sub updates.

Key schema (``docs/online-store.md``; trading bots read these keys directly). ``{E:S}`` is a
Redis Cluster hash tag, so every key of one market lives on one slot::

    {prefix}:features:{E:S}:{T}   hash   feature -> repr(float); event_time (ns), event_time_iso,
                                         feature_set_version, written_at (ns)
    {prefix}:history:{E:S}:{T}    zset   row JSON scored by event time in ms, newest ``history`` kept
    {prefix}:live:{E:S}           hash   live microstructure value -> repr(float); event_time, ...
    {prefix}:updates:{E:S}:{T}    channel  row JSON of every row that becomes the latest

Each market's rows of a batch are applied by one Lua script (atomic: a reader never sees half a
row, and an older row never replaces a newer latest); all scripts and live hashes of a batch go
in one pipeline, so a batch costs one round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import deque
from collections.abc import Callable, Sequence

import msgspec
import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterError, NoScriptError, ReadOnlyError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from rtml_core.errors import InputError
from rtml_core.schemas import FeatureRow
from rtml_core.stores.online_base import (
    RESERVED_FIELDS,
    LiveValues,
    MarketFeed,
    MarketSnapshot,
    OnlineStore,
    OnlineStoreUnavailable,
    Subscription,
    check_key_part,
    check_row,
    decode_row_json,
    encode_row_json,
    live_from_hash_fields,
    live_hash_fields,
    row_from_hash_fields,
    row_hash_fields,
    sleep_backoff,
)
from rtml_core.stores.resp import PipelinedRedis, pack_command

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, ClusterError, TryAgainError,
                RedisClusterException, OSError)
_ASYNC_UNAVAILABLE = (*_UNAVAILABLE, TimeoutError)  # OSError covers RedisConnectionLost
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
CACHED_MARKETS = 4096
"""Most markets whose key names (and packed read commands) are kept; the cache starts over when full."""

# KEYS[1] latest hash, KEYS[2] history zset.
# ARGV[1] channel, ARGV[2] history length, ARGV[3] row count r, then r triples
# (event_time_ns, score_ms, row_json) in event-time order, then the newest row's hash fields as
# one msgpack array of strings [field, value, ...] (one argument, not 2 per feature: cheaper to send).
# Event times are compared as decimal strings: Lua numbers are doubles and would round ns.
WRITE_ROWS_LUA = """
local current = redis.call('HGET', KEYS[1], 'event_time')
local function not_older(t)
  if not current then return true end
  if #t ~= #current then return #t > #current end
  return t >= current
end
local keep = tonumber(ARGV[2])
local r = tonumber(ARGV[3])
local i = 4
local newest = nil
for _ = 1, r do
  local t, score, json = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('ZREMRANGEBYSCORE', KEYS[2], score, score)
  redis.call('ZADD', KEYS[2], score, json)
  if not_older(t) then redis.call('PUBLISH', ARGV[1], json) end
  newest = t
  i = i + 3
end
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(keep + 1))
if not_older(newest) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(cmsgpack.unpack(ARGV[i])))
  return 1
end
return 0
"""
WRITE_ROWS_SHA = hashlib.sha1(WRITE_ROWS_LUA.encode()).hexdigest()
_msgpack = msgspec.msgpack.Encoder()


class RedisKeys:
    """Key and channel names of one prefix (see the module docstring)."""

    def __init__(self, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise InputError(f"online prefix {prefix!r} must be non-empty and free of braces")
        self.prefix = prefix
        self._cache: dict[tuple[str, str, str], tuple[str, str, str]] = {}

    @staticmethod
    def tag(exchange: str, symbol: str) -> str:
        return "{" + check_key_part("exchange", exchange) + ":" + check_key_part("symbol", symbol) + "}"

    def market(self, exchange: str, symbol: str, timeframe: str) -> tuple[str, str, str]:
        """(latest hash, history zset, updates channel) of one market and timeframe."""
        key = (exchange, symbol, timeframe)
        names = self._cache.get(key)
        if names is None:
            tag = self.tag(exchange, symbol)
            tf = check_key_part("timeframe", timeframe)
            names = (
                f"{self.prefix}:features:{tag}:{tf}",
                f"{self.prefix}:history:{tag}:{tf}",
                f"{self.prefix}:updates:{tag}:{tf}",
            )
            if len(self._cache) >= CACHED_MARKETS:  # names come from requests: keep the cache bounded
                self._cache.clear()
            self._cache[key] = names
        return names

    def live(self, exchange: str, symbol: str) -> str:
        return f"{self.prefix}:live:{self.tag(exchange, symbol)}"

    def counter(self, name: str) -> str:
        if not name or _BAD_COUNTER_NAME.search(name):
            raise InputError(f"counter name {name!r} cannot be part of a Redis key")
        return f"{self.prefix}:counter:{name}"


_BAD_COUNTER_NAME = re.compile(r"[{}\s*?\[\]]")


def split_cluster_url(url: str) -> tuple[bool, str]:
    """``redis+cluster://host:port`` -> (True, ``redis://host:port``); other URLs -> (False, url)."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() in CLUSTER_SCHEMES:
        return True, f"{scheme.split('+')[0]}{sep}{rest}"
    return False, url


def _client_options() -> dict:
    # Fail fast and let the caller (the sink) own retries: one quick retry covers a pooled
    # connection that died with a Redis restart.
    return {
        "socket_connect_timeout": 1.0,
        "socket_timeout": 2.0,
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        "health_check_interval": 30,
    }


class RedisOnlineStore(OnlineStore):
    def __init__(
        self,
        url: str,
        prefix: str = "rtml",
        history: int = 100,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        client: redis.Redis | None = None,
    ) -> None:
        """``redis://`` (one server) or ``redis+cluster://seed:port`` (Redis Cluster, any node as seed).

        ``client`` (optional, ``decode_responses=True``) replaces the one built from ``url``.
        """
        if history < 1:
            raise InputError(f"online history length must be at least 1, got {history}")
        self.url = url
        self.history = history
        self.keys = RedisKeys(prefix)
        self.cluster, self.node_url = split_cluster_url(url)
        self._clock_ns = clock_ns
        self._client_or_none = client
        # async reads: one shared pipelined connection (plain redis://), else redis.asyncio;
        # a cluster reads through the synchronous cluster client in a worker thread
        self._pipelined = PipelinedRedis(url) if not self.cluster and PipelinedRedis.speaks(url) else None
        self._async_client: redis.asyncio.Redis | None = None
        self._read_commands: dict[tuple[str, str, str], bytes] = {}
        if client is None and not self.cluster:  # a cluster client connects when built: built on first use
            self._client_or_none = redis.Redis.from_url(url, decode_responses=True, **_client_options())

    @property
    def _client(self):
        if self._client_or_none is None:
            try:
                self._client_or_none = redis.RedisCluster.from_url(
                    self.node_url, decode_responses=True, **_client_options())
            except _UNAVAILABLE as error:
                raise OnlineStoreUnavailable(
                    f"Redis Cluster at {_safe_url(self.url)} is unavailable: {error}") from error
        return self._client_or_none

    # writes ---------------------------------------------------------------------------------
    def write_batch(self, rows: Sequence[FeatureRow], live: Sequence[LiveValues] = ()) -> None:
        if not rows and not live:
            return
        now = self._clock_ns()
        by_market: dict[tuple[str, str, str], list[FeatureRow]] = {}
        for row in rows:
            check_row(row, now)
            by_market.setdefault((row.exchange, row.symbol, row.timeframe), []).append(row)
        commands: list[tuple] = []
        for market, market_rows in by_market.items():
            market_rows.sort(key=lambda r: r.event_time_ns)
            if len(market_rows) > 1:  # the same event time twice in one batch: the later one wins
                market_rows = [row for row, after in zip(market_rows, market_rows[1:])
                               if row.event_time_ns != after.event_time_ns] + [market_rows[-1]]
            latest_key, history_key, channel = self.keys.market(*market)
            args: list = [channel, self.history, len(market_rows)]
            for row in market_rows:
                args += (row.event_time_ns, row.event_time_ns // 1_000_000, encode_row_json(row, now))
            args.append(_msgpack.encode([x for pair in row_hash_fields(market_rows[-1], now).items() for x in pair]))
            commands.append(("evalsha", latest_key, history_key, args))
        for values in live:
            commands.append(("hset", self.keys.live(values.exchange, values.symbol), live_hash_fields(values, now)))
        try:
            self._execute(commands)
        except NoScriptError:  # script cache empty (Redis restarted): load it and write again
            self._call(self._client.script_load, WRITE_ROWS_LUA)
            self._execute(commands)

    def _execute(self, commands: list[tuple]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            if command[0] == "evalsha":
                _, latest_key, history_key, args = command
                # execute_command: redis-py blocks the evalsha() helper in cluster pipelines, while
                # EVALSHA itself routes fine (both keys share the market's hash-tag slot)
                pipe.execute_command("EVALSHA", WRITE_ROWS_SHA, 2, latest_key, history_key, *args)
            else:
                pipe.hset(command[1], mapping=command[2])
        self._call(pipe.execute)

    # reads ----------------------------------------------------------------------------------
    def read_latest(self, exchange: str, symbol: str, timeframe: str) -> FeatureRow | None:
        latest_key, _, _ = self.keys.market(exchange, symbol, timeframe)
        fields = self._call(self._client.hgetall, latest_key)
        return row_from_hash_fields(exchange, symbol, timeframe, fields) if fields else None

    def read_history(self, exchange: str, symbol: str, timeframe: str, n: int) -> list[FeatureRow]:
        if n <= 0:
            return []
        _, history_key, _ = self.keys.market(exchange, symbol, timeframe)
        members = self._call(self._client.zrevrange, history_key, 0, n - 1)
        return [decode_row_json(member) for member in members]

    def read_live(self, exchange: str, symbol: str) -> LiveValues | None:
        fields = self._call(self._client.hgetall, self.keys.live(exchange, symbol))
        return live_from_hash_fields(exchange, symbol, fields) if fields else None

    def subscribe(self, exchange: str, symbol: str, timeframe: str) -> Subscription:
        return RedisSubscription(self, exchange, symbol, timeframe)

    def feed(self) -> MarketFeed:
        return RedisMarketFeed(self)

    async def _alatest_event_time(self, latest_key: str) -> int | None:
        """HGET event_time of a latest hash without a connection of its own (async reads' path)."""
        if self._pipelined is not None:
            (latest,) = await self._pipelined.execute(pack_command("HGET", latest_key, "event_time"), 1)
            if isinstance(latest, Exception):
                raise RedisConnectionError(f"Redis answered an error: {latest}")
        elif self.cluster:
            latest = await asyncio.to_thread(self._client.hget, latest_key, "event_time")
        else:
            latest = await self._asyncio_client().hget(latest_key, "event_time")
        return None if latest is None else int(latest)

    def _rows_since(self, history_key: str, after_ms: int) -> list[FeatureRow]:
        return [decode_row_json(member) for member in self._client.zrangebyscore(history_key, after_ms, "+inf")]

    # async reads (the API's request path) ---------------------------------------------------
    def _asyncio_client(self) -> redis.asyncio.Redis:
        if self._async_client is None:
            self._async_client = redis.asyncio.Redis.from_url(
                self.url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0)
        return self._async_client

    def _read_command(self, exchange: str, symbol: str, timeframe: str) -> bytes:
        """HGETALL of the latest hash and of the live hash, packed once per market (bounded)."""
        market = (exchange, symbol, timeframe)
        packed = self._read_commands.get(market)
        if packed is None:
            latest_key, _, _ = self.keys.market(exchange, symbol, timeframe)
            packed = pack_command("HGETALL", latest_key) + pack_command("HGETALL", self.keys.live(exchange, symbol))
            if len(self._read_commands) >= CACHED_MARKETS:
                self._read_commands.clear()
            self._read_commands[market] = packed
        return packed

    async def aread_market(self, exchange: str, symbol: str, timeframe: str) -> MarketSnapshot:
        if self.cluster:
            return await super().aread_market(exchange, symbol, timeframe)
        try:
            if self._pipelined is not None:
                latest, live = await self._pipelined.execute(self._read_command(exchange, symbol, timeframe), 2)
                if isinstance(latest, Exception) or isinstance(live, Exception):
                    raise RedisConnectionError(f"Redis answered an error: {latest if isinstance(latest, Exception) else live}")
                latest, live = _pairs(latest), _pairs(live)
            else:
                pipe = self._asyncio_client().pipeline(transaction=False)
                pipe.hgetall(self.keys.market(exchange, symbol, timeframe)[0])
                pipe.hgetall(self.keys.live(exchange, symbol))
                latest, live = await pipe.execute()
        except _ASYNC_UNAVAILABLE as error:
            raise OnlineStoreUnavailable(f"Redis at {_safe_url(self.url)} is unavailable: "
                                         f"{type(error).__name__}: {error}") from error
        row = row_from_hash_fields(exchange, symbol, timeframe, latest) if latest else None
        return MarketSnapshot(row, {name: float(value) for name, value in live.items()
                                    if name not in RESERVED_FIELDS} if live else None)

    async def aread_live(self, exchange: str, symbol: str) -> LiveValues | None:
        if self.cluster:
            return await super().aread_live(exchange, symbol)
        key = self.keys.live(exchange, symbol)
        try:
            if self._pipelined is not None:
                (fields,) = await self._pipelined.execute(pack_command("HGETALL", key), 1)
                if isinstance(fields, Exception):
                    raise RedisConnectionError(f"Redis answered an error: {fields}")
                fields = _pairs(fields)
            else:
                fields = await self._asyncio_client().hgetall(key)
        except _ASYNC_UNAVAILABLE as error:
            raise OnlineStoreUnavailable(f"Redis at {_safe_url(self.url)} is unavailable: "
                                         f"{type(error).__name__}: {error}") from error
        return live_from_hash_fields(exchange, symbol, fields) if fields else None

    async def acount(self, name: str, window_s: int) -> int:
        key = self.keys.counter(name)
        try:
            if self._pipelined is not None:  # SET NX EX opens the window, INCR counts (keeps the TTL)
                opened, count = await self._pipelined.execute(
                    pack_command("SET", key, "0", "EX", str(window_s), "NX") + pack_command("INCR", key), 2)
                if isinstance(count, Exception):
                    raise RedisConnectionError(f"Redis answered an error: {count}")
                return int(count)
            if self.cluster:
                return await asyncio.to_thread(self._count_sync, key, window_s)
            pipe = self._asyncio_client().pipeline(transaction=False)
            pipe.set(key, 0, ex=window_s, nx=True)
            pipe.incr(key)
            return int((await pipe.execute())[1])
        except _ASYNC_UNAVAILABLE as error:
            raise OnlineStoreUnavailable(f"Redis at {_safe_url(self.url)} is unavailable: "
                                         f"{type(error).__name__}: {error}") from error

    def _count_sync(self, key: str, window_s: int) -> int:
        pipe = self._client.pipeline(transaction=False)
        pipe.set(key, 0, ex=window_s, nx=True)
        pipe.incr(key)
        return int(pipe.execute()[1])

    async def aclose(self) -> None:
        if self._pipelined is not None:
            await self._pipelined.aclose()
        client, self._async_client = self._async_client, None
        if client is not None:
            await client.aclose()

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except (*_UNAVAILABLE, OnlineStoreUnavailable):
            return False

    def close(self) -> None:
        if self._client_or_none is not None:
            self._client_or_none.close()

    def _call(self, function, *args):
        try:
            return function(*args)
        except _UNAVAILABLE as error:
            raise OnlineStoreUnavailable(f"Redis at {_safe_url(self.url)} is unavailable: {error}") from error


def _pairs(flat: list[str]) -> dict[str, str]:
    """HGETALL's flat [field, value, ...] reply as a dict."""
    items = iter(flat)
    return dict(zip(items, items))


def _safe_url(url: str) -> str:
    """The URL without a password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


async def _next_message(listener, kind: str, catch_up) -> dict | list[FeatureRow]:
    """The next pub/sub message of ``kind`` on ``listener._pubsub``; a lost connection is
    reopened with backoff (``listener._connect``/``_disconnect``) and then ``await catch_up()``
    is returned when it found rows written meanwhile."""
    attempt = 0
    while True:
        try:
            if listener._pubsub is None:
                await listener._connect()
                attempt = 0
                rows = await catch_up()
                if rows:
                    return rows
                continue
            message = await listener._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["type"] == kind:
                return message
        except _UNAVAILABLE:
            await listener._disconnect()
            await sleep_backoff(attempt)
            attempt += 1


class RedisMarketFeed(MarketFeed):
    """One pattern subscription (``PSUBSCRIBE {prefix}:updates:*``) for every watched market.

    One Redis connection however many markets are watched; messages of markets nobody watches
    are dropped by their channel name, undecoded. After a lost connection it reconnects with
    backoff and queues each watched market's rows written meanwhile (from history). On Redis
    Cluster it listens on the seed node (a PUBLISH reaches every node).
    """

    def __init__(self, store: RedisOnlineStore) -> None:
        super().__init__()
        self._store = store
        self._pattern = f"{store.keys.prefix}:updates:*"
        self._channels: dict[bytes, tuple[str, str, str]] = {}
        self._client: redis.asyncio.Redis | None = None
        self._pubsub = None
        self._started = False
        self._opening: asyncio.Lock | None = None

    async def add(self, exchange: str, symbol: str, timeframe: str) -> None:
        _, _, channel = self._store.keys.market(exchange, symbol, timeframe)
        self._channels[channel.encode()] = (exchange, symbol, timeframe)
        await super().add(exchange, symbol, timeframe)

    def discard(self, exchange: str, symbol: str, timeframe: str) -> None:
        super().discard(exchange, symbol, timeframe)
        self._channels = {c: m for c, m in self._channels.items() if m != (exchange, symbol, timeframe)}

    async def _connect(self) -> None:
        self._client = redis.asyncio.Redis.from_url(self._store.node_url, **_client_options())
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.psubscribe(self._pattern)

    async def _disconnect(self) -> None:
        pubsub, client, self._pubsub, self._client = self._pubsub, self._client, None, None
        for closing in (pubsub, client):
            if closing is not None:
                try:
                    await closing.aclose()
                except _UNAVAILABLE:
                    pass

    async def _open(self) -> None:
        if self._started:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:  # callers racing to open share one connection
            if self._started:
                return
            try:
                await self._connect()
            except _UNAVAILABLE as error:
                await self._disconnect()
                raise OnlineStoreUnavailable(
                    f"Redis at {_safe_url(self._store.url)} is unavailable: {error}") from error
            self._started = True

    async def _latest_event_time(self, market: tuple[str, str, str]) -> int | None:
        try:
            return await self._store._alatest_event_time(self._store.keys.market(*market)[0])
        except _ASYNC_UNAVAILABLE as error:
            raise OnlineStoreUnavailable(f"Redis at {_safe_url(self._store.url)} is unavailable: {error}") from error

    def _catch_up(self) -> list[FeatureRow]:
        rows: list[FeatureRow] = []
        for market, last in list(self._last.items()):
            rows += self._store._rows_since(self._store.keys.market(*market)[1], max(last, 0) // 1_000_000)
        return rows

    async def _next_rows(self) -> list[FeatureRow]:
        while True:
            message = await _next_message(self, "pmessage", lambda: asyncio.to_thread(self._catch_up))
            if isinstance(message, list):  # caught up after a reconnect
                return message
            market = self._channels.get(message["channel"])
            if market is not None and market in self._last:
                return [decode_row_json(message["data"])]

    async def _close(self) -> None:
        await self._disconnect()


class RedisSubscription(Subscription):
    """Redis pub/sub on the market's updates channel; reconnects and catches up from history.

    On Redis Cluster the subscription listens on the seed node (a PUBLISH reaches every node)
    and reads the latest row and the history through a cluster client.
    """

    def __init__(self, store: RedisOnlineStore, exchange: str, symbol: str, timeframe: str) -> None:
        super().__init__(exchange, symbol, timeframe)
        self._url = store.url
        self._node_url = store.node_url
        self._cluster = store.cluster
        self._latest_key, self._history_key, self._channel = store.keys.market(exchange, symbol, timeframe)
        self._pipelined = store._pipelined  # the store's shared read connection, when it has one
        self._client: redis.asyncio.Redis | None = None
        self._reader = None
        self._pubsub = None
        self._pending: deque[FeatureRow] = deque()

    async def _connect(self) -> None:
        self._client = redis.asyncio.Redis.from_url(self._node_url, **_client_options())
        self._reader = (redis.asyncio.RedisCluster.from_url(self._node_url, **_client_options())
                        if self._cluster else self._client)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._channel)

    async def _disconnect(self) -> None:
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()
            except _UNAVAILABLE:
                pass
        for client in {id(c): c for c in (self._client, self._reader) if c is not None}.values():
            try:
                await client.aclose()
            except _UNAVAILABLE:
                pass
        self._pubsub = self._client = self._reader = None

    async def _open(self) -> int | None:
        try:
            await self._connect()
            if self._pipelined is not None:  # no second connection per subscription
                (latest,) = await self._pipelined.execute(pack_command("HGET", self._latest_key, "event_time"), 1)
                if isinstance(latest, Exception):
                    raise RedisConnectionError(f"Redis answered an error: {latest}")
            else:
                latest = await self._reader.hget(self._latest_key, "event_time")
        except _ASYNC_UNAVAILABLE as error:
            await self._disconnect()
            raise OnlineStoreUnavailable(f"Redis at {_safe_url(self._url)} is unavailable: {error}") from error
        return None if latest is None else int(latest)

    async def _catch_up(self) -> list[FeatureRow]:
        """After a reconnect: the rows written meanwhile (newer than the last one yielded)."""
        after_ms = max(self._last_event_time_ns, 0) // 1_000_000
        members = await self._reader.zrangebyscore(self._history_key, after_ms, "+inf")
        return [decode_row_json(member) for member in members]

    async def _next_row(self) -> FeatureRow:
        while True:
            if self._pending:
                return self._pending.popleft()
            message = await _next_message(self, "message", self._catch_up)
            if isinstance(message, list):  # caught up after a reconnect
                self._pending.extend(message)
                continue
            return decode_row_json(message["data"])

    async def _close(self) -> None:
        await self._disconnect()
