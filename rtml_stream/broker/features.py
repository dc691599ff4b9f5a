"""The feature service of the broker layout: JetStream -> pipeline -> online store and offline log.

Per market it owns (``Leases``), one durable pull consumer (``<group>_<exchange>_<symbol>``,
filter ``rtml.*.<exchange>.<symbol>``) feeds the same ``Pipeline`` and sinks as the sidecar.
A trade message is acknowledged only once every trade in it lies in a closed candle of every
timeframe and those candles and rows are written (offline log flushed, rows online), so the
stream itself holds every trade of the open windows. Taking a market (start, restart,
failover) rebuilds its state from the stored candles (``restore_markets``: exact engine warm-up,
stored windows skipped) and recreates the consumer at the first unacknowledged message: no
source checkpoint, and the candles are those of an uninterrupted run. Book messages are applied
for the live values and acknowledged at once; after taking a market the book waits for the
ingestor's next full snapshot.

Event time moves with what the stream holds: trades, and the ingestor's ticks while the feed is
quiet (``TradeBatch.advance_ns``), so a replay closes every candle exactly where the live run did.
Each market has its own ``Pipeline``: a market's clock never moves another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from rtml_stream.broker.codec import decode_book, decode_trades, is_trade_subject, market_subjects
from rtml_stream.broker.jetstream import BrokerConfig, close, connect, durable_name, ensure_stream
from rtml_stream.broker.leases import Leases, lease_bucket, open_bucket
from rtml_stream.broker.metrics import BrokerMetrics
from rtml_stream.checkpoint import restore_markets
from rtml_stream.corrections import StreamOfflineSink
from rtml_stream.health import HealthServer
from rtml_stream.metrics import StreamMetrics
from rtml_stream.pipeline import Pipeline
from rtml_stream.sinks import OnlineSink

log = structlog.get_logger("rtml_stream.broker.features")

Market = tuple[str, str]
_NEVER = -(2**63)


@dataclass
class FeatureServiceOptions:
    coalesce_ms: float = 100.0
    fetch_batch: int = 1024
    process_slice: int = 32  # messages folded between two yields to the event loop
    commit_interval_s: float = 0.2
    lag_poll_s: float = 2.0
    drain_timeout_s: float = 5.0
    health_host: str = "127.0.0.1"
    health_port: int | None = None
    from_start: bool = False  # first take of each market: cold state, consumer from the stream's start
    duration_s: float | None = None


@dataclass
class _Feed:
    market: Market
    name: str
    psub: object
    pipeline: Pipeline
    started_as: str
    start_seq: int
    task: asyncio.Task | None = None
    last_seq: int = 0
    unacked: deque = field(default_factory=deque)  # (newest trade time ns, msg), in stream order
    book_ready: bool = False
    lag: int | None = None


class FeatureService:
    def __init__(
        self,
        config: BrokerConfig,
        pipeline_factory: Callable[[], Pipeline],
        online_sink: OnlineSink,
        markets: Sequence[Market],
        *,
        offline_sink: StreamOfflineSink | None = None,
        offline_store_factory: Callable[[], object] | None = None,
        metrics: StreamMetrics | None = None,
        options: FeatureServiceOptions | None = None,
        instance: str | None = None,
    ) -> None:
        if not markets:
            raise ValueError("at least one market is required")
        self.config = config
        self.pipeline_factory = pipeline_factory
        self.pipelines: list[Pipeline] = []  # every one this process made (for the totals)
        self.online_sink = online_sink
        self.offline_sink = offline_sink
        self.offline_store_factory = offline_store_factory
        self.markets = list(dict.fromkeys(markets))
        self.stream_metrics = metrics or StreamMetrics()
        self.metrics = BrokerMetrics(self.stream_metrics.registry)
        self.options = options or FeatureServiceOptions()
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.feeds: dict[Market, _Feed] = {}
        self.taken: set[Market] = set()  # markets this process has taken before (from_start applies once)
        self.history: list[tuple[str, str]] = []  # ("take"/"lose"/"release", "exchange:symbol")
        self.trades = 0
        self.duplicates = 0
        self.processing_errors = 0
        self.acked = 0
        self.connected = False
        self.js = None
        self.leases: Leases | None = None
        self.health_server: HealthServer | None = None
        self._commit_lock = asyncio.Lock()
        self.lag_samples_ns: deque[int] = deque(maxlen=200_000)  # publish -> processed, per trade message

    # -- outputs to the sinks (same order and rules as the sidecar) --------------------------------
    def _emit(self, pipeline: Pipeline) -> None:
        out = pipeline.drain()
        sm = self.stream_metrics
        if out.rows:
            for exchange, symbol, time_ns, fields in out.microstructure_live_fields(pipeline.microstructure):
                self.online_sink.add_live(exchange, symbol, time_ns, fields)
            self.online_sink.add_rows(out.rows)
            if self.online_sink.healthy:
                self.online_sink.flush_sync()
            for row in out.rows:
                sm.feature_rows_out.labels(row.exchange, row.symbol, row.timeframe).inc()
        for candle in out.candles:
            sm.candles_out.labels(candle.exchange, candle.symbol, candle.timeframe).inc()
        for correction in out.corrections:
            sm.late_trades.labels(correction.trade.exchange, correction.trade.symbol).inc()
        if self.offline_sink is not None:
            self.offline_sink.add_output(out)

    # -- messages ----------------------------------------------------------------------------------
    def on_messages(self, feed: _Feed, msgs: list) -> list:
        """Fold a fetched batch into the pipeline; return the book messages to acknowledge now."""
        pipeline = feed.pipeline
        consumed = self.metrics.consumed.labels(feed.name)
        redelivered = self.metrics.redelivered.labels(feed.name)
        ack_now = []
        published: list[int] = []
        for msg in msgs:
            meta = msg.metadata
            if meta.num_delivered > 1:
                redelivered.inc()
            seq = meta.sequence.stream
            if seq <= feed.last_seq:
                continue  # delivered again while we still hold it (ack wait passed)
            feed.last_seq = seq
            consumed.inc()
            try:
                if is_trade_subject(msg.subject):
                    batch = decode_trades(msg.data)
                    if batch.advance_ns is not None:
                        pipeline.advance(batch.advance_ns)  # the feed was quiet up to then
                    state = pipeline.markets.get(feed.market)
                    last = state.last_trade_id if state is not None else None
                    trades = batch.trades
                    if last is not None and trades and trades[0].trade_id <= last:  # ids ascend in a batch
                        trades = [t for t in trades if t.trade_id > last]
                    self.duplicates += len(batch.trades) - len(trades)
                    newest = _NEVER
                    if trades:
                        pipeline.on_trades(trades)
                        newest = max(t.time_ns for t in trades)
                        self.trades += len(trades)
                    feed.unacked.append((newest, msg))
                    if trades:
                        published.append(batch.published_ns)
                else:
                    update = decode_book(msg.data)
                    if update.is_snapshot or feed.book_ready:
                        pipeline.on_book(update)
                        feed.book_ready = True
                    ack_now.append(msg)
            except Exception as error:  # noqa: BLE001 - a bad message is counted and skipped, never fatal
                self.processing_errors += 1
                if self.processing_errors <= 5 or self.processing_errors % 1000 == 0:
                    log.error("message_failed", consumer=feed.name, seq=seq, error=repr(error))
                feed.unacked.append((_NEVER, msg))
        if pipeline.has_output:
            self._emit(pipeline)  # closed candles' rows are written online here
        if published:
            done = time.time_ns()
            for published_ns in published:
                lag = max(0, done - published_ns)
                self.lag_samples_ns.append(lag)
                self.metrics.added_lag.observe(lag / 1e9)
        return ack_now

    def closed_until(self, market: Market) -> int:
        """Event time before which every timeframe of ``market`` has closed its candles."""
        feed = self.feeds.get(market)
        state = feed.pipeline.markets.get(market) if feed is not None else None
        if state is None:
            return _NEVER
        until = None
        for builder in state.builders:
            mark = builder.watermark_ns
            if mark is None:
                return _NEVER
            boundary = mark - mark % builder.tf_ns
            until = boundary if until is None else min(until, boundary)
        return _NEVER if until is None else until

    async def commit(self) -> int:
        """Write what is closed, then acknowledge the messages all of whose trades it holds."""
        async with self._commit_lock:
            ready = {}
            for market, feed in self.feeds.items():
                until = self.closed_until(market)
                n = 0
                for newest, _msg in feed.unacked:
                    if newest >= until:
                        break
                    n += 1
                if n:
                    ready[market] = n
            for feed in self.feeds.values():
                if feed.pipeline.has_output:
                    self._emit(feed.pipeline)
            if self.offline_sink is not None and self.offline_sink.pending:
                await self.offline_sink.drain(0.0)
            if self.online_sink.pending_rows:
                self.online_sink.flush_sync()
            if not ready:
                return 0
            if self.online_sink.pending_rows or (self.offline_sink is not None and self.offline_sink.pending):
                return 0  # a store is down or slow: acknowledge nothing until it has the rows
            acked = 0
            for market, n in ready.items():
                feed = self.feeds.get(market)
                if feed is None:
                    continue
                counter = self.metrics.acknowledged.labels(feed.name)
                for _ in range(min(n, len(feed.unacked))):
                    _newest, msg = feed.unacked.popleft()
                    with contextlib.suppress(Exception):
                        await msg.ack()
                        counter.inc()
                        acked += 1
            self.acked += acked
            return acked

    # -- markets: take, run, give up ---------------------------------------------------------------
    async def take(self, market: Market) -> None:
        """Rebuild the market's state and start its consumer at the first unacknowledged message."""
        exchange, symbol = market
        name = durable_name(self.config.group, exchange, symbol)
        js, stream = self.js, self.config.stream
        fresh = self.options.from_start and market not in self.taken
        start = 1
        if not fresh:
            try:
                info = await js.consumer_info(stream, name)
                start = max((info.ack_floor.stream_seq if info.ack_floor else 0) + 1, info.config.opt_start_seq or 1)
            except NotFoundError:
                start = 1
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(stream, name)
        pipeline = self.pipeline_factory()
        tf_max = max(pipeline.tf_ns) / 1e9
        await js.add_consumer(stream, ConsumerConfig(
            durable_name=name, filter_subject=market_subjects(exchange, symbol, self.config.subject_prefix),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start, ack_policy=AckPolicy.EXPLICIT,
            ack_wait=max(self.config.ack_wait_s, 2 * tf_max + 60), max_ack_pending=self.config.max_ack_pending,
            max_deliver=-1, num_replicas=self.config.replicas))
        psub = await js.pull_subscribe_bind(durable=name, stream=stream)
        if fresh:
            pipeline.market(exchange, symbol)
            how = "from_start"
        else:
            how = (await asyncio.to_thread(restore_markets, pipeline, [market], checkpointer=None,
                                           offline_store=self.offline_store_factory))[market]
        self.pipelines.append(pipeline)
        feed = _Feed(market, name, psub, pipeline, how, start)
        self.feeds[market] = feed
        self.taken.add(market)
        self.history.append(("take", f"{exchange}:{symbol}"))
        self.metrics.lease_changes.labels("taken").inc()
        self.metrics.owned_markets.set(len(self.feeds))
        feed.task = asyncio.create_task(self._run_feed(feed))
        log.info("market_taken", market=f"{exchange}:{symbol}", consumer=name, start_seq=start, started=how,
                 instance=self.instance)

    async def _stop_feed(self, market: Market) -> _Feed | None:
        feed = self.feeds.get(market)
        if feed is None:
            return None
        if feed.task is not None:
            feed.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feed.task
        return feed

    async def _forget(self, market: Market, feed: _Feed, change: str) -> None:
        self.feeds.pop(market, None)
        with contextlib.suppress(Exception):
            await feed.psub.unsubscribe()
        self.history.append((change, f"{market[0]}:{market[1]}"))
        self.metrics.lease_changes.labels(change).inc()
        self.metrics.owned_markets.set(len(self.feeds))

    async def lose(self, market: Market) -> None:
        """Our lease is gone (another process may hold it): stop at once, acknowledge nothing more."""
        feed = await self._stop_feed(market)
        if feed is not None:
            await self._forget(market, feed, "lost")
            log.warning("market_lost", market=f"{market[0]}:{market[1]}", instance=self.instance)

    async def release(self, market: Market) -> None:
        """Give a market up cleanly: finish what is closed, acknowledge it, free the lease."""
        feed = await self._stop_feed(market)
        if feed is None:
            return
        await self.commit()
        await self._forget(market, feed, "released")
        if self.leases is not None:
            await self.leases.release(market)
        log.info("market_released", market=f"{market[0]}:{market[1]}", instance=self.instance)

    async def _fetch(self, psub) -> list:
        """Wait for the next message, then take what is already there (``num_pending`` of the last
        one says how much): a lone message is processed at once, a backlog in batches."""
        msgs = await psub.fetch(1, timeout=1.0)
        limit = self.options.fetch_batch
        pending = msgs[-1].metadata.num_pending
        while pending and len(msgs) < limit:
            more = await psub.fetch(min(pending, limit - len(msgs)), timeout=1.0)
            if not more:
                break
            msgs.extend(more)
            pending = more[-1].metadata.num_pending
        return msgs

    async def _run_feed(self, feed: _Feed) -> None:
        while True:
            try:
                msgs = await self._fetch(feed.psub)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - broker trouble: retry; a lost lease stops us elsewhere
                log.warning("fetch_failed", consumer=feed.name, error=repr(error))
                await asyncio.sleep(0.5)
                continue
            step = self.options.process_slice
            for i in range(0, len(msgs), step):  # a backlog in slices: lease renewals and the timer run between
                for msg in self.on_messages(feed, msgs[i:i + step]):
                    with contextlib.suppress(Exception):
                        await msg.ack()
                await asyncio.sleep(0)

    # -- periodic work -----------------------------------------------------------------------------
    async def _lease_loop(self, stop: asyncio.Event) -> None:
        interval = self.config.lease_ttl_s / 3
        while not stop.is_set():
            try:
                step = await self.leases.step()
                for market in step.lost:
                    await self.lose(market)
                for market in step.gained:
                    try:
                        await self.take(market)
                    except Exception as error:  # noqa: BLE001 - let another process try it
                        log.error("take_failed", market=f"{market[0]}:{market[1]}", error=f"{error!r} {error}")
                        await self.leases.release(market)
                for market in step.surplus:
                    await self.release(market)
            except Exception as error:  # noqa: BLE001 - NATS down: retried; leases expire if it stays down
                log.warning("lease_step_failed", error=repr(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    def tick(self) -> None:
        for feed in self.feeds.values():
            for exchange, symbol, time_ns, values in feed.pipeline.live_values():
                self.online_sink.add_live(exchange, symbol, time_ns, values)
            if feed.pipeline.has_output:
                self._emit(feed.pipeline)
        if self.online_sink.healthy:
            self.online_sink.flush_sync()
        for name, sink in (("online", self.online_sink), ("offline", self.offline_sink)):
            if sink is not None:
                self.stream_metrics.buffered_items.labels(name).set(sink.pending)
        self.stream_metrics.healthy.set(0 if self.health_reasons() else 1)
        for feed in self.feeds.values():
            self.metrics.ack_pending.labels(feed.name).set(len(feed.unacked))

    async def _timer(self, stop: asyncio.Event) -> None:
        interval = self.options.coalesce_ms / 1000
        next_commit = next_lag = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            try:
                self.tick()
                now = time.monotonic()
                if now >= next_commit:
                    await self.commit()
                    next_commit = now + self.options.commit_interval_s
                if now >= next_lag:
                    await self.poll_lag()
                    next_lag = now + self.options.lag_poll_s
            except Exception as error:  # noqa: BLE001 - a failing step must not end the process
                log.error("timer_step_failed", error=repr(error))

    async def poll_lag(self) -> None:
        for feed in list(self.feeds.values()):
            with contextlib.suppress(Exception):
                info = await self.js.consumer_info(self.config.stream, feed.name)
                feed.lag = info.num_pending
                self.metrics.consumer_lag.labels(feed.name).set(info.num_pending or 0)

    # -- health ------------------------------------------------------------------------------------
    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self.metrics.connected.set(1 if up else 0)

    def health_reasons(self) -> list[str]:
        reasons = []
        if not self.connected:
            reasons.append(f"broker {self.config.url} is not connected")
        if not self.online_sink.healthy:
            reasons.append(f"online store failing: {self.online_sink.stats.last_error}")
        if self.offline_sink is not None and not self.offline_sink.healthy:
            reasons.append(f"offline store failing: {self.offline_sink.stats.last_error}")
        return reasons

    def health_details(self) -> dict:
        return {
            "role": "features", "instance": self.instance, "stream": self.config.stream, "group": self.config.group,
            "trades": self.trades, "acknowledged": self.acked, "duplicates_skipped": self.duplicates,
            "markets": sorted(f"{e}:{s}" for e, s in self.feeds),
            "consumer_lag": {f.name: f.lag for f in self.feeds.values()},
            "ack_pending": {f.name: len(f.unacked) for f in self.feeds.values()},
            "online": self.online_sink.status(),
            "offline": self.offline_sink.status() if self.offline_sink is not None else None,
        }

    # -- run ---------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> dict:
        stop = stop or asyncio.Event()
        started = time.monotonic()
        nc = await connect(self.config, name=f"rtml-features-{self.instance}", on_state=self._set_connected)
        self.js = nc.jetstream()
        await ensure_stream(self.js, self.config)
        kv = await open_bucket(self.js, lease_bucket(self.config.stream), self.config.lease_ttl_s,
                               self.config.replicas)
        self.leases = Leases(kv, self.config.group, self.instance, self.markets, self.config.lease_ttl_s)
        if self.options.health_port is not None:
            self.health_server = await HealthServer(self.stream_metrics.registry, lambda: (
                self.health_reasons(), self.health_details()), host=self.options.health_host,
                port=self.options.health_port).start()
            log.info("health_server", url=f"http://{self.options.health_host}:{self.health_server.port}/health")
        leasing = asyncio.create_task(self._lease_loop(stop))
        timer = asyncio.create_task(self._timer(stop))
        deadline = None
        if self.options.duration_s is not None:
            deadline = asyncio.get_running_loop().call_later(self.options.duration_s, stop.set)
        try:
            await stop.wait()
        finally:
            if deadline is not None:
                deadline.cancel()
            for task in (leasing, timer):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for market in list(self.feeds):
                await self._stop_feed(market)
            self.tick()
            with contextlib.suppress(Exception):
                await self.commit()
            if self.offline_sink is not None:
                with contextlib.suppress(Exception):
                    await self.offline_sink.drain(self.options.drain_timeout_s)
            with contextlib.suppress(Exception):
                await self.online_sink.drain(self.options.drain_timeout_s)
            with contextlib.suppress(Exception):
                await self.commit()
            owned = sorted(f"{e}:{s}" for e, s in self.feeds)
            for market in list(self.feeds):
                await self._forget(market, self.feeds[market], "released")
            with contextlib.suppress(Exception):
                await self.leases.leave()
            if self.health_server is not None:
                await self.health_server.close()
            with contextlib.suppress(Exception):
                await close(nc)
        return {
            "instance": self.instance, "trades": self.trades, "candles": sum(p.candles_out for p in self.pipelines),
            "feature_rows": sum(p.rows_out for p in self.pipelines), "late_trades": sum(p.late for p in self.pipelines),
            "duplicates_skipped": self.duplicates, "processing_errors": self.processing_errors,
            "acknowledged": self.acked, "markets": owned, "history": self.history,
            "online_pending": self.online_sink.pending_rows,
            "offline_pending": self.offline_sink.pending if self.offline_sink is not None else None,
            "seconds": round(time.monotonic() - started, 3),
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.online_sink.store.close()
        if self.offline_sink is not None and self.offline_sink.store is not None:
            with contextlib.suppress(Exception):
                self.offline_sink.store.close()

