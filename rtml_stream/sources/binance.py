"""Binance spot: ``<symbol>@trade`` and the diff depth stream spliced onto a REST snapshot.

The depth splice follows Binance's documented procedure:
1. read the diff stream and remember the first diff's ``U``;
2. fetch a REST snapshot (``/api/v3/depth``); if its ``lastUpdateId`` is older than that first
   ``U``, fetch again;
3. drop diffs with ``u <= lastUpdateId``; the first diff applied must straddle
   (``U <= lastUpdateId + 1 <= u``);
4. every later diff must continue exactly (``U == previous u + 1``); otherwise the book is
   dropped, the gap counted, and a fresh snapshot spliced in.

Binance's ``m: true`` means the buyer was the maker, so the taker sold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Literal

import httpx
import msgspec

from rtml_core.book import OrderBook
from rtml_core.schemas import BookLevel, BookUpdate, Trade
from rtml_core.symbols import normalize_symbol, to_exchange_symbol
from rtml_stream.metrics import StreamMetrics
from rtml_stream.sources.base import (
    Event,
    Malformed,
    ReconnectPolicy,
    SubscriptionError,
    WebSocketSource,
    log,
)

DEFAULT_URL = "wss://stream.binance.com:9443/stream"
DEFAULT_REST_URL = "https://api.binance.com"
SNAPSHOT_LIMITS = (5, 10, 20, 50, 100, 500, 1000, 5000)

SnapshotFetcher = Callable[[str, int], Awaitable[bytes]]
"""``fetch(exchange_symbol, limit)`` -> the raw JSON of ``GET /api/v3/depth``."""


class _Envelope(msgspec.Struct):
    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw()
    id: int | None = None
    result: msgspec.Raw = msgspec.Raw()
    error: msgspec.Raw = msgspec.Raw()
    e: str | None = None  # a raw (not combined) stream payload


class _Trade(msgspec.Struct, tag_field="e", tag="trade"):
    E: int
    s: str
    t: int
    p: Decimal
    q: Decimal
    T: int
    m: bool


class _Depth(msgspec.Struct, tag_field="e", tag="depthUpdate"):
    E: int
    s: str
    U: int
    u: int
    b: list[tuple[Decimal, Decimal]]
    a: list[tuple[Decimal, Decimal]]


class _Snapshot(msgspec.Struct):
    lastUpdateId: int
    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]


_envelope = msgspec.json.Decoder(_Envelope)
_payload = msgspec.json.Decoder(_Trade | _Depth)
_snapshot = msgspec.json.Decoder(_Snapshot)


class HttpSnapshotFetcher:
    """``GET {rest_url}/api/v3/depth?symbol=...&limit=...`` over one reused httpx.AsyncClient."""

    def __init__(
        self,
        rest_url: str = DEFAULT_REST_URL,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.rest_url = rest_url.rstrip("/")
        self._client = client
        self._owns_client = client is None
        self.timeout = timeout

    async def __call__(self, symbol: str, limit: int) -> bytes:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, headers={"User-Agent": "rtml"})
        response = await self._client.get(
            f"{self.rest_url}/api/v3/depth", params={"symbol": symbol, "limit": limit}
        )
        response.raise_for_status()
        return response.content

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None


TradeBackfill = Callable[[str, int, int | None], Awaitable[list[Trade]]]
"""``backfill(symbol, first_id, last_id)`` -> the trades with ids in [first_id, last_id] (None: to the newest)."""


class _HistoricalTrade(msgspec.Struct):
    id: int
    price: Decimal
    qty: Decimal
    time: int
    isBuyerMaker: bool


_historical = msgspec.json.Decoder(list[_HistoricalTrade])


class HttpTradesBackfill:
    """Missing trades by id from ``GET /api/v3/historicalTrades?symbol=&fromId=&limit=1000``."""

    page = 1000

    def __init__(
        self,
        rest_url: str = DEFAULT_REST_URL,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.rest_url = rest_url.rstrip("/")
        self._client = client
        self._owns_client = client is None
        self.timeout = timeout

    async def __call__(self, symbol: str, first_id: int, last_id: int | None) -> list[Trade]:
        """Trades ``first_id..last_id`` (``last_id`` None: up to the newest), in id order."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, headers={"User-Agent": "rtml"})
        wire = to_exchange_symbol("binance", symbol)
        found: list[Trade] = []
        next_id = first_id
        while last_id is None or next_id <= last_id:
            limit = self.page if last_id is None else min(self.page, last_id - next_id + 1)
            response = await self._client.get(
                f"{self.rest_url}/api/v3/historicalTrades",
                params={"symbol": wire, "fromId": next_id, "limit": limit},
            )
            response.raise_for_status()
            rows = _historical.decode(response.content)
            if not rows:
                break
            for row in rows:
                if last_id is not None and row.id > last_id:
                    break
                side = "sell" if row.isBuyerMaker else "buy"
                found.append(
                    Trade("binance", symbol, row.id, row.time * 1_000_000, row.price, row.qty, side)
                )
            next_id = rows[-1].id + 1
            if last_id is None and len(rows) < limit:
                break  # caught up with the newest trade
        return found

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None


