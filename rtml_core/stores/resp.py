"""One pipelined Redis connection for the request path: RESP out, hiredis in, replies in order.

Every caller on one event loop shares one connection: the commands sent during one loop
iteration leave in one write at its end, Redis answers in order, and each reply resolves the
oldest waiting caller. Used by ``RedisOnlineStore``'s async reads for plain ``redis://`` URLs.

Every connection it opens is closed on every failure path (connect, handshake, reply timeout,
an out-of-step reply, cancellation) and by ``aclose``.
"""

from __future__ import annotations

import asyncio
from collections import deque

CONNECT_TIMEOUT_S = 1.0
REPLY_TIMEOUT_S = 2.0


def pack_command(*parts: str | bytes | int) -> bytes:
    """One command in RESP, the way Redis reads it (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisConnectionLost(ConnectionError):
    """The shared connection closed (or was aborted) while commands waited for replies."""


class _PipelinedConnection(asyncio.Protocol):
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
        try:
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
        except Exception as error:  # noqa: BLE001 - hiredis.ProtocolError: not Redis speaking
            self.abort(RedisConnectionLost(f"Redis protocol error: {error}"))

    def connection_lost(self, error: Exception | None) -> None:
        self.lost = True
        self._fail_waiting(RedisConnectionLost(f"connection to Redis lost: {error or 'closed'}"))

    def abort(self, error: Exception) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()
        self._fail_waiting(error)

    def _fail_waiting(self, error: Exception) -> None:
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)

    def send(self, packed: bytes, count: int) -> asyncio.Future:
        """Queue ``count`` packed commands; the future gets their ``count`` replies (errors as
        ``hiredis.ReplyError`` values in the list)."""
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


class PipelinedRedis:
    """A plain-TCP ``redis://`` server through one shared pipelined connection (reconnects on demand).

    ``execute`` raises ``OSError`` (``RedisConnectionLost`` included) or ``TimeoutError`` when
    Redis cannot be reached or does not answer in time.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 reply_timeout_s: float = REPLY_TIMEOUT_S) -> None:
        from redis.connection import parse_url

        options = parse_url(url)
        self.host, self.port = options.get("host") or "localhost", int(options.get("port") or 6379)
        handshake = []
        if options.get("password"):
            auth = [options["username"]] if options.get("username") else []
            handshake.append(pack_command("AUTH", *auth, options["password"]))
        if int(options.get("db") or 0):
            handshake.append(pack_command("SELECT", str(int(options["db"]))))
        self._handshake = b"".join(handshake)
        self._handshake_replies = len(handshake)
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self._connection: _PipelinedConnection | None = None
        self._connecting: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def speaks(url: str) -> bool:
        """True for plain TCP ``redis://`` URLs without options (TLS, Unix sockets: redis.asyncio)."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        return parts.scheme == "redis" and not parts.query

    async def _connect(self) -> _PipelinedConnection:
        loop = asyncio.get_running_loop()
        if self._connecting is None or self._loop is not loop:  # a lock belongs to one loop
            stale, self._connection = self._connection, None
            if stale is not None and stale.transport is not None:
                try:  # a connection of an earlier event loop (tests run several loops)
                    stale.transport.abort()
                except RuntimeError:
                    pass
            self._connecting, self._loop = asyncio.Lock(), loop
        async with self._connecting:
            connection = self._connection
            if connection is not None and not connection.lost:
                return connection
            transport = None
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    transport, connection = await loop.create_connection(
                        _PipelinedConnection, self.host, self.port)
                    if self._handshake_replies:
                        for reply in await connection.send(self._handshake, self._handshake_replies):
                            if isinstance(reply, Exception):
                                raise RedisConnectionLost(f"Redis refused the handshake: {reply}")
            except BaseException:
                if transport is not None:  # connected, but the handshake failed or timed out
                    transport.abort()
                raise
            self._connection = connection
            return connection

    async def execute(self, packed: bytes, count: int) -> list:
        """Send ``count`` packed commands in one write; their replies, in order."""
        connection = self._connection
        if connection is None or connection.lost or self._loop is not asyncio.get_running_loop():
            connection = await self._connect()
        future = connection.send(packed, count)
        try:
            async with asyncio.timeout(self.reply_timeout_s):
                return await future
        except TimeoutError:
            connection.abort(TimeoutError("Redis did not answer in time"))  # replies would be out of step
            raise

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.transport is not None and not connection.lost:
            connection.transport.close()
