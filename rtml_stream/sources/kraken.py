"""Kraken WebSocket v2: ``trade`` and ``book`` channels.

- Numbers arrive as JSON numbers; they are decoded straight into exact ``Decimal`` (msgspec),
  which keeps the digits Kraken's CRC32 book checksum is computed over.
- The book is kept at the subscribed depth (truncated after every update, as Kraken requires)
  and its checksum verified on every message. A mismatch is counted, the book channel of that
  symbol is unsubscribed and subscribed again for a fresh snapshot, and updates in flight
  meanwhile are dropped; the failing update is never yielded.
- Trade ids are sequential per pair. After a reconnect (or a restart told the last id), the
  trades since the last one seen are fetched through the injected
  ``backfill(symbol, first_id, last_id, since_ns=...)`` (the REST ``Trades`` endpoint;
  ``last_id`` None = up to now) and yielded, in id order, before any live trade; an id that
  skips later is filled the same way. Ids already seen are skipped, so the trade sequence out
  is the one with no disconnect.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Literal

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

DEFAULT_URL = "wss://ws.kraken.com/v2"
DEFAULT_REST_URL = "https://api.kraken.com"
BOOK_DEPTHS = (10, 25, 100, 500, 1000)
CHECKSUM_LEVELS = 10
_ZERO = Decimal(0)

Backfill = Callable[..., Iterable[Trade]]
"""``backfill(symbol, first_id, last_id, since_ns=...)`` -> the trades with ids in [first_id, last_id];
``since_ns`` is the time of the last trade the stream had (where the REST pager starts)."""


class _Envelope(msgspec.Struct):
    channel: str | None = None
    type: str | None = None
    method: str | None = None
    success: bool | None = None
    error: str | None = None
    result: msgspec.Raw = msgspec.Raw()
    data: msgspec.Raw = msgspec.Raw()


class _Level(msgspec.Struct, array_like=False):
    price: Decimal
    qty: Decimal


class _Book(msgspec.Struct):
    symbol: str
    bids: list[_Level]
    asks: list[_Level]
    checksum: int
    timestamp: str | None = None


class _Trade(msgspec.Struct):
    symbol: str
    side: Literal["buy", "sell"]
    price: Decimal
    qty: Decimal
    trade_id: int
    timestamp: str
    ord_type: str | None = None


class _SubscribeResult(msgspec.Struct):
    channel: str | None = None
    symbol: str | None = None


_envelope = msgspec.json.Decoder(_Envelope)
_books = msgspec.json.Decoder(list[_Book])
_trades = msgspec.json.Decoder(list[_Trade])
_subscribe_result = msgspec.json.Decoder(_SubscribeResult)


@lru_cache(maxsize=1 << 16)
def _checksum_piece(price: Decimal, qty: Decimal) -> str:
    """One level's checksum text: price then qty, decimal point removed, leading zeros stripped."""
    return format(price, "f").replace(".", "").lstrip("0") + format(qty, "f").replace(
        ".", ""
    ).lstrip("0")


def kraken_checksum(book: OrderBook) -> int:
    """Kraken's CRC32 over the top 10 asks (low to high) then the top 10 bids (high to low):
    price then qty of each level, decimal point removed and leading zeros stripped."""
    pieces = [_checksum_piece(p, q) for p, q in book.top_asks(CHECKSUM_LEVELS)]
    pieces += [_checksum_piece(p, q) for p, q in book.top_bids(CHECKSUM_LEVELS)]
    return zlib.crc32("".join(pieces).encode("ascii"))


def default_backfill(rest_url: str = DEFAULT_REST_URL) -> Backfill | None:
    """``KrakenRestClient.trades_between_ids`` of ``rtml_core.ingest.backfill`` (paced, retried)."""
    try:
        from rtml_core.ingest.backfill import KrakenRestClient
    except ImportError:
        return None
    return KrakenRestClient(base_url=rest_url).trades_between_ids