class _DepthState:
    __slots__ = ("book", "first_u", "last_update_id", "synced")

    def __init__(self) -> None:
        self.book = OrderBook()
        self.last_update_id: int | None = None  # the snapshot's, then each applied diff's u
        self.synced = False  # the straddling first diff has been applied
        self.first_u: int | None = None

    def reset(self) -> None:
        self.book.clear()
        self.last_update_id = None
        self.synced = False
        self.first_u = None


def _levels(pairs: list[tuple[Decimal, Decimal]]) -> tuple[BookLevel, ...]:
    return tuple(BookLevel(price, size) for price, size in pairs)


class BinanceSource(WebSocketSource):
    """Trades and a spliced L2 book per symbol from Binance (or Binance.US with its URLs)."""

    exchange = "binance"
    default_idle_timeout = (
        60.0  # no app heartbeats: WebSocket pings keep the link, data keeps us awake
    )
    heartbeat_grace_s = 20.0  # no heartbeat proves a quiet link: idle time may run 20 s past the last message

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        url: str = DEFAULT_URL,
        rest_url: str = DEFAULT_REST_URL,
        channels: Sequence[str] = ("trade", "depth"),
        depth: int = 1000,
        depth_speed: str = "100ms",
        snapshot_fetcher: SnapshotFetcher | None = None,
        snapshot_attempts: int = 5,
        trade_backfill: TradeBackfill | None | Literal["default"] = "default",
        backfill_attempts: int = 3,
        metrics: StreamMetrics | None = None,
        idle_timeout: float | None = None,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        reconnect: ReconnectPolicy | None = None,
    ) -> None:
        super().__init__(
            url,
            symbols,
            metrics=metrics,
            idle_timeout=idle_timeout,
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            reconnect=reconnect,
        )
        unknown = set(channels) - {"trade", "depth"}
        if unknown or not channels:
            raise ValueError(f"channels must be 'trade' and/or 'depth', got {list(channels)}")
        if depth not in SNAPSHOT_LIMITS:
            raise ValueError(
                f"Binance snapshot depth must be one of {SNAPSHOT_LIMITS}, got {depth}"
            )
        if depth_speed not in ("100ms", "1000ms"):
            raise ValueError(f"depth_speed must be '100ms' or '1000ms', got {depth_speed!r}")
        self.channels = tuple(channels)
        self.depth = depth
        self.depth_speed = depth_speed
        self.fetch_snapshot: SnapshotFetcher = snapshot_fetcher or HttpSnapshotFetcher(rest_url)
        self.snapshot_attempts = max(1, snapshot_attempts)
        self.trade_backfill: TradeBackfill | None = (
            HttpTradesBackfill(rest_url) if trade_backfill == "default" else trade_backfill
        )
        self.backfill_attempts = max(1, backfill_attempts)
        self._wire = {s: to_exchange_symbol("binance", s) for s in self.symbols}
        self._canonical = {w: s for s, w in self._wire.items()}
        self.depth_state: dict[str, _DepthState] = {s: _DepthState() for s in self.symbols}
        self._request_id = 0

    async def close(self) -> None:
        await super().close()
        for owned in (self.fetch_snapshot, self.trade_backfill):
            if isinstance(owned, HttpSnapshotFetcher | HttpTradesBackfill):
                await owned.aclose()

    @property
    def books(self) -> dict[str, OrderBook]:
        return {symbol: state.book for symbol, state in self.depth_state.items()}

    def streams(self) -> list[str]:
        names = []
        for symbol in self.symbols:
            wire = self._wire[symbol].lower()
            if "trade" in self.channels:
                names.append(f"{wire}@trade")
            if "depth" in self.channels:
                names.append(
                    f"{wire}@depth@{self.depth_speed}"
                    if self.depth_speed != "1000ms"
                    else f"{wire}@depth"
                )
        return names

    def subscriptions(self) -> list[dict]:
        self._request_id += 1
        return [{"method": "SUBSCRIBE", "params": self.streams(), "id": self._request_id}]

    def on_connect(self) -> None:
        for state in self.depth_state.values():
            state.reset()

    def _symbol(self, wire: str) -> str:
        symbol = self._canonical.get(wire)
        if symbol is None:
            try:
                symbol = normalize_symbol(wire)
            except Exception as error:
                raise Malformed("unknown_symbol", wire) from error
            if symbol not in self.depth_state:
                raise Malformed("unknown_symbol", wire)
            self._canonical[wire] = symbol
        return symbol

    async def handle(self, raw: bytes) -> Sequence[Event]:
        envelope = _envelope.decode(raw)
        if envelope.data:
            payload = _payload.decode(envelope.data)
        elif envelope.e is not None:
            payload = _payload.decode(raw)
        elif envelope.id is not None:
            if envelope.error:
                raise SubscriptionError(
                    f"Binance rejected request {envelope.id}: {bytes(envelope.error).decode()}"
                )
            log.info("binance_ack", id=envelope.id)
            return ()
        elif envelope.error:
            log.warning(
                "binance_error", error=bytes(envelope.error).decode("utf-8", "replace")[:300]
            )
            return ()
        else:
            raise Malformed("unknown_message", "no stream, data or id")
        if isinstance(payload, _Trade):
            return await self._on_trade(payload)
        return await self._on_depth(payload)

    async def _on_trade(self, payload: _Trade) -> list[Event]:
        side = "sell" if payload.m else "buy"  # m: the buyer was the maker, so the taker sold
        trade = Trade(
            self.exchange,
            self._symbol(payload.s),
            payload.t,
            payload.T * 1_000_000,
            payload.p,
            payload.q,
            side,
        )
        return [trade]  # sequenced (duplicates, id gaps) by the session loop

    async def _on_depth(self, diff: _Depth) -> list[Event]:
        symbol = self._symbol(diff.s)
        state = self.depth_state[symbol]
        out: list[Event] = []
        if state.last_update_id is None:
            state.first_u = diff.U
            snapshot = await self._load_snapshot(symbol, state)
            if snapshot is None:
                return out
            out.append(snapshot)
        last = state.last_update_id
        if diff.u <= last:
            return out  # already inside the snapshot
        if not state.synced and not (diff.U <= last + 1 <= diff.u):
            return out + await self._resync(
                symbol, state, diff, "first diff does not straddle the snapshot"
            )
        if state.synced and diff.U != last + 1:
            return out + await self._resync(symbol, state, diff, f"U={diff.U} after u={last}")
        bids, asks = _levels(diff.b), _levels(diff.a)
        state.book.apply_update(bids, asks)
        state.last_update_id = diff.u
        state.synced = True
        self.metrics.book_updates_in.labels(self.exchange, symbol).inc()
        out.append(
            BookUpdate(self.exchange, symbol, diff.E * 1_000_000, bids, asks, sequence=diff.u)
        )
        return out

    async def _resync(self, symbol: str, state: _DepthState, diff: _Depth, why: str) -> list[Event]:
        """Drop the book and splice a fresh snapshot in, starting from this diff."""
        self.metrics.sequence_gaps.labels(self.exchange, symbol).inc()
        log.warning("depth_gap", exchange=self.exchange, symbol=symbol, detail=why)
        state.reset()
        return await self._on_depth(diff)

    async def _load_snapshot(self, symbol: str, state: _DepthState) -> BookUpdate | None:
        """Fetch a snapshot no older than the first buffered diff; None if every attempt failed."""
        delays = self.reconnect_policy.delays()
        for attempt in range(1, self.snapshot_attempts + 1):
            try:
                snapshot = _snapshot.decode(
                    await self.fetch_snapshot(self._wire[symbol], self.depth)
                )
            except (httpx.HTTPError, msgspec.DecodeError, OSError) as error:
                log.warning(
                    "snapshot_failed",
                    exchange=self.exchange,
                    symbol=symbol,
                    attempt=attempt,
                    error=repr(error),
                )
            else:
                if state.first_u is None or snapshot.lastUpdateId + 1 >= state.first_u:
                    bids, asks = _levels(snapshot.bids), _levels(snapshot.asks)
                    state.book.apply_snapshot(bids, asks)
                    state.last_update_id = snapshot.lastUpdateId
                    state.synced = False
                    self.metrics.book_updates_in.labels(self.exchange, symbol).inc()
                    return BookUpdate(
                        self.exchange,
                        symbol,
                        time.time_ns(),
                        bids,
                        asks,
                        is_snapshot=True,
                        sequence=snapshot.lastUpdateId,
                    )
                log.info(
                    "snapshot_too_old",
                    exchange=self.exchange,
                    symbol=symbol,
                    last_update_id=snapshot.lastUpdateId,
                    first_diff_u=state.first_u,
                )
            if attempt < self.snapshot_attempts:
                await asyncio.sleep(next(delays))
        self.metrics.sequence_gaps.labels(self.exchange, symbol).inc()
        state.reset()  # the next diff starts over
        return None
