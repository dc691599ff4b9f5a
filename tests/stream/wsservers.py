"""Local servers on 127.0.0.1 that speak each exchange's protocol, for the source tests.

Each WebSocket server answers subscribe requests with the exchange's documented ack, sends
heartbeats where the exchange does, and plays one scripted ``Session`` per connection
(connection 0 plays ``sessions[0]``, ...). A test can ``kill()`` the server (abort every TCP
connection and stop listening, like a crash) and ``start()`` it again on the same port.
``LocalHttpServer`` serves recorded-shape REST replies (Kraken ``Trades``, Binance depth).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlparse

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


@dataclass(frozen=True)
class Verbatim:
    """Send this text exactly as written (no framing, no sequence numbering)."""

    text: str


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class WaitSubscribe:
    """Wait until this connection has received ``count`` subscribe requests for ``channel``."""

    channel: str
    count: int


@dataclass(frozen=True)
class SkipSequence:
    """Coinbase: consume a sequence number without sending (a lost message)."""


@dataclass(frozen=True)
class Stream:
    """Send what ``messages()`` yields (a fresh async iterator per connection) as it comes."""

    messages: Callable[[], AsyncIterator[str]]


Step = str | Verbatim | Pause | WaitSubscribe | SkipSequence | Stream


@dataclass
class Session:
    """What one connection plays after its subscriptions are acked, then how it ends:
    ``hold`` (stay open, heartbeats continue), ``silence`` (stay open, send nothing: a dead
    feed), ``abort`` (drop TCP without a close frame), ``close`` (clean close frame)."""

    steps: list[Step]
    end: Literal["hold", "silence", "abort", "close"] = "hold"


@dataclass
class ConnState:
    ws: ServerConnection
    index: int
    channels: dict[str, int] = field(default_factory=dict)  # channel -> subscribe requests seen
    active: set[str] = field(default_factory=set)  # channels subscribed now
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    silent: bool = False
    sequence: int = 0


def utc_now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ExchangeServer:
    """Base WebSocket server: scripted sessions, heartbeats, kill and restart."""

    def __init__(
        self,
        sessions: list[Session],
        *,
        heartbeat_interval: float = 0.05,
        expected_channels: tuple[str, ...] = (),
    ) -> None:
        self.sessions = sessions
        self.heartbeat_interval = heartbeat_interval
        self.expected_channels = expected_channels
        self.port = 0
        self.connection_count = 0
        self.received: list[dict[str, Any]] = []
        self._server = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> Self:
        self._server = await serve(self._handler, "127.0.0.1", self.port, compression=None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        """Crash: abort every connection (no close frame) and stop listening."""
        server, self._server = self._server, None
        if server is None:
            return
        for connection in list(server.connections):
            connection.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        server.close(close_connections=False)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()

    # --- protocol hooks ---------------------------------------------------------------------

    async def on_open(self, state: ConnState) -> None:
        """Sent when a client connects (before any subscription)."""

    async def on_client_message(self, state: ConnState, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def heartbeat(self, state: ConnState) -> str | None:
        return None

    def frame(self, state: ConnState, text: str) -> str:
        return text

    # --- machinery -------------------------------------------------------------------------

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def send(self, state: ConnState, text: str) -> None:
        await state.ws.send(text)

    def mark_subscribe(self, state: ConnState, channel: str) -> None:
        state.channels[channel] = state.channels.get(channel, 0) + 1
        state.active.add(channel)
        if all(c in state.channels for c in self.expected_channels):
            state.subscribed.set()
        state.changed.set()

    async def _handler(self, ws: ServerConnection) -> None:
        state = ConnState(ws, self.connection_count)
        self.connection_count += 1
        session = (
            self.sessions[state.index] if state.index < len(self.sessions) else Session([], "hold")
        )
        reader = self._spawn(self._read(state))
        beats = self._spawn(self._heartbeats(state))
        play = self._spawn(self._play(state, session))
        try:
            await asyncio.wait({play, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (play, reader, beats):
                task.cancel()

    async def _play(self, state: ConnState, session: Session) -> None:
        ws = state.ws
        try:
            await self.on_open(state)
            await state.subscribed.wait()
            for step in session.steps:
                if isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, WaitSubscribe):
                    while state.channels.get(step.channel, 0) < step.count:
                        state.changed.clear()
                        await state.changed.wait()
                elif isinstance(step, SkipSequence):
                    state.sequence += 1
                elif isinstance(step, Verbatim):
                    await ws.send(step.text)
                elif isinstance(step, Stream):
                    async for text in step.messages():
                        await ws.send(self.frame(state, text))
                else:
                    await ws.send(self.frame(state, step))
            if session.end == "abort":
                ws.transport.abort()
            elif session.end == "close":
                await ws.close()
            else:
                state.silent = session.end == "silence"
                await ws.wait_closed()
        except ConnectionClosed:
            pass

    async def _read(self, state: ConnState) -> None:
        try:
            async for raw in state.ws:
                message = json.loads(raw)
                self.received.append(message)
                if not state.silent:
                    await self.on_client_message(state, message)
        except ConnectionClosed:
            pass

    async def _heartbeats(self, state: ConnState) -> None:
        try:
            while True:
                await asyncio.sleep(self.heartbeat_interval)
                beat = None if state.silent else self.heartbeat(state)
                if beat is not None:
                    await state.ws.send(beat)
        except ConnectionClosed:
            pass


# --- Kraken WebSocket v2 ------------------------------------------------------------------


class KrakenServer(ExchangeServer):
    """Kraken v2: status on connect, subscribe/unsubscribe acks per symbol, a book snapshot on
    every book subscribe (``book_snapshots[wire symbol]``), heartbeats once subscribed."""

    status = (
        '{"channel":"status","type":"update","data":[{"version":"2.0.10","system":"online",'
        '"api_version":"v2","connection_id":806193442143087786}]}'
    )

    def __init__(
        self,
        sessions: list[Session],
        *,
        book_snapshots: dict[str, str] | None = None,
        known_symbols: tuple[str, ...] = ("BTC/USD", "BTC/USDT", "ETH/USD"),
        expected_channels: tuple[str, ...] = ("trade",),
        heartbeat_interval: float = 0.05,
    ) -> None:
        super().__init__(
            sessions, heartbeat_interval=heartbeat_interval, expected_channels=expected_channels
        )
        self.book_snapshots = book_snapshots or {}
        self.known_symbols = known_symbols

    async def on_open(self, state: ConnState) -> None:
        await state.ws.send(self.status)

    async def on_client_message(self, state: ConnState, message: dict[str, Any]) -> None:
        method = message.get("method")
        params = message.get("params", {})
        channel = params.get("channel")
        if method == "ping":
            await state.ws.send(
                json.dumps(
                    {
                        "method": "pong",
                        "req_id": message.get("req_id"),
                        "time_in": utc_now_text(),
                        "time_out": utc_now_text(),
                    }
                )
            )
            return
        for symbol in params.get("symbol", []):
            base = {
                "method": method,
                "req_id": message.get("req_id"),
                "time_in": utc_now_text(),
                "time_out": utc_now_text(),
            }
            if symbol not in self.known_symbols:
                await state.ws.send(
                    json.dumps(
                        {
                            "error": f"Currency pair not supported {symbol}",
                            "success": False,
                            "symbol": symbol,
                            **base,
                        }
                    )
                )
                continue
            result: dict[str, Any] = {"channel": channel, "symbol": symbol}
            if channel == "book":
                result["depth"] = params.get("depth", 10)
            if method == "subscribe":
                result["snapshot"] = params.get("snapshot", True)
            await state.ws.send(
                json.dumps({"method": method, "result": result, "success": True, **base})
            )
            if method == "subscribe" and channel == "book" and symbol in self.book_snapshots:
                await state.ws.send(self.book_snapshots[symbol])
        if method == "subscribe":
            self.mark_subscribe(state, channel)

    def heartbeat(self, state: ConnState) -> str | None:
        return '{"channel":"heartbeat"}' if state.channels else None


def kraken_rest_trades(path: Path) -> tuple[str, list[list[Any]]]:
    """(pair, rows) of a Kraken REST ``Trades`` reply; rows keep their decimal strings."""
    reply = json.loads(path.read_text())
    ((pair, rows),) = ((k, v) for k, v in reply["result"].items() if k != "last")
    return pair, rows


def _float_text_to_ns(value: Any) -> int:
    return int(Decimal(repr(value) if isinstance(value, float) else str(value)) * 1_000_000_000)


class LiveTape:
    """A local exchange's trade tape: real captured trades (price, size, side, order type) played
    at ``per_second``, each stamped with the moment it happens (``clock``), ids counting up from
    ``first_id``. ``rows`` is the REST view (every trade so far, Kraken REST row shape, times with
    whole microseconds); ``stream()`` is one connection's view: Kraken WS v2 trade messages of
    the trades made after it subscribed."""

    def __init__(self, template: list[list[Any]], *, per_second: float = 40.0, first_id: int = 1_000_000,
                 wire_symbol: str = "BTC/USDT", clock: Callable[[], float] = time.time) -> None:
        self.template = template
        self.per_second = per_second
        self.first_id = first_id
        self.wire_symbol = wire_symbol
        self.clock = clock
        self.rows: list[list[Any]] = []
        self.listeners = 0  # connections streaming the tape so far
        self._changed = asyncio.Event()

    async def play(self, count: int) -> None:
        for i in range(count):
            price, volume, _when, side, order_type, misc, _id = self.template[(len(self.rows)) % len(self.template)]
            micros = int(self.clock() * 1_000_000)
            stamp = float(f"{micros // 1_000_000}.{micros % 1_000_000:06d}")  # repr has these digits
            self.rows.append([price, volume, stamp, side, order_type, misc, self.first_id + len(self.rows)])
            self._changed.set()
            self._changed = asyncio.Event()
            await asyncio.sleep(1 / self.per_second)

    async def stream(self) -> AsyncIterator[str]:
        index = len(self.rows)
        self.listeners += 1
        while True:
            while index >= len(self.rows):
                await self._changed.wait()
            rows, index = self.rows[index:], len(self.rows)
            yield kraken_ws_trade_message(rows, self.wire_symbol)


def kraken_ws_trade_message(rows: list[list[Any]], wire_symbol: str) -> str:
    """A WS v2 ``trade`` update carrying REST rows ``[price, volume, time, b/s, m/l, misc, id]``,
    numbers written as JSON numbers with the REST digits, timestamps in microseconds as Kraken
    v2 sends them."""
    items = []
    for price, volume, when, side, order_type, _misc, trade_id in rows:
        micros = _float_text_to_ns(when) // 1000
        stamp = datetime.fromtimestamp(micros // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        stamp += f".{micros % 1_000_000:06d}Z"
        items.append(
            f'{{"symbol":"{wire_symbol}","side":"{"buy" if side == "b" else "sell"}","price":{price},'
            f'"qty":{volume},"ord_type":"{"market" if order_type == "m" else "limit"}","trade_id":{trade_id},'
            f'"timestamp":"{stamp}"}}'
        )
    return '{"channel":"trade","type":"update","data":[' + ",".join(items) + "]}"


# --- Binance ------------------------------------------------------------------------------


class BinanceServer(ExchangeServer):
    """Binance combined streams: ``SUBSCRIBE`` answered with ``{"result":null,"id":n}``;
    payloads wrapped as ``{"stream": "<symbol>@<kind>", "data": ...}``. No app heartbeats
    (Binance relies on WebSocket pings, which the server library sends)."""

    def __init__(self, sessions: list[Session], *, depth_speed: str = "100ms") -> None:
        super().__init__(sessions, expected_channels=("SUBSCRIBE",))
        self.depth_speed = depth_speed

    async def on_client_message(self, state: ConnState, message: dict[str, Any]) -> None:
        if message.get("method") == "SUBSCRIBE":
            await state.ws.send(json.dumps({"result": None, "id": message.get("id")}))
            self.mark_subscribe(state, "SUBSCRIBE")
        elif message.get("method") == "UNSUBSCRIBE":
            await state.ws.send(json.dumps({"result": None, "id": message.get("id")}))

    def frame(self, state: ConnState, text: str) -> str:
        payload = json.loads(text)
        symbol = payload["s"].lower()
        stream = (
            f"{symbol}@trade" if payload["e"] == "trade" else f"{symbol}@depth@{self.depth_speed}"
        )
        return f'{{"stream":"{stream}","data":{text}}}'


# --- Coinbase Advanced Trade ---------------------------------------------------------------


class CoinbaseServer(ExchangeServer):
    """Coinbase Advanced Trade: one channel per subscribe, acked with a ``subscriptions``
    message; every message carries the connection's ``sequence_num`` (renumbered here);
    ``heartbeats`` every interval once subscribed; a level2 snapshot on each level2 subscribe."""

    def __init__(
        self,
        sessions: list[Session],
        *,
        l2_snapshot: str | None = None,
        expected_channels: tuple[str, ...] = ("market_trades", "level2", "heartbeats"),
        heartbeat_interval: float = 0.05,
    ) -> None:
        super().__init__(
            sessions, heartbeat_interval=heartbeat_interval, expected_channels=expected_channels
        )
        self.l2_snapshot = l2_snapshot
        self._beats = 0

    def _numbered(self, state: ConnState, payload: dict[str, Any]) -> str:
        payload["sequence_num"] = state.sequence
        state.sequence += 1
        return json.dumps(payload)

    def frame(self, state: ConnState, text: str) -> str:
        return self._numbered(state, json.loads(text))

    async def on_client_message(self, state: ConnState, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        if message.get("type") == "unsubscribe":
            state.active.discard(channel)
            return
        if message.get("type") != "subscribe":
            return
        ack = {
            "channel": "subscriptions",
            "client_id": "",
            "timestamp": utc_now_text(),
            "events": [{"subscriptions": {channel: message.get("product_ids", [])}}],
        }
        await state.ws.send(self._numbered(state, ack))
        if channel == "level2" and self.l2_snapshot is not None:
            await state.ws.send(self.frame(state, self.l2_snapshot))
        self.mark_subscribe(state, channel)

    def heartbeat(self, state: ConnState) -> str | None:
        if "heartbeats" not in state.active:
            return None
        self._beats += 1
        now = utc_now_text()
        return self._numbered(
            state,
            {
                "channel": "heartbeats",
                "client_id": "",
                "timestamp": now,
                "events": [{"current_time": now, "heartbeat_counter": self._beats}],
            },
        )


# --- REST --------------------------------------------------------------------------------


Route = Callable[[dict[str, list[str]]], tuple[int, bytes]]


class LocalHttpServer:
    """A threaded HTTP server on 127.0.0.1 answering GET ``path`` with ``routes[path](query)``."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parsed = urlparse(self.path)
                query = parse_qs(parsed.query)
                outer.requests.append((parsed.path, query))
                route = outer.routes.get(parsed.path)
                status, body = (
                    route(query) if route else (404, b'{"error":["EGeneral:Unknown method"]}')
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def kraken_trades_route(pair: str, rows: list[list[Any]], *, page_size: int = 1000) -> Route:
    """Kraken ``/0/public/Trades``: trades at or after ``since`` (seconds, or ns when huge),
    at most ``count`` (<= 1000), in id order, plus ``last`` (ns time of the last trade)."""

    def route(query: dict[str, list[str]]) -> tuple[int, bytes]:
        since_ns = 0
        if "since" in query:
            since = Decimal(query["since"][0])
            since_ns = int(since) if since > 10**12 else int(since * 1_000_000_000)
        count = min(int(query.get("count", [page_size])[0]), page_size)
        chosen = [row for row in rows if _float_text_to_ns(row[2]) >= since_ns][:count]
        last = _float_text_to_ns(chosen[-1][2]) if chosen else since_ns
        body = {"error": [], "result": {pair: chosen, "last": str(last)}}
        return 200, json.dumps(body).encode()

    return route
