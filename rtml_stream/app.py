"""The sidecar process: source -> pipeline -> online and offline sinks, in one asyncio loop.

``build_sidecar(settings, ...)`` wires the parts from Settings; ``Sidecar.run(stop)`` runs them.
The sidecar only wires: every source yields ``batches()`` of events, the pipeline is pure, and
the sinks write off the event loop.

- the consumer feeds each batch to the pipeline and hands what it produced to the sinks; an
  exception from one batch is counted and logged, never fatal;
- a timer every ``coalesce_ms`` moves event time to the feed's clock plus the source's idle time
  (``pipeline.feed_ns + source.idle_ns()``: the feed's time, never the machine's), so quiet
  markets close candles on time; it writes the coalesced live values, copies sink health into
  the metrics, measures the loop's lag and sends due Dagster reports;
- checkpoints: every ``checkpoint_interval_s`` the state is captured with the sinks' marks (how
  many items each had been given); a capture is written to disk only once every item before its
  marks is durably written (or counted lost), so a checkpoint never runs ahead of the stores;
- the sinks' own tasks write in worker threads, buffer (bounded) and retry while Redis or
  PostgreSQL is down or hung;
- ``/metrics`` and ``/health`` on the health port.

Stop (SIGTERM/SIGINT, ``--duration``, ``--max-trades`` or the end of a replay): the source is
closed, what is closed is flushed to the stores (for a finished replay, open windows close too),
the newest durable state is checkpointed and ``run`` returns a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from prometheus_client import Counter, Gauge, Histogram

from rtml_core.schemas import BookUpdate, FeatureRow, Trade
from rtml_core.settings import Settings
from rtml_core.stores.online import open_online_store
from rtml_stream.checkpoint import Checkpointer, restore_markets
from rtml_stream.corrections import StreamOfflineSink
from rtml_stream.dagster_report import DagsterReporter, resolve_target
from rtml_stream.health import HealthServer
from rtml_stream.metrics import StreamMetrics
from rtml_stream.pipeline import Output, Pipeline
from rtml_stream.sinks import OnlineSink
from rtml_stream.sources.base import Source

log = structlog.get_logger("rtml_stream")

_CLOSE_LAG_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_STALLED_WRITE_S = 1.0  # /health: a store write taking longer is reported (it runs off the loop)
_KEEP_CAPTURES = 8  # checkpoint captures waiting for the stores (older ones are superseded)


class SidecarMetrics:
    """The sidecar's own metrics beside ``StreamMetrics`` (same registry)."""

    def __init__(self, metrics: StreamMetrics) -> None:
        r = metrics.registry
        self.close_to_online = Histogram(
            "rtml_stream_close_to_online_seconds",
            "From the trade or timer that closed a candle to its feature row being readable online.",
            ["exchange"], buckets=_CLOSE_LAG_BUCKETS, registry=r)
        self.corrections = Counter("rtml_stream_corrections", "Late trades recorded as corrections.",
                                   ["exchange", "symbol", "timeframe"], registry=r)
        self.processing_errors = Counter("rtml_stream_processing_errors",
                                         "Events the pipeline could not process (logged, skipped).",
                                         ["exchange"], registry=r)
        self.checkpoints = Counter("rtml_stream_checkpoints", "Checkpoints written.", registry=r)
        self.last_checkpoint = Gauge("rtml_stream_last_checkpoint_time_seconds", "Wall time of the last checkpoint.",
                                     registry=r)
        self.dropped = Gauge("rtml_stream_dropped_items", "Items a full sink buffer dropped (total).", ["store"],
                             registry=r)
        self.candle_gaps = Counter("rtml_stream_candle_gaps",
                                   "Gaps longer than RTML_STREAM_MAX_FILL_CANDLES (recorded, not filled).",
                                   ["exchange", "symbol", "timeframe"], registry=r)
        self.corrections_applied = Counter("rtml_stream_corrections_applied",
                                           "Closed candles a late trade changed (rewritten offline, rows rebuilt).",
                                           ["exchange", "symbol", "timeframe"], registry=r)
        self.loop_lag = Gauge("rtml_stream_loop_lag_seconds",
                              "How late the event loop ran the last timer step.", registry=r)


