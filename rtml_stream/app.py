"""The sidecar process: source -> pipeline -> online and offline sinks, in one asyncio loop.

``build_sidecar(settings, ...)`` wires the parts from Settings; ``Sidecar.run(stop)`` runs them:

- the consumer feeds trades (in batches for a replay) and book updates to the pipeline and hands
  what it produced to the sinks; an exception from one event is counted and logged, never fatal;
- a timer every ``coalesce_ms`` moves event time to the wall clock (live sources) so quiet
  markets still close candles, and writes the coalesced live values; it also copies sink health into the metrics and sends due Dagster reports;
- a checkpoint every ``checkpoint_interval_s``;
- the sinks' own tasks write, buffer (bounded) and retry while Redis or PostgreSQL is down;
- ``/metrics`` and ``/health`` on the health port.

Stop (SIGTERM/SIGINT, ``--duration``, ``--max-trades`` or the end of a replay): the source is
closed, what is closed is flushed to the stores (for a finished replay, open windows close too),
the state is checkpointed and ``run`` returns a summary.
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
from rtml_stream.sources.base import Source, WebSocketSource
from rtml_stream.sources.replay import ReplaySource

log = structlog.get_logger("rtml_stream")

_CLOSE_LAG_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


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
    timer_closes_candles: bool = True  # False: only trades move event time (replaying history through a live source)
    inline_online_writes: bool = True  # write closed-candle rows from the loop at once while the store is healthy


@dataclass
class Summary:
    trades: int = 0
    candles: int = 0
    rows: int = 0
    late: int = 0
    duplicates: int = 0
    processing_errors: int = 0
    started: dict = field(default_factory=dict)
    checkpoint_files: list[str] = field(default_factory=list)
    online: dict = field(default_factory=dict)
    offline: dict | None = None
    seconds: float = 0.0


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
        self.live_source = isinstance(source, WebSocketSource)
        self.health_server: HealthServer | None = None
        self.lag_samples_ns: deque[int] = deque(maxlen=self.options.keep_lag_samples)
        self.processing_errors = 0
        self.summary = Summary()
        self._closed_at: dict[tuple, int] = {}
        self._started = time.monotonic()
        self._source_done = False
        self._stop: asyncio.Event | None = None
        self._online_busy = False  # a background (threaded) online write is in flight
        self._dropped_seen = {"online": 0, "offline": 0}
        self._errors_seen = {"online": 0, "offline": 0}
        online_sink.on_rows_written = self._rows_written

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
            self.online_sink.add_rows(out.rows)
            if self.options.inline_online_writes and self.online_sink.healthy and not self._online_busy:
                self.online_sink.flush_sync()  # one pipelined round trip for the rows of this batch
        for candle in out.candles:
            self.metrics.candles_out.labels(candle.exchange, candle.symbol, candle.timeframe).inc()
        for correction in out.corrections:
            trade = correction.trade
            self.metrics.late_trades.labels(trade.exchange, trade.symbol).inc()
            self.own.corrections.labels(trade.exchange, trade.symbol, correction.timeframe).inc()
            log.warning("late_trade", exchange=trade.exchange, symbol=trade.symbol, timeframe=correction.timeframe,
                        trade_id=trade.trade_id, time_ns=trade.time_ns, watermark_ns=correction.watermark_ns)
        if self.offline_sink is not None:
            if out.candles:
                self.offline_sink.add_candles(out.candles)
            if out.rows:
                self.offline_sink.add_rows(out.rows)
            if out.corrections:
                self.offline_sink.add_corrections(out.corrections)

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
    async def _consume(self, stop: asyncio.Event) -> None:
        pipeline = self.pipeline
        limit = self.options.max_trades
        try:
            if isinstance(self.source, ReplaySource):
                async for batch in self.source.batches():
                    if limit is not None and pipeline.trades_in + len(batch) >= limit:
                        batch = batch[: max(0, limit - pipeline.trades_in)]
                    try:
                        pipeline.on_trades(batch)
                    except Exception as error:  # noqa: BLE001 - logged and counted; never retried (no double count)
                        self._failed(batch[0] if batch else None, error)
                    if pipeline.has_output:
                        self._emit_safely()
                    if stop.is_set() or (limit is not None and pipeline.trades_in >= limit):
                        break
                    await asyncio.sleep(0)  # let the sinks and the health server run
            else:
                async for event in self.source.events():
                    try:
                        if isinstance(event, Trade):
                            pipeline.on_trades((event,))
                        elif isinstance(event, BookUpdate):
                            pipeline.on_book(event)
                    except Exception as error:  # noqa: BLE001 - never die of input
                        self._failed(event, error)
                    if pipeline.has_output:
                        self._emit_safely()
                    if stop.is_set() or (limit is not None and pipeline.trades_in >= limit):
                        break
            # the file ended by itself (not our close() on a stop, not --max-trades): open windows may close
            self._source_done = not stop.is_set() and (limit is None or pipeline.trades_in < limit)
        finally:
            stop.set()

    def _event_clock_ns(self) -> int | None:
        """Event time now for the timer: the wall clock for live sources; None for replays, whose
        candles close on their own trades (a wall-clock guess of a replay's time could run ahead of
        trades not yet handed over and make them late)."""
        if not self.options.timer_closes_candles or not self.live_source:
            return None
        return time.time_ns()

    def tick(self) -> None:
        """One timer step: advance event time, write live values, refresh metrics and health."""
        now_ns = self._event_clock_ns()
        if now_ns is not None:
            self.pipeline.advance(now_ns)
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
            self.own.dropped.labels(name).set(sink.stats.dropped)
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
        if not self.online_sink.healthy:
            reasons.append(f"online store failing: {self.online_sink.stats.last_error}")
        if self.offline_sink is not None and not self.offline_sink.healthy:
            reasons.append(f"offline store failing: {self.offline_sink.stats.last_error}")
        return reasons

    def health_details(self) -> dict:
        return {
            "source": self.source.exchange,
            "trades": self.pipeline.trades_in,
            "markets": [f"{e}:{s}" for e, s in self.pipeline.markets],
            "late_trades": self.pipeline.late,
            "online": self.online_sink.status(),
            "offline": self.offline_sink.status() if self.offline_sink is not None else None,
            "last_checkpoint_ns": self.checkpointer.last_saved_at_ns if self.checkpointer else None,
        }

    async def _timer(self, stop: asyncio.Event) -> None:
        interval = self.options.coalesce_ms / 1000.0
        next_checkpoint = time.monotonic() + self.options.checkpoint_interval_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            try:
                self.tick()
                if self.options.inline_online_writes:
                    await self._write_online()
                if self.checkpointer is not None and time.monotonic() >= next_checkpoint:
                    self.checkpoint()
                    next_checkpoint = time.monotonic() + self.options.checkpoint_interval_s
                if self.reporter is not None:
                    await asyncio.to_thread(self.reporter.report_due)
            except Exception as error:  # noqa: BLE001 - a failing timer step must not end the process
                log.error("timer_step_failed", error=repr(error))

    async def _write_online(self) -> None:
        """Inline mode's timer write: live values (and rows) at once while healthy; while the store
        is failing, retries go to a worker thread so the loop keeps consuming."""
        sink = self.online_sink
        if sink.healthy:
            sink.flush_sync()
            return
        self._online_busy = True
        try:
            await sink.flush()
        finally:
            self._online_busy = False

    def checkpoint(self) -> list[Path]:
        files = self.checkpointer.save(self.pipeline) if self.checkpointer is not None else []
        if files:
            self.own.checkpoints.inc()
            self.own.last_checkpoint.set(time.time())
        return files

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
        sink_tasks = []
        if not self.options.inline_online_writes:
            sink_tasks.append(asyncio.create_task(
                self.online_sink.run(sinks_stop, drain_timeout_s=self.options.drain_timeout_s)))
        if self.offline_sink is not None:
            sink_tasks.append(asyncio.create_task(
                self.offline_sink.run(sinks_stop, drain_timeout_s=self.options.drain_timeout_s)))
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
            if self._source_done and isinstance(self.source, ReplaySource) and self.options.flush_at_end:
                self.pipeline.flush_open()
            self.tick()  # what is closed (and the last live values) goes to the sinks
            sinks_stop.set()
            if self.options.inline_online_writes:
                with contextlib.suppress(Exception):
                    await self.online_sink.drain(self.options.drain_timeout_s)
            await asyncio.gather(*sink_tasks, return_exceptions=True)
            self.summary.checkpoint_files = [str(p) for p in self.checkpoint()]
            if self.reporter is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.reporter.report_due, force=True)
            if self.health_server is not None:
                await self.health_server.close()
        s = self.summary
        s.trades, s.candles, s.rows = self.pipeline.trades_in, self.pipeline.candles_out, self.pipeline.rows_out
        s.late, s.duplicates, s.processing_errors = self.pipeline.late, self.pipeline.duplicates, self.processing_errors
        s.online = self.online_sink.status()
        s.offline = self.offline_sink.status() if self.offline_sink is not None else None
        s.seconds = round(time.monotonic() - started, 3)
        log.info("sidecar_stopped", trades=s.trades, candles=s.candles, rows=s.rows, late=s.late,
                 online_pending=s.online["pending"], seconds=s.seconds)
        return s

    def close(self) -> None:
        """Close the stores the sinks hold (after ``run``)."""
        with contextlib.suppress(Exception):
            self.online_sink.store.close()
        if self.offline_sink is not None and self.offline_sink.store is not None:
            with contextlib.suppress(Exception):
                self.offline_sink.store.close()

    def _seed_source(self) -> None:
        """Tell a Kraken source the last trade id checkpointed, so the downtime gap is backfilled."""
        last_ids = getattr(self.source, "last_trade_id", None)
        last_times = getattr(self.source, "last_trade_time_ns", None)
        if not isinstance(last_ids, dict) or not isinstance(last_times, dict):
            return
        for (exchange, symbol), state in self.pipeline.markets.items():
            if exchange == self.source.exchange and state.last_trade_id is not None:
                last_ids.setdefault(symbol, state.last_trade_id)
                if state.last_trade_time_ns is not None:
                    last_times.setdefault(symbol, state.last_trade_time_ns)


# -- building from Settings ------------------------------------------------------------------------

def parse_list(text: str | Sequence[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    return [item.strip() for item in items if item.strip()]


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
    pipeline = Pipeline(
        timeframes or parse_list(settings.stream_timeframes),
        allowed_lateness_ns=settings.stream_allowed_lateness_ms * 1_000_000,
        fill_gaps=settings.stream_fill_gaps,
        flow_window_ns=int(settings.stream_flow_window_s * 1e9),
        book_levels=settings.stream_book_levels,
    )
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
                                         feature_specs={pipeline.version: {"features": pipeline.feature_set.to_json(),
                                                                         "warmup": int(pipeline.feature_set.warmup)}})
    target = resolve_target(settings.stream_dagster, settings.stream_dagster_url)
    reporter = DagsterReporter(target, interval_s=settings.stream_dagster_interval_s) if target else None
    if health_port is None:
        port = settings.stream_metrics_port or None
    else:
        port = health_port if health_port >= 0 else None
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
