"""Coinbase Advanced Trade market data: ``market_trades``, ``level2`` and ``heartbeats``.

Every message carries the connection's ``sequence_num`` (one counter over all channels). A
skipped number means a lost message: the gap is counted and ``level2`` is unsubscribed and
subscribed again for a fresh snapshot (the book is dropped until it arrives). A number that
goes backwards is a duplicate and is skipped.

In ``market_trades`` the ``side`` is the maker's, so the taker's side is the opposite.

Trade ids are sequential per product: after a reconnect (or a restart told the last id) the
trades since the last one seen are fetched from the public REST trades endpoint
(``GET /products/{product_id}/trades``, newest first, paged with ``after``) before any live
trade, and an id that skips later is filled the same way (``CoinbaseTradesBackfill``).
"""

from __future__ import annotations

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
    parse_rfc3339_ns,
)

DEFAULT_URL = "wss://advanced-trade-ws.coinbase.com"
DEFAULT_REST_URL = "https://api.exchange.coinbase.com"
CHANNELS = ("market_trades", "level2", "heartbeats")
_TAKER = {"BUY": "sell", "SELL": "buy", "buy": "sell", "sell": "buy"}  # from the maker's side


class _Envelope(msgspec.Struct):
    channel: str | None = None
    type: str | None = None
    message: str | None = None
    timestamp: str | None = None
    sequence_num: int | None = None
    events: msgspec.Raw = msgspec.Raw()


class _L2Update(msgspec.Struct):
    side: str
    price_level: Decimal
    new_quantity: Decimal
    event_time: str | None = None


class _L2Event(msgspec.Struct):
    type: str
    product_id: str
    updates: list[_L2Update]


class _Trade(msgspec.Struct):
    trade_id: str
    product_id: str
    price: Decimal
    size: Decimal
    side: str
    time: str


class _TradesEvent(msgspec.Struct):
    type: str
    trades: list[_Trade]


class _RestTrade(msgspec.Struct):
    trade_id: int
    price: Decimal
    size: Decimal
    side: str
    time: str


_rest_trades = msgspec.json.Decoder(list[_RestTrade])

TradeBackfill = Callable[[str, int, int | None], Awaitable[list[Trade]]]
"""``backfill(symbol, first_id, last_id)`` -> the trades with ids in [first_id, last_id] (None: to the newest)."""


class CoinbaseTradesBackfill:
    """Missing trades by id from Coinbase Exchange's public ``GET /products/{id}/trades``: newest
    first, ``after=<id>`` pages to older trades (the ``CB-AFTER`` cursor), 1,000 a page. Bounded
    by ``max_pages`` (a longer gap is returned short and recorded unfilled by the source)."""

    page = 1000

    def __init__(self, rest_url: str = DEFAULT_REST_URL, client: httpx.AsyncClient | None = None,
                 timeout: float = 10.0, max_pages: int = 100) -> None:
        self.rest_url = rest_url.rstrip("/")
        self._client = client
        self._owns_client = client is None
        self.timeout = timeout
        self.max_pages = max_pages

    async def __call__(self, symbol: str, first_id: int, last_id: int | None) -> list[Trade]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, headers={"User-Agent": "rtml"})
        product = to_exchange_symbol("coinbase", symbol)
        params: dict[str, int] = {"limit": self.page}
        if last_id is not None:
            params["after"] = last_id + 1  # trades older than this id
        found: dict[int, Trade] = {}
        for _ in range(self.max_pages):
            response = await self._client.get(f"{self.rest_url}/products/{product}/trades", params=params)
            response.raise_for_status()
            rows = _rest_trades.decode(response.content)
            if not rows:
                break
            for row in rows:
                if row.trade_id >= first_id and (last_id is None or row.trade_id <= last_id):
                    taker = _TAKER.get(row.side)
                    if taker is None:
                        raise Malformed("wrong_types", f"side {row.side!r}")
                    found[row.trade_id] = Trade("coinbase", symbol, row.trade_id, parse_rfc3339_ns(row.time),
                                                row.price, row.size, taker)
            oldest = min(row.trade_id for row in rows)
            if oldest <= first_id:
                break
            cursor = response.headers.get("cb-after")
            params["after"] = int(cursor) if cursor and cursor.isdigit() else oldest
        return [found[i] for i in sorted(found)]

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None