@dataclass
class SidecarOptions:
    coalesce_ms: float = 100.0
    checkpoint_interval_s: float = 30.0
    stale_after_s: float = 120.0
    duration_s: float | None = None
    max_trades: int | None = None
    flush_at_end: bool = True  # a finite replay closes its open windows when it ends
    drain_timeout_s: float = 5.0
    health_host: str = "127.0.0.1"
    health_port: int | None = None  # None: no health server
    keep_lag_samples: int = 200_000


@dataclass
class Summary:
    trades: int = 0
    candles: int = 0
    rows: int = 0
    late: int = 0
    duplicates: int = 0
    processing_errors: int = 0
    malformed: int = 0
    gaps: int = 0
    started: dict = field(default_factory=dict)
    checkpoint_files: list[str] = field(default_factory=list)
    online: dict = field(default_factory=dict)
    offline: dict | None = None
    seconds: float = 0.0


@dataclass
class _Capture:
    """Checkpoint data waiting until the sinks have settled every item before ``marks``."""

    marks: dict[tuple[str, str], int]
    files: list[tuple[Path, bytes]]


class Sidecar:
    def __init__(
        self,
        source: Source,
        pipeline: Pipeline,
        online_sink: OnlineSink,
        *,
        offline_sink: StreamOfflineSink | None = None,
        metrics: StreamMetrics | None = None,
        checkpointer: Checkpointer | None = None,
        reporter: DagsterReporter | None = None,
        options: SidecarOptions | None = None,
        markets: Sequence[tuple[str, str]] = (),
        offline_store_factory=None,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.online_sink = online_sink
        self.offline_sink = offline_sink
        self.metrics = metrics or StreamMetrics()
        self.own = SidecarMetrics(self.metrics)
        self.checkpointer = checkpointer
        self.reporter = reporter
        self.options = options or SidecarOptions()
        self.markets = list(markets)
        self.offline_store_factory = offline_store_factory
        self.live_source = source.is_live
        self.health_server: HealthServer | None = None
        self.lag_samples_ns: deque[int] = deque(maxlen=self.options.keep_lag_samples)
        self.loop_lag_s = 0.0
        self.processing_errors = 0
        self.summary = Summary()
        self._closed_at: dict[tuple, int] = {}
        self._started = time.monotonic()
        self._source_done = False
        self._stop: asyncio.Event | None = None
        self._captures: deque[_Capture] = deque(maxlen=_KEEP_CAPTURES)
        self._dropped_seen = {"online": 0, "offline": 0}
        self._errors_seen = {"online": 0, "offline": 0}
        online_sink.on_rows_written = self._rows_written

    @property
    def sinks(self) -> list:
        return [sink for sink in (self.online_sink, self.offline_sink) if sink is not None]

    # -- the lag hook (called by the online sink after each successful write) ------------------
    def _rows_written(self, rows: Sequence[FeatureRow], _now: float) -> None:
        now = time.perf_counter_ns()
        wall = time.time_ns()
        lags_ms = {}
        for row in rows:
            key = (row.exchange, row.symbol, row.timeframe, row.event_time_ns)
            closed = self._closed_at.pop(key, None)
            if closed is not None:
                lag = now - closed
                self.lag_samples_ns.append(lag)
                self.own.close_to_online.labels(row.exchange).observe(lag / 1e9)
                lags_ms[key] = lag / 1e6
            self.metrics.feature_rows_out.labels(row.exchange, row.symbol, row.timeframe).inc()
            if self.live_source:
                self.metrics.online_write_lag.labels(row.exchange).observe(max(0.0, (wall - row.event_time_ns) / 1e9))
        if self.reporter is not None:
            self.reporter.note_rows(rows, lags_ms)

    # -- moving outputs to the sinks -----------------------------------------------------------
    def _emit(self, out: Output | None = None) -> None:
        out = out or self.pipeline.drain()
        if out.rows:
            if len(self._closed_at) > 100_000:  # rows dropped by a full buffer never come back
                self._closed_at.clear()
            self._closed_at.update(out.closed_at)
            for exchange, symbol, time_ns, fields in out.microstructure_live_fields(self.pipeline.microstructure):
                self.online_sink.add_live(exchange, symbol, time_ns, fields)
            self.online_sink.add_rows(out.rows)  # written by the sink's task, in a worker thread
        for candle in out.candles:
            self.metrics.candles_out.labels(candle.exchange, candle.symbol, candle.timeframe).inc()
        for correction in out.corrections:
            trade = correction.trade
            self.metrics.late_trades.labels(trade.exchange, trade.symbol).inc()
            self.own.corrections.labels(trade.exchange, trade.symbol, correction.timeframe).inc()
            log.warning("late_trade", exchange=trade.exchange, symbol=trade.symbol, timeframe=correction.timeframe,
                        trade_id=trade.trade_id, time_ns=trade.time_ns, watermark_ns=correction.watermark_ns)
        for gap in out.gaps:
            self.own.candle_gaps.labels(gap.exchange, gap.symbol, gap.timeframe).inc()
        for candle in out.corrected:
            self.own.corrections_applied.labels(candle.exchange, candle.symbol, candle.timeframe).inc()
        for event in out.malformed:
            self.metrics.malformed_messages.labels(event.exchange, "future_timestamp").inc()
        if out.malformed:
            first = out.malformed[0]
            log.warning("malformed_event", reason="future_timestamp", count=self.pipeline.malformed,
                        exchange=first.exchange, symbol=first.symbol, time_ns=first.time_ns,
                        feed_ns=self.pipeline.feed_ns, sample=repr(first)[:300])
        if self.offline_sink is not None:
            self.offline_sink.add_output(out)

    def _emit_safely(self) -> None:
        try:
            self._emit()
        except Exception as error:  # noqa: BLE001 - a row a store refuses must not stop the stream
            self._failed(None, error)

    def _failed(self, event, error: Exception) -> None:
        self.processing_errors += 1
        exchange = getattr(event, "exchange", "unknown")
        self.own.processing_errors.labels(exchange).inc()
        if self.processing_errors <= 5 or self.processing_errors % 1000 == 0:
            log.error("event_failed", exchange=exchange, event=repr(event)[:300], error=repr(error),
                      count=self.processing_errors)

    # -- tasks ---------------------------------------------------------------------------------
    def _process(self, batch: Sequence[Trade | BookUpdate]) -> None:
        """One batch into the pipeline: runs of trades at once, book updates in their place."""
        pipeline = self.pipeline
        kind = type(batch[0])
        if all(type(event) is kind for event in batch):
            if kind is Trade:
                pipeline.on_trades(batch)
            else:
                for update in batch:
                    pipeline.on_book(update)
            return
        run: list[Trade] = []
        for event in batch:
            if type(event) is Trade:
                run.append(event)
                continue
            if run:
                pipeline.on_trades(run)
                run = []
            pipeline.on_book(event)
        if run:
            pipeline.on_trades(run)

    async def _consume(self, stop: asyncio.Event) -> None:
        pipeline = self.pipeline
        limit = self.options.max_trades
        try:
            async for batch in self.source.batches():
                if not batch:
                    continue
                if limit is not None and pipeline.trades_in + len(batch) >= limit:
                    batch = batch[: max(0, limit - pipeline.trades_in)]
                if batch:
                    try:
                        self._process(batch)
                    except Exception as error:  # noqa: BLE001 - logged and counted; never retried
                        self._failed(batch[0], error)
                if pipeline.has_output:
                    self._emit_safely()
                if stop.is_set() or (limit is not None and pipeline.trades_in >= limit):
                    break
                await asyncio.sleep(0)  # let the sinks, the timer and the health server run
            # the feed ended by itself (not our close() on a stop, not --max-trades): open windows may close
            self._source_done = not stop.is_set() and (limit is None or pipeline.trades_in < limit)
        finally:
            stop.set()

    def tick(self) -> None:
        """One timer step: advance event time (the feed's clock plus its idle time), write live
        values, refresh metrics and health."""
        feed = self.pipeline.feed_ns
        if feed is not None:
            self.pipeline.advance(feed + self.source.idle_ns())
        for exchange, symbol, time_ns, values in self.pipeline.live_values():
            self.online_sink.add_live(exchange, symbol, time_ns, values)
        if self.pipeline.has_output:
            self._emit()
        self._refresh_metrics()

    def _refresh_metrics(self) -> None:
        for name, sink in (("online", self.online_sink), ("offline", self.offline_sink)):
            if sink is None:
                continue
            self.metrics.buffered_items.labels(name).set(sink.pending)
            errors = sink.stats.write_errors
            if errors > self._errors_seen[name]:
                self.metrics.store_errors.labels(name).inc(errors - self._errors_seen[name])
                self._errors_seen[name] = errors
            dropped = sink.stats.dropped
            if dropped > self._dropped_seen[name]:
                log.error("items_lost", store=name, lost=dropped - self._dropped_seen[name], total=dropped,
                          by_kind=dict(sink.stats.dropped_by_kind), error=sink.stats.last_error)
                self._dropped_seen[name] = dropped
            self.own.dropped.labels(name).set(dropped)
        self.own.loop_lag.set(self.loop_lag_s)
        self.metrics.healthy.set(0 if self.health_reasons() else 1)

    def health_reasons(self) -> list[str]:
        reasons = []
        if self.live_source:
            connected = self.metrics.value("connected", exchange=self.source.exchange)
            if not connected:
                reasons.append(f"source {self.source.exchange} is not connected")
            last = self.metrics.value("last_message_time", exchange=self.source.exchange)
            if last and time.time() - last > self.options.stale_after_s:
                reasons.append(f"no message from {self.source.exchange} for {time.time() - last:.0f} s")
        for name, sink in (("online", self.online_sink), ("offline", self.offline_sink)):
            if sink is None:
                continue
            if not sink.healthy:
                reasons.append(f"{name} store failing: {sink.stats.last_error}")
            elif sink.write_seconds() > _STALLED_WRITE_S:
                reasons.append(f"{name} store not answering for {sink.write_seconds():.1f} s")
        return reasons

    def health_details(self) -> dict:
        return {
            "source": self.source.exchange,
            "trades": self.pipeline.trades_in,
            "markets": [f"{e}:{s}" for e, s in self.pipeline.markets],
            "late_trades": self.pipeline.late,
            "malformed_events": self.pipeline.malformed,
            "feed_time_ns": self.pipeline.feed_ns,
            "loop_lag_ms": round(self.loop_lag_s * 1000, 3),
            "online": self.online_sink.status(),
            "offline": self.offline_sink.status() if self.offline_sink is not None else None,
            "last_checkpoint_ns": self.checkpointer.last_saved_at_ns if self.checkpointer else None,
        }

    async def _timer(self, stop: asyncio.Event) -> None:
        interval = self.options.coalesce_ms / 1000.0
        next_capture = time.monotonic() + self.options.checkpoint_interval_s
        while not stop.is_set():
            due = time.monotonic() + interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            self.loop_lag_s = max(0.0, time.monotonic() - due) if not stop.is_set() else 0.0
            try:
                self.tick()
                if self.checkpointer is not None:
                    if time.monotonic() >= next_capture:
                        self.capture()
                        next_capture = time.monotonic() + self.options.checkpoint_interval_s
                    self.checkpoint_durable()
                if self.reporter is not None:
                    await asyncio.to_thread(self.reporter.report_due)
            except Exception as error:  # noqa: BLE001 - a failing timer step must not end the process
                log.error("timer_step_failed", error=repr(error))

    # -- checkpoints: never ahead of the stores ----------------------------------------------
    def _marks(self) -> dict[tuple[str, str], int]:
        return {(sink.name, kind): n for sink in self.sinks for kind, n in sink.added.items()}

    def capture(self) -> None:
        """Capture the state now (everything it produced already handed to the sinks)."""
        if self.checkpointer is None:
            return
        if self.pipeline.has_output:
            self._emit()
        self._captures.append(_Capture(self._marks(), self.checkpointer.encode(self.pipeline)))

    def checkpoint_durable(self) -> list[Path]:
        """Write the newest capture whose items the sinks have all settled; older ones go."""
        settled = {(sink.name, kind): n for sink in self.sinks for kind, n in sink.settled().items()}
        ready = None
        for capture in self._captures:
            if all(settled.get(key, 0) >= n for key, n in capture.marks.items()):
                ready = capture
        if ready is None:
            return []
        while self._captures and self._captures[0] is not ready:
            self._captures.popleft()
        self._captures.popleft()
        files = self.checkpointer.write(ready.files)
        self.own.checkpoints.inc()
        self.own.last_checkpoint.set(time.time())
        return files

    def checkpoint(self) -> list[Path]:
        """Capture now and write the newest durable capture (this one once the sinks are drained)."""
        self.capture()
        return self.checkpoint_durable()

    # -- run -----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> Summary:
        stop = stop or asyncio.Event()
        self._stop = stop
        started = time.monotonic()
        if self.markets:
            self.summary.started = {f"{e}:{s}": how for (e, s), how in restore_markets(
                self.pipeline, self.markets, checkpointer=self.checkpointer,
                offline_store=self.offline_store_factory).items()}
            self._seed_source()
        if self.options.health_port is not None:
            self.health_server = HealthServer(self.metrics.registry, lambda: (self.health_reasons(),
                                              self.health_details()), host=self.options.health_host,
                                              port=self.options.health_port)
            await self.health_server.start()
            log.info("health_server", url=f"http://{self.options.health_host}:{self.health_server.port}/health")
        sinks_stop = asyncio.Event()
        sink_tasks = [asyncio.create_task(sink.run(sinks_stop, drain_timeout_s=self.options.drain_timeout_s))
                      for sink in self.sinks]
        consumer = asyncio.create_task(self._consume(stop))
        timer = asyncio.create_task(self._timer(stop))
        deadline = None
        if self.options.duration_s is not None:
            deadline = asyncio.get_running_loop().call_later(self.options.duration_s, stop.set)
        try:
            await stop.wait()
        finally:
            if deadline is not None:
                deadline.cancel()
            await self.source.close()
            if not consumer.done():
                consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await consumer
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await timer
            if self._source_done and not self.source.is_live and self.options.flush_at_end:
                self.pipeline.flush_open()
            self.tick()  # what is closed (and the last live values) goes to the sinks
            self.capture()
            sinks_stop.set()
            await asyncio.gather(*sink_tasks, return_exceptions=True)
            if self.checkpointer is not None:
                files = self.checkpoint_durable()
                if self._captures:
                    log.error("checkpoint_held_back", reason="rows not yet stored", written=[str(f) for f in files],
                              online_pending=self.online_sink.pending,
                              offline_pending=self.offline_sink.pending if self.offline_sink else None)
                self.summary.checkpoint_files = [str(p) for p in files]
            if self.reporter is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.reporter.report_due, force=True)
            if self.health_server is not None:
                await self.health_server.close()
        s = self.summary
        s.trades, s.candles, s.rows = self.pipeline.trades_in, self.pipeline.candles_out, self.pipeline.rows_out
        s.late, s.duplicates, s.processing_errors = self.pipeline.late, self.pipeline.duplicates, self.processing_errors
        s.malformed, s.gaps = self.pipeline.malformed, self.pipeline.gaps
        s.online = self.online_sink.status()
        s.offline = self.offline_sink.status() if self.offline_sink is not None else None
        s.seconds = round(time.monotonic() - started, 3)
        log.info("sidecar_stopped", trades=s.trades, candles=s.candles, rows=s.rows, late=s.late,
                 malformed=s.malformed, online_pending=s.online["pending"], seconds=s.seconds)
        return s

    def close(self) -> None:
        """Close the stores the sinks hold (after ``run``)."""
        with contextlib.suppress(Exception):
            self.online_sink.store.close()
        if self.offline_sink is not None and self.offline_sink.store is not None:
            with contextlib.suppress(Exception):
                self.offline_sink.store.close()

    def _seed_source(self) -> None:
        """Tell the source the last trade of each restored market: the gap is backfilled first."""
        for (exchange, symbol), state in self.pipeline.markets.items():
            if exchange == self.source.exchange and state.last_trade_id is not None:
                with contextlib.suppress(ValueError):
                    self.source.resume(symbol, state.last_trade_id, state.last_trade_time_ns or 0)