class KrakenSource(WebSocketSource):
    """Trades and verified L2 books from Kraken WebSocket v2 for canonical ``symbols``."""

    exchange = "kraken"
    default_idle_timeout = 10.0  # Kraken sends a heartbeat every second once subscribed

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        url: str = DEFAULT_URL,
        channels: Sequence[str] = ("trade", "book"),
        depth: int = 10,
        metrics: StreamMetrics | None = None,
        backfill: Backfill | None | Literal["default"] = "default",
        rest_url: str = DEFAULT_REST_URL,
        backfill_attempts: int = 3,
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
        unknown = set(channels) - {"trade", "book"}
        if unknown or not channels:
            raise ValueError(f"channels must be 'trade' and/or 'book', got {list(channels)}")
        if depth not in BOOK_DEPTHS:
            raise ValueError(f"Kraken book depth must be one of {BOOK_DEPTHS}, got {depth}")
        self.channels = tuple(channels)
        self.depth = depth
        self.backfill = default_backfill(rest_url) if backfill == "default" else backfill
        self.backfill_attempts = max(1, backfill_attempts)
        self.books: dict[str, OrderBook] = {s: OrderBook(depth) for s in self.symbols}
        self._wire = {s: to_exchange_symbol("kraken", s) for s in self.symbols}
        self._canonical: dict[str, str] = {w: s for s, w in self._wire.items()}
        self._has_snapshot: set[str] = set()
        self._resyncing: set[str] = set()
        self._req_id = 0

    # --- subscription --------------------------------------------------------------------------

    def _next_req_id(self) -> int:
        self._req_id += 1
        return self._req_id

    def _subscribe(self, channel: str, wire_symbols: list[str], method: str = "subscribe") -> dict:
        params: dict = {"channel": channel, "symbol": wire_symbols}
        if channel == "book":
            params["depth"] = self.depth
        if method == "subscribe":
            params["snapshot"] = channel == "book"
        return {"method": method, "params": params, "req_id": self._next_req_id()}

    def subscriptions(self) -> list[dict]:
        wire = [self._wire[s] for s in self.symbols]
        return [self._subscribe(channel, wire) for channel in self.channels]

    def on_connect(self) -> None:
        self._has_snapshot.clear()
        self._resyncing.clear()
        for book in self.books.values():
            book.clear()

    async def resubscribe_book(self, symbol: str, reason: str) -> None:
        """Unsubscribe and subscribe the book of ``symbol`` again: Kraken answers with a snapshot."""
        self.metrics.resubscribes.labels(self.exchange, reason).inc()
        self._has_snapshot.discard(symbol)
        self._resyncing.add(symbol)
        self.books[symbol].clear()
        wire = [self._wire[symbol]]
        await self.send(self._subscribe("book", wire, "unsubscribe"))
        await self.send(self._subscribe("book", wire))

    # --- messages ------------------------------------------------------------------------------

    async def handle(self, raw: bytes) -> Sequence[Event]:
        envelope = _envelope.decode(raw)
        channel = envelope.channel
        if channel == "heartbeat":
            return ()
        if channel == "trade" and envelope.data:
            return await self._on_trades(_trades.decode(envelope.data), raw)
        if channel == "book" and envelope.data:
            return await self._on_books(envelope.type, _books.decode(envelope.data), raw)
        if channel == "status":
            log.info("kraken_status", status=bytes(raw[:300]).decode("utf-8", "replace"))
            return ()
        if envelope.method is not None:
            self._on_method_reply(envelope, raw)
            return ()
        raise Malformed("unknown_channel", f"channel={channel!r}")

    def _on_method_reply(self, envelope: _Envelope, raw: bytes) -> None:
        if envelope.method in ("pong",):
            return
        if envelope.success is False:
            text = bytes(raw[:300]).decode("utf-8", "replace")
            if envelope.method == "subscribe":
                raise SubscriptionError(
                    f"Kraken rejected a subscription: {envelope.error} ({text})"
                )
            log.warning(
                "kraken_request_failed", method=envelope.method, error=envelope.error, reply=text
            )
            return
        result = _subscribe_result.decode(envelope.result) if envelope.result else None
        log.info(
            "kraken_ack",
            method=envelope.method,
            channel=result and result.channel,
            symbol=result and result.symbol,
        )

    def _symbol(self, wire_symbol: str) -> str:
        symbol = self._canonical.get(wire_symbol)
        if symbol is None:
            try:
                symbol = normalize_symbol(wire_symbol)
            except Exception as error:
                raise Malformed("unknown_symbol", wire_symbol) from error
            if symbol not in self.books:
                raise Malformed("unknown_symbol", wire_symbol)
            self._canonical[wire_symbol] = symbol
        return symbol

    async def _on_books(self, kind: str | None, entries: list[_Book], raw: bytes) -> list[Event]:
        if kind not in ("snapshot", "update"):
            raise Malformed("unknown_type", f"book type={kind!r}")
        out: list[Event] = []
        for entry in entries:
            symbol = self._symbol(entry.symbol)
            book = self.books[symbol]
            is_snapshot = kind == "snapshot"
            if not is_snapshot and symbol not in self._has_snapshot:
                if symbol in self._resyncing:
                    continue  # in flight before our resubscribe took effect
                self.count_malformed("update_before_snapshot", raw, symbol)
                continue
            bids = tuple(BookLevel(level.price, level.qty) for level in entry.bids)
            asks = tuple(BookLevel(level.price, level.qty) for level in entry.asks)
            if is_snapshot:
                book.apply_snapshot(bids, asks)
            else:
                dropped_bids, dropped_asks = book.apply_update(bids, asks)
                if dropped_bids or dropped_asks:  # tell consumers' books what truncation removed
                    bids += tuple(BookLevel(price, _ZERO) for price in dropped_bids)
                    asks += tuple(BookLevel(price, _ZERO) for price in dropped_asks)
            computed = kraken_checksum(book)
            if computed != entry.checksum:
                self.metrics.checksum_failures.labels(self.exchange, symbol).inc()
                log.warning(
                    "checksum_mismatch",
                    exchange=self.exchange,
                    symbol=symbol,
                    expected=entry.checksum,
                    computed=computed,
                    sample=bytes(raw[:300]).decode("utf-8", "replace"),
                )
                await self.resubscribe_book(symbol, "checksum_mismatch")
                continue
            if is_snapshot:
                self._has_snapshot.add(symbol)
                self._resyncing.discard(symbol)
            time_ns = self.event_time_or_feed(entry.timestamp)
            self.metrics.book_updates_in.labels(self.exchange, symbol).inc()
            out.append(
                BookUpdate(
                    self.exchange,
                    symbol,
                    time_ns,
                    bids,
                    asks,
                    is_snapshot=is_snapshot,
                    checksum=entry.checksum,
                )
            )
        return out

    async def _on_trades(self, entries: list[_Trade], raw: bytes) -> list[Event]:
        exchange = self.exchange
        trades = [
            Trade(
                exchange,
                self._symbol(t.symbol),
                t.trade_id,
                parse_rfc3339_ns(t.timestamp),
                t.price,
                t.qty,
                t.side,
            )
            for t in entries
        ]
        return trades  # sequenced (duplicates, id gaps) by the session loop

    async def fetch_missing_trades(
        self, symbol: str, first_id: int, last_id: int | None, since_ns: int
    ) -> list[Trade] | None:
        if self.backfill is None:
            return None
        backfill = self.backfill
        return await asyncio.to_thread(
            lambda: list(backfill(symbol, first_id, last_id, since_ns=since_ns))
        )
