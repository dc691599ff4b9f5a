"""Non-blocking reads of the online store for the request path: one round trip per prediction.

``OnlineStore`` is synchronous. For Redis the API reads through its own pipelined connection
instead: the latest feature hash and the live hash as two ``HGETALL`` sent in one write on one
asyncio connection that every request shares (Redis answers in order, so replies are matched
first in, first out), parsed by hiredis and decoded with the store's own
``row_from_hash_fields``. Many requests are in flight at once, the event loop never waits on a
socket, and a request costs one write and a share of one read instead of a pooled client's
pipeline objects. URLs it cannot speak (TLS, Unix sockets) go through ``redis.asyncio``;
SQLite (a local file, microseconds) is read directly; Redis Cluster goes through the store
in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
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


class RedisAsyncioReader:
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


CONNECT_TIMEOUT_S = 1.0
REPLY_TIMEOUT_S = 2.0
MAX_CACHED_COMMANDS = 4096


def pack_command(*parts: str | bytes) -> bytes:
    """One command in RESP, the way Redis reads it (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisConnectionLost(ConnectionError):
    pass


class _PipelinedConnection(asyncio.Protocol):
    """One Redis connection shared by every request: writes go out at once, replies come back
    in order and resolve the oldest waiting request (hiredis parses them)."""

    def __init__(self) -> None:
        import hiredis

        self._parser = hiredis.Reader(encoding="utf-8")
        self._waiting: deque[tuple[asyncio.Future, int, list]] = deque()
        self._outgoing: list[bytes] = []  # commands of this loop iteration, written together
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        parser, waiting = self._parser, self._waiting
        parser.feed(data)
        while (reply := parser.gets()) is not False:
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.abort(RedisConnectionLost("unexpected reply from Redis"))
                return
            future, count, replies = waiting[0]
            replies.append(reply)
            if len(replies) == count:
                waiting.popleft()
                if not future.done():
                    future.set_result(replies)

    def connection_lost(self, error: Exception | None) -> None:
        self.lost = True
        failure = RedisConnectionLost(f"connection to Redis lost: {error or 'closed'}")
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(failure)

    def abort(self, error: Exception) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()  # connection_lost fails whoever still waits
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)

    def send(self, packed: bytes, count: int) -> asyncio.Future:
        """Queue ``count`` commands (packed together); the future gets their ``count`` replies.

        Commands sent during one event-loop iteration leave in one write at its end (one
        system call for all the requests being served at once, in the order they were sent).
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.lost:
            future.set_exception(RedisConnectionLost("connection to Redis lost"))
            return future
        self._waiting.append((future, count, []))
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(packed)
        return future

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if not self.lost:
            self.transport.write(b"".join(outgoing))


class RedisReader:
    """Both hashes of a market in one write on one shared, pipelined Redis connection."""

    def __init__(self, store, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 reply_timeout_s: float = REPLY_TIMEOUT_S) -> None:
        from redis.connection import parse_url

        self.keys = store.keys
        options = parse_url(store.url)
        self.host, self.port = options["host"], int(options.get("port") or 6379)
        handshake = []
        if options.get("password"):
            auth = [options["username"]] if options.get("username") else []
            handshake.append(pack_command("AUTH", *auth, options["password"]))
        if int(options.get("db") or 0):
            handshake.append(pack_command("SELECT", str(int(options["db"]))))
        self.handshake = b"".join(handshake)
        self.handshake_replies = len(handshake)
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self._connection: _PipelinedConnection | None = None
        self._connecting: asyncio.Lock | None = None
        self._commands: dict[tuple[str, str, str], bytes] = {}

    @staticmethod
    def speaks(url: str) -> bool:
        """True for plain TCP ``redis://`` URLs without extra options (others use redis.asyncio)."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        return parts.scheme == "redis" and not parts.query

    def _command(self, exchange: str, symbol: str, timeframe: str) -> bytes:
        market = (exchange, symbol, timeframe)
        packed = self._commands.get(market)
        if packed is None:
            if len(self._commands) >= MAX_CACHED_COMMANDS:
                self._commands.clear()
            latest_key, _, _ = self.keys.market(exchange, symbol, timeframe)
            packed = self._commands[market] = (pack_command("HGETALL", latest_key)
                                               + pack_command("HGETALL", self.keys.live(exchange, symbol)))
        return packed

    async def _connect(self) -> _PipelinedConnection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            connection = self._connection
            if connection is not None and not connection.lost:
                return connection
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self.connect_timeout_s):
                _, connection = await loop.create_connection(_PipelinedConnection, self.host, self.port)
                if self.handshake_replies:
                    for reply in await connection.send(self.handshake, self.handshake_replies):
                        if isinstance(reply, Exception):
                            connection.abort(reply)
                            raise reply
            self._connection = connection
            return connection

    async def read(self, exchange: str, symbol: str, timeframe: str) -> MarketRead:
        connection = self._connection
        if connection is None or connection.lost:
            connection = await self._connect()
        future = connection.send(self._command(exchange, symbol, timeframe), 2)
        try:
            async with asyncio.timeout(self.reply_timeout_s):
                latest, live = await future
        except TimeoutError:
            connection.abort(TimeoutError("Redis did not answer in time"))  # replies would be out of step
            raise
        if isinstance(latest, Exception):
            raise latest
        if isinstance(live, Exception):
            raise live
        row = row_from_hash_fields(exchange, symbol, timeframe, _pairs(latest)) if latest else None
        return MarketRead(row, _pairs(live))

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.transport is not None:
            connection.transport.close()


def _pairs(flat: list[str]) -> dict[str, str]:
    """HGETALL's flat [field, value, ...] reply as a dict."""
    items = iter(flat)
    return dict(zip(items, items))


def reader_for(store) -> StoreReader | RedisReader:
    name = type(store).__name__
    if name == "RedisOnlineStore" and not getattr(store, "cluster", False):
        return RedisReader(store) if RedisReader.speaks(store.url) else RedisAsyncioReader(store)
    return StoreReader(store, in_thread=name != "SqliteOnlineStore")
