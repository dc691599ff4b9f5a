"""Sinks of the streaming sidecar: feature rows and live values to the online store, and closed
candles and feature rows to the offline store, each batched, bounded and retried.

Neither sink touches a store per trade. ``OnlineSink`` writes closed-candle rows at once (one
pipelined write per batch) and coalesces live microstructure values (the latest value per
market and name wins) into one write every ``coalesce_ms``. ``OfflineLogSink`` appends in
batches of ``batch_size`` or every ``flush_interval_s``; the offline store upserts, so a retry
writes nothing twice.

When a store fails, both keep consuming: items stay in a bounded buffer (the oldest are dropped
past ``max_buffer`` and counted; a row is kept or dropped whole), ``healthy`` turns False,
writes are retried with exponential backoff and jitter, and the buffer is written in order,
``max_batch`` at a time, once the store is back.

Each sink counts the items it was given (``added``) and those settled (written, refused or
dropped and counted lost: ``settled()``) per kind; buffers are first in, first out, so once
``settled()[kind]`` reaches a mark taken earlier, every item before that mark is settled (the
sidecar's checkpoints wait for that).

Both are plain objects with an injected ``clock`` (monotonic seconds): tests drive them with
``flush_sync(now)``; the sidecar runs ``await sink.run(stop)`` as an asyncio task, which does the
blocking store calls in a worker thread so the event loop keeps consuming during an outage.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import structlog

from rtml_core.errors import InputError
from rtml_core.schemas import ROW_CONTEXT_FIELDS, Candle, FeatureRow
from rtml_core.stores.online_base import (
    RESERVED_FIELDS,
    LiveValues,
    OnlineStore,
    check_key_part,
    check_row,
)
from rtml_core.timeframes import timeframe_ns

log = structlog.get_logger("rtml_stream.sinks")

Clock = Callable[[], float]


@dataclass
class Backoff:
    """Exponential backoff with jitter: ``min(cap, base * 2**(failures-1))`` times [0.5, 1)."""

    base_s: float = 0.05
    cap_s: float = 5.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, failures: int) -> float:
        return min(self.cap_s, self.base_s * 2 ** max(failures - 1, 0)) * (0.5 + self.rng.random() / 2)


@dataclass
class SinkStats:
    """Counters a sink exposes (the sidecar copies them into Prometheus metrics)."""

    writes: int = 0  # batches written (one round trip each for the online store)
    written: int = 0  # items (rows, live values, candles) written
    dropped: int = 0  # items dropped from a full buffer
    write_errors: int = 0  # failed store writes (each retried)
    consecutive_failures: int = 0
    last_error: str | None = None
    last_success_at: float | None = None  # sink clock
    dropped_by_kind: dict[str, int] = field(default_factory=dict)
    written_by_kind: dict[str, int] = field(default_factory=dict)

    def count_written(self, kind: str, n: int) -> None:
        if n:
            self.written += n
            self.written_by_kind[kind] = self.written_by_kind.get(kind, 0) + n

    def count_dropped(self, kind: str, n: int = 1) -> None:
        if n:
            self.dropped += n
            self.dropped_by_kind[kind] = self.dropped_by_kind.get(kind, 0) + n


class _RetryingSink:
    """What both sinks share: health, backoff, the async driver. Subclasses define the batches."""

    name = "sink"

    def __init__(self, *, max_buffer: int, max_batch: int, clock: Clock, backoff: Backoff | None) -> None:
        if max_buffer < 1 or max_batch < 1:
            raise ValueError("max_buffer and max_batch must be at least 1")
        self.max_buffer = max_buffer
        self.max_batch = max_batch
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.stats = SinkStats()
        self.added: dict[str, int] = {}  # items given, per kind (marks for the checkpoints)
        self._inflight: dict[str, int] = {}  # items of the batch being written, per kind
        self._write_started: float | None = None
        self._retry_at = float("-inf")
        self._wakeup: asyncio.Event | None = None

    # -- to be defined by each sink --------------------------------------------------------
    @property
    def pending(self) -> int:
        raise NotImplementedError

    def next_due(self) -> float | None:
        """Clock time at which a flush has work to do (None: nothing buffered)."""
        raise NotImplementedError

    def _take(self, now: float):
        """Remove and return the batch due at ``now`` (None when nothing is due)."""
        raise NotImplementedError

    def _write(self, batch) -> None:
        """Write ``batch`` to the store (blocking); on failure leave what is unwritten in it."""
        raise NotImplementedError

    def _requeue(self, batch) -> None:
        """Put the unwritten part of ``batch`` back in front of the buffer."""
        raise NotImplementedError

    def _enforce_bound(self) -> None:
        raise NotImplementedError

    def _queued(self) -> dict[str, int]:
        """Items buffered now, per kind (only kinds counted in ``added``)."""
        raise NotImplementedError

    def _kinds(self, batch) -> dict[str, int]:
        """Items of ``batch`` per kind."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    def _count_added(self, kind: str, n: int) -> None:
        self.added[kind] = self.added.get(kind, 0) + n

    def settled(self) -> dict[str, int]:
        """Items no longer waiting, per kind: written, refused, or dropped and counted lost."""
        queued = self._queued()
        return {kind: n - queued.get(kind, 0) - self._inflight.get(kind, 0) for kind, n in self.added.items()}

    def _write_tracked(self, batch) -> None:
        self._write_started = self.clock()
        try:
            self._write(batch)
        finally:
            self._write_started = None

    def write_seconds(self) -> float:
        """How long the write in progress has taken so far (0 when none is): a store that
        accepts and never answers shows here before its timeout fails the write."""
        started = self._write_started
        return 0.0 if started is None else max(0.0, self.clock() - started)

    @property
    def healthy(self) -> bool:
        """False from a failed write until the next successful one."""
        return self.stats.consecutive_failures == 0

    def status(self) -> dict:
        """Health and counters, for a health endpoint or metrics (times on the sink's clock)."""
        return {
            "healthy": self.healthy,
            "pending": self.pending,
            "writes": self.stats.writes,
            "written": dict(self.stats.written_by_kind),
            "dropped": dict(self.stats.dropped_by_kind),
            "write_errors": self.stats.write_errors,
            "consecutive_failures": self.stats.consecutive_failures,
            "last_error": self.stats.last_error,
            "seconds_since_success": None if self.stats.last_success_at is None
            else round(self.clock() - self.stats.last_success_at, 3),
        }

    def _due_time(self, earliest: float | None) -> float | None:
        return None if earliest is None else max(earliest, self._retry_at)

    def _notify(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _succeeded(self, batch, now: float) -> None:
        if self.stats.consecutive_failures:
            log.info("store_recovered", sink=self.name, after_failures=self.stats.consecutive_failures,
                     pending=self.pending)
        self.stats.consecutive_failures = 0
        self.stats.writes += 1
        self.stats.last_success_at = now
        self._retry_at = float("-inf")

    def _failed(self, batch, error: Exception, now: float) -> None:
        self._requeue(batch)
        self.stats.write_errors += 1
        self.stats.consecutive_failures += 1
        self.stats.last_error = f"{type(error).__name__}: {error}"
        delay = self.backoff.delay(self.stats.consecutive_failures)
        self._retry_at = now + delay
        event = log.warning if self.stats.consecutive_failures == 1 else log.debug
        event("store_write_failed", sink=self.name, error=self.stats.last_error, pending=self.pending,
              retry_in_s=round(delay, 3), failures=self.stats.consecutive_failures)
        self._enforce_bound()

    def _rejected(self, batch, error: InputError) -> None:
        n = self._size(batch)
        self.stats.count_dropped("rejected", n)
        log.error("store_rejected_batch", sink=self.name, items=n, error=str(error))

    def _size(self, batch) -> int:
        raise NotImplementedError

    def flush_sync(self, now: float | None = None) -> bool:
        """Write everything due at ``now`` (in ``max_batch`` chunks); False if a write failed."""
        now = self.clock() if now is None else now
        while (batch := self._take(now)) is not None:
            self._inflight = self._kinds(batch)  # taken out of the buffer: not settled until written
            try:
                self._write_tracked(batch)
            except InputError as error:  # the store refuses the data itself: retrying cannot help
                self._inflight = {}
                self._rejected(batch, error)
                continue
            except Exception as error:  # noqa: BLE001 - any store failure is buffered and retried
                self._inflight = {}
                self._failed(batch, error, now)
                return False
            self._inflight = {}
            self._succeeded(batch, now)
        return True

    async def flush(self) -> bool:
        """``flush_sync`` with the store calls in a worker thread (the event loop keeps running)."""
        while (batch := self._take(self.clock())) is not None:
            self._inflight = self._kinds(batch)  # taken out of the buffer: not settled until written
            try:
                await asyncio.to_thread(self._write_tracked, batch)
            except InputError as error:
                self._inflight = {}
                self._rejected(batch, error)
                continue
            except Exception as error:  # noqa: BLE001
                self._inflight = {}
                self._failed(batch, error, self.clock())
                return False
            self._inflight = {}
            self._succeeded(batch, self.clock())
        return True

    async def run(self, stop: asyncio.Event, *, drain_timeout_s: float = 5.0) -> None:
        """Flush whenever something is due until ``stop`` is set; then try to drain for a while."""
        self._wakeup = asyncio.Event()
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                due = self.next_due()
                timeout = None if due is None else max(0.0, due - self.clock())
                if timeout is None or timeout > 0:
                    self._wakeup.clear()
                    waking = asyncio.create_task(self._wakeup.wait())
                    await asyncio.wait({waking, stopping}, timeout=timeout,
                                       return_when=asyncio.FIRST_COMPLETED)
                    waking.cancel()
                    continue
                await self.flush()
            await self.drain(drain_timeout_s)
        finally:
            stopping.cancel()
            self._wakeup = None

    async def drain(self, timeout_s: float) -> bool:
        """Write everything buffered now, retrying until ``timeout_s``; True when nothing is left."""
        deadline = self.clock() + timeout_s
        self._force_due()
        while self.pending:
            if self.clock() >= self._retry_at:
                self._force_due()
                if await self.flush():
                    continue
            wait = min(self._retry_at, deadline) - self.clock()
            if self.clock() >= deadline:
                break
            await asyncio.sleep(max(wait, 0.0))
        if self.pending:
            log.error("sink_not_drained", sink=self.name, pending=self.pending, error=self.stats.last_error)
        return not self.pending

    def _force_due(self) -> None:
        """Make everything buffered due now (shutdown)."""


@dataclass(slots=True)
class _LiveEntry:
    time_ns: int
    values: dict[str, float]


class OnlineSink(_RetryingSink):
    """Feature rows at once, live values coalesced, one ``write_batch`` round trip per flush.

    ``on_rows_written(rows, now)`` (optional) is called after each successful write, e.g. to
    record the lag from event time to the row being readable.
    """

    name = "online"

    def __init__(
        self,
        store: OnlineStore,
        *,
        coalesce_ms: float = 100,
        max_buffer: int = 100_000,
        max_batch: int = 5_000,
        clock: Clock = time.monotonic,
        backoff: Backoff | None = None,
        on_rows_written: Callable[[Sequence[FeatureRow], float], None] | None = None,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(max_buffer=max_buffer, max_batch=max_batch, clock=clock, backoff=backoff)
        self.store = store
        self.wall_clock = wall_clock
        self.coalesce_s = coalesce_ms / 1000.0
        self.on_rows_written = on_rows_written
        self._rows: deque[FeatureRow] = deque()
        self._live: dict[tuple[str, str], _LiveEntry] = {}
        self._live_due_at: float | None = None

    @property
    def pending(self) -> int:
        return len(self._rows) + len(self._live)

    @property
    def pending_rows(self) -> int:
        return len(self._rows)

    def add_rows(self, rows: Iterable[FeatureRow]) -> None:
        """Queue rows of closed candles; they are due at once. A row whose event time is beyond
        now plus one timeframe (the stores refuse it) is counted as rejected and logged, not queued."""
        added = 0
        now = self.wall_clock()
        for row in rows:
            check_row(row)  # a bad row fails here, never later in the retry loop
            if row.event_time_ns > now + timeframe_ns(row.timeframe):
                self.stats.count_dropped("rejected")
                log.error("row_beyond_now_refused", exchange=row.exchange, symbol=row.symbol,
                          timeframe=row.timeframe, event_time_ns=row.event_time_ns, now_ns=now)
                continue
            self._rows.append(row)
            added += 1
        if added:
            self._count_added("rows", added)
            self._enforce_bound()
            self._notify()

    def add_live(self, exchange: str, symbol: str, time_ns: int, values: Mapping[str, float]) -> None:
        """Merge live values of a market (cheap: a dict update); written at most every ``coalesce_ms``."""
        if not RESERVED_FIELDS.isdisjoint(values):
            clash = sorted(RESERVED_FIELDS.intersection(values))
            raise InputError(f"live value name(s) {clash} are reserved in the online store")
        entry = self._live.get((exchange, symbol))
        if entry is None:
            check_key_part("exchange", exchange)
            check_key_part("symbol", symbol)
            self._live[(exchange, symbol)] = _LiveEntry(time_ns, dict(values))
            self._enforce_bound()
        else:
            entry.values.update(values)
            if time_ns > entry.time_ns:
                entry.time_ns = time_ns
        if self._live_due_at is None and self._live:
            self._live_due_at = self.clock() + self.coalesce_s
            self._notify()

    def next_due(self) -> float | None:
        if self._rows:
            return self._due_time(float("-inf"))
        return self._due_time(self._live_due_at)

    def _take(self, now: float):
        if now < self._retry_at:
            return None
        live_due = self._live_due_at is not None and now >= self._live_due_at
        if not self._rows and not live_due:
            return None
        take_live = bool(self._live) and (live_due or bool(self._rows))  # rows carry live values for free
        rows = [self._rows.popleft() for _ in range(min(self.max_batch, len(self._rows)))]
        live: list[LiveValues] = []
        if take_live:
            live = [LiveValues(exchange, symbol, entry.time_ns, entry.values)
                    for (exchange, symbol), entry in self._live.items()]
            self._live = {}
            self._live_due_at = None
        return rows, live

    def _write(self, batch) -> None:
        rows, live = batch
        self.store.write_batch(rows, live)

    def _size(self, batch) -> int:
        rows, live = batch
        return len(rows) + len(live)

    def _queued(self) -> dict[str, int]:
        return {"rows": len(self._rows)}

    def _kinds(self, batch) -> dict[str, int]:
        return {"rows": len(batch[0])}

    def _succeeded(self, batch, now: float) -> None:
        super()._succeeded(batch, now)
        rows, live = batch
        self.stats.count_written("rows", len(rows))
        self.stats.count_written("live", len(live))
        if rows and self.on_rows_written is not None:
            try:
                self.on_rows_written(rows, now)
            except Exception as error:  # noqa: BLE001 - a metrics hook must not stop the sink
                log.error("on_rows_written_failed", error=repr(error))

    def _requeue(self, batch) -> None:
        rows, live = batch
        self._rows.extendleft(reversed(rows))
        for values in live:  # values that arrived meanwhile are newer: they win
            key = (values.exchange, values.symbol)
            newer = self._live.get(key)
            if newer is None:
                self._live[key] = _LiveEntry(values.time_ns, values.values)
            else:
                newer.values = {**values.values, **newer.values}
                newer.time_ns = max(values.time_ns, newer.time_ns)
        if self._live and self._live_due_at is None:
            self._live_due_at = self.clock()

    def _enforce_bound(self) -> None:
        while self.pending > self.max_buffer:
            if self._live:  # live values are superseded soonest: drop the oldest first
                oldest = min(self._live, key=lambda key: self._live[key].time_ns)
                del self._live[oldest]
                self.stats.count_dropped("live")
            else:
                self._rows.popleft()
                self.stats.count_dropped("rows")
        if not self._live:
            self._live_due_at = None

    def _force_due(self) -> None:
        if self._live:
            self._live_due_at = min(self._live_due_at or self.clock(), self.clock())


@dataclass
class _OfflineBatch:
    candles: list[Candle]
    rows: list[FeatureRow]


class OfflineLogSink(_RetryingSink):
    """Closed candles and feature rows appended to the offline store in idempotent batches.

    A batch is due when ``batch_size`` items are buffered or the oldest has waited
    ``flush_interval_s``. Feature rows are grouped per (exchange, symbol, timeframe, version)
    into one frame each; a version is registered once (``feature_specs[version]`` is its spec).
    ``offline_store`` may be a zero-argument factory (``lambda: open_offline_store(url)``): the
    sidecar then starts even while PostgreSQL is down, and the store is opened on a retry.
    Past ``max_buffer``, feature rows are dropped before candles (rows can be recomputed from
    candles by the batch engine), oldest first.
    """

    name = "offline"

    def __init__(
        self,
        offline_store,
        *,
        batch_size: int = 1_000,
        flush_interval_s: float = 1.0,
        max_buffer: int = 200_000,
        max_batch: int = 10_000,
        feature_specs: Mapping[str, dict] | None = None,
        clock: Clock = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(max_buffer=max_buffer, max_batch=max_batch, clock=clock, backoff=backoff)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if callable(offline_store):  # a factory: opened on the first write, retried until it opens
            self.store, self._open_store = None, offline_store
        else:
            self.store, self._open_store = offline_store, None
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.feature_specs = dict(feature_specs or {})
        self._candles: deque[Candle] = deque()
        self._rows: deque[FeatureRow] = deque()
        self._first_pending_at: float | None = None
        self._registered: set[tuple[str, tuple[str, ...]]] = set()

    @property
    def pending(self) -> int:
        return len(self._candles) + len(self._rows)

    def add_candles(self, candles: Iterable[Candle]) -> None:
        before = len(self._candles)
        self._candles.extend(candles)
        self._added(len(self._candles) - before, "candles")

    def add_rows(self, rows: Iterable[FeatureRow]) -> None:
        before = len(self._rows)
        self._rows.extend(rows)
        self._added(len(self._rows) - before, "rows")

    def _added(self, n: int, kind: str) -> None:
        if not n:
            return
        self._count_added(kind, n)
        if self._first_pending_at is None:
            self._first_pending_at = self.clock()
        self._enforce_bound()
        if self.pending >= self.batch_size or n == self.pending:
            self._notify()

    def next_due(self) -> float | None:
        if not self.pending:
            return None
        if self.pending >= self.batch_size:
            return self._due_time(float("-inf"))
        return self._due_time(self._first_pending_at + self.flush_interval_s)

    def _take(self, now: float):
        due = self.next_due()
        if due is None or now < due:
            return None
        n_candles = min(self.max_batch, len(self._candles))
        candles = [self._candles.popleft() for _ in range(n_candles)]
        rows = [self._rows.popleft() for _ in range(min(self.max_batch - n_candles, len(self._rows)))]
        if not self.pending:
            self._first_pending_at = None
        return _OfflineBatch(candles, rows)

    def _write(self, batch: _OfflineBatch) -> None:
        """Write candles, then one frame per feature group; what succeeded leaves ``batch``."""
        if self.store is None:
            self.store = self._open_store()
        if batch.candles:
            try:
                self.store.write_candles(batch.candles)
                self.stats.count_written("candles", len(batch.candles))
            except InputError as error:  # refused data: drop it (counted), keep the rest flowing
                self._rejected(_OfflineBatch(batch.candles, []), error)
            batch.candles = []
        while batch.rows:
            group_key, group, rest = _first_group(batch.rows)
            exchange, symbol, timeframe, version, names = group_key
            try:
                if (version, names) not in self._registered:
                    self.store.register_feature_set(version, list(names), self.feature_specs.get(version, {}))
                    self._registered.add((version, names))
                self.store.write_features(
                    feature_frame(group, names),
                    exchange=exchange,
                    symbol=symbol,
                    timeframe=timeframe,
                    feature_set_version=version,
                )
                self.stats.count_written("rows", len(group))
            except InputError as error:
                self._rejected(_OfflineBatch([], group), error)
            batch.rows = rest

    def _size(self, batch: _OfflineBatch) -> int:
        return len(batch.candles) + len(batch.rows)

    def _queued(self) -> dict[str, int]:
        return {"candles": len(self._candles), "rows": len(self._rows)}

    def _kinds(self, batch: _OfflineBatch) -> dict[str, int]:
        return {"candles": len(batch.candles), "rows": len(batch.rows)}

    def _requeue(self, batch: _OfflineBatch) -> None:
        self._candles.extendleft(reversed(batch.candles))
        self._rows.extendleft(reversed(batch.rows))
        if self.pending:
            self._first_pending_at = float("-inf")  # due as soon as the retry time comes

    def _enforce_bound(self) -> None:
        while self.pending > self.max_buffer:
            self._drop_one_logged()

    def _drop_one_logged(self) -> None:
        """Drop one feature row, else one candle (rows can be recomputed from candles)."""
        if self._rows:
            self._rows.popleft()
            self.stats.count_dropped("rows")
        else:
            self._candles.popleft()
            self.stats.count_dropped("candles")

    def _force_due(self) -> None:
        if self.pending:
            self._first_pending_at = float("-inf")


def _first_group(rows: list[FeatureRow]):
    """The rows sharing the first row's (exchange, symbol, timeframe, version, names), and the rest."""
    first = rows[0]
    names = tuple(name for name in first.values if name not in ROW_CONTEXT_FIELDS)
    key = (first.exchange, first.symbol, first.timeframe, first.feature_set_version, names)
    group, rest = [], []
    for row in rows:
        same = (row.exchange, row.symbol, row.timeframe, row.feature_set_version) == key[:4]
        (group if same and tuple(n for n in row.values if n not in ROW_CONTEXT_FIELDS) == names
         else rest).append(row)
    return key, group, rest


def feature_frame(rows: Sequence[FeatureRow], names: Sequence[str]) -> pd.DataFrame:
    """``time`` plus one float64 column per name, keyed like the batch indicator table: ``time`` is
    the candle's start (the row's event time, its close, minus the timeframe), datetime64[ns, UTC]."""
    starts = [row.event_time_ns - timeframe_ns(row.timeframe) for row in rows]
    times = pd.DatetimeIndex(np.array(starts, dtype="datetime64[ns]"), tz="UTC")
    columns = {"time": times}
    for name in names:
        columns[name] = np.array([row.values[name] for row in rows], dtype="float64")
    return pd.DataFrame(columns)