# -- building from Settings ------------------------------------------------------------------------

def parse_list(text: str | Sequence[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    return [item.strip() for item in items if item.strip()]


def pipeline_from_settings(settings: Settings, timeframes: Sequence[str] | None = None) -> Pipeline:
    """A market pipeline with the stream's settings (the sidecar's and the broker feature service's)."""
    return Pipeline(
        list(timeframes or parse_list(settings.stream_timeframes)),
        allowed_lateness_ns=settings.stream_allowed_lateness_ms * 1_000_000,
        fill_gaps=settings.stream_fill_gaps,
        flow_window_ns=int(settings.stream_flow_window_s * 1e9),
        book_levels=settings.stream_book_levels,
        max_future_ns=int(settings.stream_max_future_s * 1e9),
        max_fill_candles=settings.stream_max_fill_candles,
    )


def health_port_from(health_port: int | None, default: int) -> int | None:
    """None: the setting (0 there = off); 0: any free port; negative: off."""
    if health_port is None:
        return default or None
    return health_port if health_port >= 0 else None


def build_sidecar(
    settings: Settings,
    source: Source,
    markets: Sequence[tuple[str, str]],
    *,
    timeframes: Sequence[str] | None = None,
    metrics: StreamMetrics | None = None,
    duration_s: float | None = None,
    max_trades: int | None = None,
    health_port: int | None = None,
    checkpoints: bool = True,
) -> Sidecar:
    """Everything from Settings: pipeline, online/offline sinks, checkpoints, Dagster reporting, health.

    ``health_port``: None = ``RTML_STREAM_METRICS_PORT`` (0 there means off); 0 = any free port;
    negative = no health server.
    """
    from rtml_core.stores.offline import open_offline_store

    metrics = metrics or getattr(source, "metrics", None) or StreamMetrics()
    pipeline = pipeline_from_settings(settings, timeframes)
    if hasattr(source, "max_backfill_age_s"):
        source.max_backfill_age_s = settings.stream_max_backfill_age_s
    settings.home.mkdir(parents=True, exist_ok=True)
    online_store = open_online_store(settings.resolved_online_url, prefix=settings.online_prefix,
                                     history=settings.online_history)
    online_sink = OnlineSink(online_store, coalesce_ms=settings.stream_coalesce_ms,
                             max_buffer=settings.stream_online_buffer)
    offline_url = settings.resolved_offline_url
    factory = (lambda: open_offline_store(offline_url))  # noqa: E731 - opened lazily: PostgreSQL may be down
    offline_sink = None
    if settings.stream_offline_log:
        offline_sink = StreamOfflineSink(factory, max_buffer=settings.stream_offline_buffer,
                                         feature_set=pipeline.feature_set,
                                         feature_specs={pipeline.version: pipeline.feature_set.stored_spec(),
                                                        pipeline.microstructure.version: pipeline.microstructure.to_json()})
    target = resolve_target(settings.stream_dagster, settings.stream_dagster_url)
    reporter = DagsterReporter(target, interval_s=settings.stream_dagster_interval_s) if target else None
    port = health_port_from(health_port, settings.stream_metrics_port)
    options = SidecarOptions(
        coalesce_ms=settings.stream_coalesce_ms,
        checkpoint_interval_s=settings.stream_checkpoint_interval_s,
        stale_after_s=settings.stream_stale_after_s,
        duration_s=duration_s,
        max_trades=max_trades,
        health_host=settings.stream_metrics_host,
        health_port=port,
    )
    return Sidecar(source, pipeline, online_sink, offline_sink=offline_sink, metrics=metrics,
                   checkpointer=Checkpointer(settings.resolved_checkpoint_dir) if checkpoints else None,
                   reporter=reporter, options=options, markets=markets, offline_store_factory=factory)
