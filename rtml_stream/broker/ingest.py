"""The ingest side: an exchange source's normalized events -> JetStream.

``Publisher`` keeps a bounded buffer of encoded messages and publishes them in order, many in
flight at once; while NATS is down or slow the buffer holds them (oldest dropped past
``max_buffer``, counted) and a failed window is published again: its ``Nats-Msg-Id``\\ s make
the retry a no-op for what had already been stored.

``Ingestor`` runs a ``Source`` (Kraken, Binance, Coinbase: checksums, gap fills and reconnects
stay theirs) and hands every exchange message's trades, per market, to the publisher as one
``TradeBatch``; book updates go one message each, plus a full book snapshot of every market
every ``book_snapshot_s`` (a feature service that starts or takes a market over mid-stream
rebuilds its book from the next one). On start it reads the newest trade of each market back
from the stream and resumes the source after it: a restarted ingestor publishes no trade twice
and backfills what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

import structlog
from nats.js.api import Header

from rtml_core.book import OrderBook
from rtml_core.schemas import BookLevel, BookUpdate, Trade
from rtml_stream.broker.codec import (
    book_msg_id,
    book_subject,
    encode_book,
    encode_tick,
    encode_trades,
    tick_msg_id,
    tick_subject,
    trade_msg_id,
    trade_subject,
)
from rtml_stream.broker.jetstream import BrokerConfig, close, connect, ensure_stream, last_trades
from rtml_stream.broker.metrics import BrokerMetrics
from rtml_stream.health import HealthServer
from rtml_stream.metrics import StreamMetrics
from rtml_stream.sources.base import Source

log = structlog.get_logger("rtml_stream.broker.ingest")


@dataclass(slots=True)
class Outgoing:
    subject: str
    payload: bytes
    msg_id: str
    kind: str  # "trades" or "book"
    trades: int


class Publisher:
    """In-order, pipelined JetStream publishing from a bounded buffer that survives outages."""

    def __init__(self, js, stream: str, metrics: BrokerMetrics, *, max_buffer: int = 100_000,
                 window: int = 512, ack_timeout_s: float = 5.0) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        self.js = js
        self.stream = stream
        self.metrics = metrics
        self.max_buffer = max_buffer
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self.buffer: deque[Outgoing] = deque()
        self.failures = 0
        self.last_error: str | None = None
        self.published = 0
        self.dropped = 0
        self._wakeup = asyncio.Event()

    def add(self, item: Outgoing) -> None:
        self.buffer.append(item)
        if len(self.buffer) > self.max_buffer:
            lost = self.buffer.popleft()
            self.dropped += 1
            self.metrics.dropped.labels(lost.kind).inc()
            if lost.trades:
                self.metrics.dropped_trades.inc(lost.trades)
            if self.dropped <= 5 or self.dropped % 1000 == 0:
                log.error("publish_buffer_full", dropped=self.dropped, max_buffer=self.max_buffer)
        self.metrics.buffered.set(len(self.buffer))
        self._wakeup.set()

    @property
    def healthy(self) -> bool:
        return self.failures == 0

    async def _publish_window(self, items: list[Outgoing]) -> None:
        futures = []
        try:
            for item in items:
                futures.append(await self.js.publish_async(
                    item.subject, item.payload, stream=self.stream, headers={Header.MSG_ID: item.msg_id},
                    wait_stall=self.ack_timeout_s))
            acks = await asyncio.wait_for(asyncio.gather(*futures), timeout=self.ack_timeout_s)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        for item, ack in zip(items, acks):
            if ack.duplicate:
                self.metrics.duplicates.inc()
            else:
                self.metrics.published.labels(item.kind).inc()
                if item.trades:
                    self.metrics.published_trades.inc(item.trades)

    async def publish_due(self) -> bool:
        """Publish what is buffered, a window at a time; False when a window failed (kept for a retry)."""
        while self.buffer:
            items = [self.buffer[i] for i in range(min(self.window, len(self.buffer)))]
            try:
                await self._publish_window(items)
            except Exception as error:  # noqa: BLE001 - NATS down or slow: keep, retry the same ids
                self.failures += 1
                self.last_error = f"{type(error).__name__}: {error}"
                self.metrics.publish_errors.inc()
                (log.warning if self.failures == 1 else log.debug)(
                    "publish_failed", error=self.last_error, buffered=len(self.buffer), failures=self.failures)
                return False
            sent = {id(item) for item in items}  # a full buffer may have dropped some from its left meanwhile
            while self.buffer and id(self.buffer[0]) in sent:
                self.buffer.popleft()
            self.published += len(items)
            if self.failures:
                log.info("publish_recovered", after_failures=self.failures, buffered=len(self.buffer))
            self.failures = 0
            self.last_error = None
            self.metrics.buffered.set(len(self.buffer))
        return True

    async def run(self, stop: asyncio.Event, *, drain_timeout_s: float = 10.0) -> None:
        delay = 0.05
        while not stop.is_set():
            if not self.buffer:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=0.5)
                continue
            if await self.publish_due():
                delay = 0.05
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                delay = min(delay * 2, 2.0)
        await self.drain(drain_timeout_s)

    async def drain(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.buffer and time.monotonic() < deadline:
            if not await self.publish_due():
                await asyncio.sleep(0.1)
        if self.buffer:
            log.error("publish_not_drained", buffered=len(self.buffer), error=self.last_error)
        return not self.buffer


class Ingestor:
    """Source -> one message per exchange message and market -> ``Publisher``; /metrics and /health."""

    def __init__(self, source: Source, config: BrokerConfig, *, metrics: StreamMetrics | None = None,
                 health_host: str = "127.0.0.1", health_port: int | None = None, stale_after_s: float = 120.0,
                 book_levels: int = 1000) -> None:
        self.source = source
        self.config = config
        self.stream_metrics = metrics or getattr(source, "metrics", None) or StreamMetrics()
        self.metrics = BrokerMetrics(self.stream_metrics.registry)
        self.health_host, self.health_port = health_host, health_port
        self.stale_after_s = stale_after_s
        self.book_levels = book_levels
        self.publisher: Publisher | None = None
        self.books: dict[tuple[str, str], OrderBook] = {}
        self.resumed: dict[str, tuple[int, int]] = {}
        self.trades = 0
        self.book_updates = 0
        self.connected = False
        self.health_server: HealthServer | None = None
        self._last_tick: dict[tuple[str, str], int] = {}
        self._traded_since_tick = False

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self.metrics.connected.set(1 if up else 0)

    # -- events -> messages ----------------------------------------------------------------------
    def on_batch(self, events) -> None:
        """One exchange message (or one REST catch-up): its book updates, then one trade batch per market."""
        pending: dict[tuple[str, str], list[Trade]] = {}
        for event in events:
            if isinstance(event, Trade):
                key = (event.exchange, event.symbol)
                batch = pending.get(key)
                if batch is None:
                    pending[key] = [event]
                else:
                    batch.append(event)
            elif isinstance(event, BookUpdate):
                book = self.books.get((event.exchange, event.symbol))
                if book is None:
                    book = self.books[(event.exchange, event.symbol)] = OrderBook()
                book.apply(event)
                self._publish_book(event)
                self.book_updates += 1
        now = time.time_ns()
        for (exchange, symbol), trades in pending.items():
            self.trades += len(trades)
            self._traded_since_tick = True
            subject = trade_subject(exchange, symbol, self.config.subject_prefix)
            msg_id = trade_msg_id(exchange, symbol, trades[0].trade_id, trades[-1].trade_id)
            self.publisher.add(Outgoing(subject, encode_trades(exchange, symbol, trades, now), msg_id, "trades",
                                        len(trades)))

    def publish_ticks(self) -> None:
        """While the feed is quiet: each market's trade subject gets the feed's clock (feed time + idle time)."""
        feed_ns = getattr(self.source, "feed_ns", None)
        if not self.source.is_live or feed_ns is None or self._traded_since_tick:
            self._traded_since_tick = False
            return
        advance = feed_ns + self.source.idle_ns()
        now = time.time_ns()
        for symbol in getattr(self.source, "symbols", ()):
            key = (self.source.exchange, symbol)
            if advance <= self._last_tick.get(key, feed_ns):
                continue
            self._last_tick[key] = advance
            self.publisher.add(Outgoing(tick_subject(*key, self.config.subject_prefix),
                                        encode_tick(*key, advance, now), tick_msg_id(*key, advance), "tick", 0))

    def _publish_book(self, update: BookUpdate) -> None:
        payload = encode_book(update)
        subject = book_subject(update.exchange, update.symbol, self.config.subject_prefix)
        self.publisher.add(Outgoing(subject, payload, book_msg_id(update, payload), "book", 0))

    def publish_book_snapshots(self) -> None:
        now = time.time_ns()
        for (exchange, symbol), book in self.books.items():
            if not book.bids and not book.asks:
                continue
            bids = tuple(BookLevel(p, q) for p, q in book.top_bids(self.book_levels))
            asks = tuple(BookLevel(p, q) for p, q in book.top_asks(self.book_levels))
            self._publish_book(BookUpdate(exchange, symbol, now, bids, asks, is_snapshot=True))

    # -- health ------------------------------------------------------------------------------------
    def health_reasons(self) -> list[str]:
        reasons = []
        if not self.connected:
            reasons.append(f"broker {self.config.url} is not connected")
        if self.publisher is not None and not self.publisher.healthy:
            reasons.append(f"publishing failing ({len(self.publisher.buffer)} buffered): {self.publisher.last_error}")
        if self.source.is_live:
            exchange = self.source.exchange
            if not self.stream_metrics.value("connected", exchange=exchange):
                reasons.append(f"source {exchange} is not connected")
            last = self.stream_metrics.value("last_message_time", exchange=exchange)
            if last and time.time() - last > self.stale_after_s:
                reasons.append(f"no message from {exchange} for {time.time() - last:.0f} s")
        return reasons

    def health_details(self) -> dict:
        publisher = self.publisher
        return {"role": "ingest", "stream": self.config.stream, "source": self.source.exchange,
                "trades": self.trades, "book_updates": self.book_updates,
                "buffered": len(publisher.buffer) if publisher else 0,
                "dropped": publisher.dropped if publisher else 0,
                "resumed": {s: {"trade_id": i, "time_ns": t} for s, (i, t) in self.resumed.items()}}

    # -- run ---------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None, *, duration_s: float | None = None,
                  max_trades: int | None = None) -> dict:
        stop = stop or asyncio.Event()
        started = time.monotonic()
        nc = await connect(self.config, name="rtml-ingest", on_state=self._set_connected)
        js = nc.jetstream(publish_async_max_pending=8192)
        await ensure_stream(js, self.config)
        if self.source.is_live:
            self.resumed = await last_trades(js, self.config, self.source.exchange, self.source.symbols)
            for symbol, (trade_id, time_ns) in self.resumed.items():
                self.source.resume(symbol, trade_id, time_ns)
            if self.resumed:
                log.info("ingest_resumed", markets={s: i for s, (i, _) in self.resumed.items()})
        self.publisher = Publisher(js, self.config.stream, self.metrics, max_buffer=self.config.publish_buffer)
        if self.health_port is not None:
            self.health_server = await HealthServer(self.stream_metrics.registry, lambda: (
                self.health_reasons(), self.health_details()), host=self.health_host, port=self.health_port).start()
            log.info("health_server", url=f"http://{self.health_host}:{self.health_server.port}/health")
        publisher_stop = asyncio.Event()
        publishing = asyncio.create_task(self.publisher.run(publisher_stop))
        consuming = asyncio.create_task(self._consume(stop, max_trades))
        snapshots = asyncio.create_task(self._snapshots(stop))
        deadline = asyncio.get_running_loop().call_later(duration_s, stop.set) if duration_s else None
        try:
            await stop.wait()
        finally:
            if deadline is not None:
                deadline.cancel()
            await self.source.close()
            for task in (consuming, snapshots):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            publisher_stop.set()
            with contextlib.suppress(Exception):
                await publishing
            if self.health_server is not None:
                await self.health_server.close()
            with contextlib.suppress(Exception):
                await close(nc)
        return {"trades": self.trades, "book_updates": self.book_updates,
                "published": self.publisher.published,
                "buffered": len(self.publisher.buffer), "dropped": self.publisher.dropped,
                "resumed": {s: i for s, (i, _) in self.resumed.items()},
                "seconds": round(time.monotonic() - started, 3)}

    async def _consume(self, stop: asyncio.Event, max_trades: int | None) -> None:
        try:
            async for events in self.source.batches():
                self.on_batch(events)
                if max_trades is not None and self.trades >= max_trades:
                    break
        finally:
            stop.set()

    async def _snapshots(self, stop: asyncio.Event) -> None:
        next_snapshot = time.monotonic() + self.config.book_snapshot_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.config.tick_s)
            self.publish_ticks()
            if time.monotonic() >= next_snapshot:
                self.publish_book_snapshots()
                next_snapshot = time.monotonic() + self.config.book_snapshot_s