_envelope = msgspec.json.Decoder(_Envelope)
_l2_events = msgspec.json.Decoder(list[_L2Event])
_trade_events = msgspec.json.Decoder(list[_TradesEvent])


class CoinbaseSource(WebSocketSource):
    """Trades and L2 books from Coinbase Advanced Trade for canonical ``symbols``."""

    exchange = "coinbase"
    default_idle_timeout = 10.0  # heartbeats arrive every second

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        url: str = DEFAULT_URL,
        rest_url: str = DEFAULT_REST_URL,
        trade_backfill: TradeBackfill | None | Literal["default"] = "default",
        backfill_attempts: int = 3,
        channels: Sequence[str] = ("market_trades", "level2"),
        depth: int | None = None,
        metrics: StreamMetrics | None = None,
        jwt: str | None = None,
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
        unknown = set(channels) - {"market_trades", "level2"}
        if unknown or not channels:
            raise ValueError(
                f"channels must be 'market_trades' and/or 'level2', got {list(channels)}"
            )
        self.channels = (*channels, "heartbeats")  # heartbeats keep every subscription open
        self.jwt = jwt
        self.books: dict[str, OrderBook] = {s: OrderBook(depth) for s in self.symbols}
        self._products = [to_exchange_symbol("coinbase", s) for s in self.symbols]
        self._canonical = {to_exchange_symbol("coinbase", s): s for s in self.symbols}
        self._has_snapshot: set[str] = set()
        self._expected_sequence: int | None = None
        self.trade_backfill: TradeBackfill | None = (
            CoinbaseTradesBackfill(rest_url) if trade_backfill == "default" else trade_backfill
        )
        self.backfill_attempts = max(1, backfill_attempts)

    async def close(self) -> None:
        await super().close()
        if isinstance(self.trade_backfill, CoinbaseTradesBackfill):
            await self.trade_backfill.aclose()

    def _request(self, kind: str, channel: str) -> dict:
        message: dict = {"type": kind, "product_ids": self._products, "channel": channel}
        if self.jwt:
            message["jwt"] = self.jwt
        return message

    def subscriptions(self) -> list[dict]:
        return [self._request("subscribe", channel) for channel in self.channels]

    def on_connect(self) -> None:
        self._expected_sequence = None
        self._has_snapshot.clear()
        for book in self.books.values():
            book.clear()

    async def resubscribe_level2(self, reason: str) -> None:
        self.metrics.resubscribes.labels(self.exchange, reason).inc()
        self._has_snapshot.clear()
        for book in self.books.values():
            book.clear()
        await self.send(self._request("unsubscribe", "level2"))
        await self.send(self._request("subscribe", "level2"))

    def _symbol(self, product_id: str) -> str:
        symbol = self._canonical.get(product_id)
        if symbol is None:
            try:
                symbol = normalize_symbol(product_id)
            except Exception as error:
                raise Malformed("unknown_symbol", product_id) from error
            if symbol not in self.books:
                raise Malformed("unknown_symbol", product_id)
            self._canonical[product_id] = symbol
        return symbol

    async def handle(self, raw: bytes) -> Sequence[Event]:
        envelope = _envelope.decode(raw)
        if envelope.type == "error":
            if "subscri" in (envelope.message or "").lower():
                raise SubscriptionError(f"Coinbase rejected a subscription: {envelope.message}")
            log.warning("coinbase_error", message=envelope.message)
            return ()
        channel = envelope.channel
        if channel is None:
            raise Malformed("unknown_message", "no channel")
        resync = False
        if envelope.sequence_num is not None:
            expected = self._expected_sequence
            if expected is not None and envelope.sequence_num < expected:
                raise Malformed(
                    "stale_sequence", f"sequence_num {envelope.sequence_num} < {expected}"
                )
            if expected is not None and envelope.sequence_num > expected:
                self.metrics.sequence_gaps.labels(self.exchange, "*").inc()
                log.warning(
                    "sequence_gap",
                    exchange=self.exchange,
                    expected=expected,
                    got=envelope.sequence_num,
                )
                resync = "level2" in self.channels
            self._expected_sequence = envelope.sequence_num + 1
        out: list[Event] = []
        if channel == "l2_data" and envelope.events:
            out = self._on_l2(_l2_events.decode(envelope.events), raw, skip=resync)
        elif channel == "market_trades" and envelope.events:
            out = await self._on_trades(_trade_events.decode(envelope.events))
        elif channel == "heartbeats":
            pass
        elif channel == "subscriptions":
            log.info(
                "coinbase_ack",
                subscriptions=bytes(envelope.events)[:300].decode("utf-8", "replace"),
            )
        elif channel not in ("l2_data", "market_trades"):
            raise Malformed("unknown_channel", f"channel={channel!r}")
        if resync:
            await self.resubscribe_level2("sequence_gap")
        return out

    def _on_l2(self, events: list[_L2Event], raw: bytes, *, skip: bool) -> list[Event]:
        out: list[Event] = []
        for event in events:
            symbol = self._symbol(event.product_id)
            is_snapshot = event.type == "snapshot"
            if event.type not in ("snapshot", "update"):
                self.count_malformed("unknown_type", raw, event.type)
                continue
            if skip:
                continue
            if not is_snapshot and symbol not in self._has_snapshot:
                self.count_malformed("update_before_snapshot", raw, symbol)
                continue
            bids: list[BookLevel] = []
            asks: list[BookLevel] = []
            for update in event.updates:
                if update.side == "bid":
                    bids.append(BookLevel(update.price_level, update.new_quantity))
                elif update.side == "offer":
                    asks.append(BookLevel(update.price_level, update.new_quantity))
                else:
                    raise Malformed("wrong_types", f"side {update.side!r} is not bid or offer")
            if not bids and not asks and not is_snapshot:
                continue  # Coinbase sends empty updates; nothing changed
            book = self.books[symbol]
            if is_snapshot:
                book.apply_snapshot(bids, asks)
                self._has_snapshot.add(symbol)
            else:
                book.apply_update(bids, asks)
            times = [u.event_time for u in event.updates if u.event_time]
            time_ns = self.event_time_or_feed(max(times) if times else None)
            self.metrics.book_updates_in.labels(self.exchange, symbol).inc()
            out.append(
                BookUpdate(
                    self.exchange,
                    symbol,
                    time_ns,
                    tuple(bids),
                    tuple(asks),
                    is_snapshot=is_snapshot,
                )
            )
        return out

    async def _on_trades(self, events: list[_TradesEvent]) -> list[Event]:
        trades: list[Trade] = []
        for event in events:
            for item in event.trades:
                taker = _TAKER.get(item.side)
                if taker is None:
                    raise Malformed("wrong_types", f"side {item.side!r}")
                try:
                    trade_id = int(item.trade_id)
                except ValueError as error:
                    raise Malformed(
                        "wrong_types", f"trade_id {item.trade_id!r} is not an integer"
                    ) from error
                trades.append(
                    Trade(
                        self.exchange,
                        self._symbol(item.product_id),
                        trade_id,
                        parse_rfc3339_ns(item.time),
                        item.price,
                        item.size,
                        taker,
                    )
                )
        trades.sort(key=lambda t: (t.time_ns, t.trade_id))  # Coinbase may list the newest first
        return trades  # sequenced (duplicates, id gaps) by the session loop
