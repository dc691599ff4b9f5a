"""Pure steps of the sidecar: Trade -> candles (several timeframes) -> feature rows, plus live values.

``Pipeline`` holds explicit state per market (exchange, symbol): one ``CandleBuilder`` and one
``FeatureEngine`` per timeframe, a ``TradeFlow`` window and the L2 book. It does no I/O: the
runner feeds it events (``on_trades``, ``on_book``), moves event time on a timer (``advance``),
and takes what came out with ``drain()``: closed candles, feature rows (``event_time_ns`` = the
candle's end), corrections (trades later than the allowed lateness, one per timeframe they
missed), gaps too long to fill and malformed events. ``live_values()`` gives the coalesced
microstructure values of the markets that changed. Each closed candle also yields a row of the
``microstructure`` feature group (``rtml_core.features.microstructure``) as of that close: the
book and trade flow as the pipeline holds them when it closes the candle (the closing trade not yet
in), logged offline and written to the live hash with the close time, so the API serves the value
that was logged.

Event time comes from the feed: ``feed_ns`` is the largest event time accepted; the runner
advances to ``feed_ns`` plus the feed's idle time (``advance``), never to the machine's clock. An
event stamped more than ``max_future_ns`` ahead of both ``feed_ns`` and the wall clock is
malformed (counted, never fed to a candle); before any event is known the bound against the wall
clock is ``COLD_FUTURE_NS`` (a machine clock that is off by seconds must not refuse the feed).

Two clocks are injected: ``clock`` (monotonic ns) only stamps when a candle closed, for lag
metrics; ``wall_clock`` (epoch ns) is the machine's time the future bound compares with.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

import structlog

from rtml_core.book import OrderBook, TradeFlow, book_features
from rtml_core.candles import CandleBuilder, TradeAggregate
from rtml_core.errors import InputError
from rtml_core.features import DEFAULT_FEATURE_SET, FeatureEngine, FeatureSet
from rtml_core.features.microstructure import MicrostructureSet
from rtml_core.schemas import BookUpdate, Candle, FeatureRow, Trade
from rtml_core.timeframes import timeframe_ns

log = structlog.get_logger("rtml_stream.pipeline")

NO_RESUME = -(2**63)
COLD_FUTURE_NS = 3_600_000_000_000  # before the feed's clock is known: 1 h ahead of the wall clock
_KEEP_MALFORMED = 100  # malformed events kept per drain (all are counted)
_MIN_SEGMENT = 4  # shorter runs are cheaper trade by trade
_MAX_PENDING_FLOW = 16_384  # trades held for the trade-flow window between live reads
_TIME = attrgetter("time_ns")


@dataclass(frozen=True, slots=True)
class Correction:
    """A trade that arrived after its ``timeframe`` window had closed (watermark at ``watermark_ns``)."""

    trade: Trade
    timeframe: str
    window_start_ns: int
    watermark_ns: int


@dataclass(frozen=True, slots=True)
class Gap:
    """Empty windows ``[from_ns, to_ns)`` of a timeframe, too many to fill with flat candles."""

    exchange: str
    symbol: str
    timeframe: str
    from_ns: int
    to_ns: int

    @property
    def candles(self) -> int:
        return (self.to_ns - self.from_ns) // timeframe_ns(self.timeframe)


@dataclass(slots=True)
class Output:
    """What the pipeline produced since the last ``drain``: in the order it happened."""

    candles: list[Candle]
    rows: list[FeatureRow]
    corrections: list[Correction]
    closed_at: dict[tuple[str, str, str, int], int]  # row key -> clock ns of the closing event
    gaps: list[Gap] = field(default_factory=list)
    malformed: list[Trade | BookUpdate] = field(default_factory=list)  # the first few of this drain
    corrected: list[Candle] = field(default_factory=list)  # closed candles a late trade changed
    microstructure: list[FeatureRow] = field(default_factory=list)  # the group's row of each closed candle
    microstructure_live: dict[tuple[str, str], tuple[int, int, dict[str, float]]] = field(default_factory=dict)
    # (exchange, symbol) -> (close ns, live event time ns, values) of the market's latest close

    def microstructure_live_fields(self, group: MicrostructureSet) -> list[tuple[str, str, int, dict[str, float]]]:
        """(exchange, symbol, live event time, live-hash fields) of each market's latest close: added to
        the online sink before the rows, so the write that carries a row carries the values of its close."""
        return [(exchange, symbol, time_ns, group.live_fields(values, close_ns))
                for (exchange, symbol), (close_ns, time_ns, values) in self.microstructure_live.items()]


class MarketState:
    """All state of one market: builders and engines per timeframe, trade flow, book, resume marks."""

    __slots__ = ("exchange", "symbol", "timeframes", "builders", "engines", "flow", "book", "live_dirty",
                 "last_trade_id", "last_trade_time_ns", "resume_after_id", "resume_until", "resume_max",
                 "book_seen", "pending_flow")

    def __init__(self, exchange: str, symbol: str, timeframes: Sequence[str], builders: list[CandleBuilder],
                 engines: list[FeatureEngine], flow: TradeFlow) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.timeframes = tuple(timeframes)
        self.builders = builders
        self.engines = engines
        self.flow = flow
        self.pending_flow: list[Trade] = []  # trades not yet in ``flow`` (folded when live values are read)
        self.book = OrderBook()
        self.book_seen = False
        self.live_dirty = False
        self.last_trade_id: int | None = None
        self.last_trade_time_ns: int | None = None
        self.resume_after_id = NO_RESUME  # trades with ids up to this were folded in before a restart
        self.resume_until: list[int] = [NO_RESUME] * len(builders)  # per builder: time already in stored candles
        self.resume_max = NO_RESUME

    def set_resume_times(self, until: Sequence[int]) -> None:
        """Trades before ``until[i]`` are already in builder i's closed candles (rebuilt from storage)."""
        self.resume_until = list(until)
        self.resume_max = max(self.resume_until, default=NO_RESUME)


class Pipeline:
    """Trades and book updates of many markets in; candles, feature rows, corrections and live values out."""

    def __init__(
        self,
        timeframes: Sequence[str],
        *,
        feature_set: FeatureSet = DEFAULT_FEATURE_SET,
        allowed_lateness_ns: int = 0,
        fill_gaps: bool = True,
        flow_window_ns: int = 60_000_000_000,
        book_levels: int = 10,
        max_future_ns: int | None = 5_000_000_000,
        max_fill_candles: int | None = 1_440,
        keep_closed: int = 64,
        clock: Callable[[], int] = time.perf_counter_ns,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if not timeframes:
            raise ValueError("at least one timeframe is required")
        self.timeframes = tuple(dict.fromkeys(timeframes))
        self.tf_ns = tuple(timeframe_ns(tf) for tf in self.timeframes)
        self._tf_min = min(self.tf_ns)
        self._nested = all(tf % self._tf_min == 0 for tf in self.tf_ns)  # windows of tf_min nest in every other
        self.feature_set = feature_set
        self.version = feature_set.version
        self.allowed_lateness_ns = allowed_lateness_ns
        self.fill_gaps = fill_gaps
        self.flow_window_ns = flow_window_ns
        self.book_levels = book_levels
        self.microstructure = MicrostructureSet(levels=book_levels, flow_window_s=max(1, flow_window_ns // 10**9))
        self.clock = clock
        self.wall_clock = wall_clock
        self.max_future_ns = max_future_ns
        self.max_fill_candles = max_fill_candles
        self.keep_closed = keep_closed
        self.feed_ns: int | None = None  # the feed's clock: the largest event time accepted
        self.markets: dict[tuple[str, str], MarketState] = {}
        self.trades_in = 0
        self.duplicates = 0
        self.late = 0
        self.malformed = 0  # events refused for a timestamp too far ahead
        self.gaps = 0
        self.corrections_applied = 0  # late trades folded into a closed candle (rewritten offline)
        self.candles_out = 0
        self.rows_out = 0
        self.engine_errors = 0
        self._new_output()

    # -- state -------------------------------------------------------------------------------
    def _new_output(self) -> None:
        self._candles: list[Candle] = []
        self._rows: list[FeatureRow] = []
        self._corrections: list[Correction] = []
        self._closed_at: dict[tuple[str, str, str, int], int] = {}
        self._gaps: list[Gap] = []
        self._malformed: list[Trade | BookUpdate] = []
        self._corrected: list[Candle] = []
        self._micro: list[FeatureRow] = []
        self._micro_live: dict[tuple[str, str], tuple[int, int, dict[str, float]]] = {}

    def new_builder(self, exchange: str, symbol: str, timeframe: str) -> CandleBuilder:
        builder = CandleBuilder(exchange, symbol, timeframe, allowed_lateness_ns=self.allowed_lateness_ns,
                                fill_gaps=self.fill_gaps, keep_late_trades=0, max_fill_candles=self.max_fill_candles)
        self._hook(builder)
        return builder

    def _hook(self, builder: CandleBuilder) -> None:
        builder.on_late = lambda trade, b=builder: self._on_late(b, trade)
        builder.on_gap = lambda from_ns, to_ns, b=builder: self._on_gap(b, from_ns, to_ns)
        builder.on_correct = self._on_correct
        builder.max_fill_candles = self.max_fill_candles
        builder.keep_closed = self.keep_closed

    def market(self, exchange: str, symbol: str) -> MarketState:
        """The state of a market, created empty (cold start) on first use."""
        key = (exchange, symbol)
        state = self.markets.get(key)
        if state is None:
            state = MarketState(
                exchange, symbol, self.timeframes,
                [self.new_builder(exchange, symbol, tf) for tf in self.timeframes],
                [FeatureEngine(self.feature_set) for _ in self.timeframes],
                TradeFlow(self.flow_window_ns),
            )
            self.markets[key] = state
        return state

    def install(self, state: MarketState) -> None:
        """Use a restored market state (checkpoint or offline rebuild)."""
        for builder in state.builders:
            self._hook(builder)
        self.markets[(state.exchange, state.symbol)] = state
        if state.last_trade_time_ns is not None:
            self._saw(state.last_trade_time_ns)
        for builder in state.builders:  # the watermark holds the idle time the feed had advanced by
            if builder.watermark_ns is not None:
                self._saw(builder.watermark_ns + (builder.allowed_lateness_ns or 0))

    # -- the feed's clock and the future bound ---------------------------------------------
    def _saw(self, time_ns: int) -> None:
        if self.feed_ns is None or time_ns > self.feed_ns:
            self.feed_ns = time_ns

    def future_limit_ns(self) -> int | None:
        """Latest acceptable event time now: ``max_future_ns`` past the later of the feed's clock
        and the wall clock (``COLD_FUTURE_NS`` past the wall clock while the feed's is unknown)."""
        if self.max_future_ns is None:
            return None
        wall = self.wall_clock()
        if self.feed_ns is None:
            return wall + max(self.max_future_ns, COLD_FUTURE_NS)
        return max(wall, self.feed_ns) + self.max_future_ns

    def _refuse(self, event: Trade | BookUpdate) -> None:
        self.malformed += 1
        if len(self._malformed) < _KEEP_MALFORMED:
            self._malformed.append(event)

    def _in_bounds(self, trades: Sequence[Trade]) -> Sequence[Trade]:
        """``trades`` without those stamped too far ahead (counted); the feed's clock follows."""
        newest = max(map(_TIME, trades))
        limit = self.future_limit_ns()
        if limit is None or newest <= limit:
            self._saw(newest)
            return trades
        kept = []
        for trade in trades:  # rare: one by one, the bound moving with each trade accepted
            if trade.time_ns > limit:
                self._refuse(trade)
                continue
            kept.append(trade)
            if self.feed_ns is None or trade.time_ns > self.feed_ns:
                self.feed_ns = trade.time_ns
                limit = self.future_limit_ns()
        return kept

    # -- steps -------------------------------------------------------------------------------
    def on_trades(self, trades: Iterable[Trade]) -> None:
        """Fold trades in (any mix of markets); closed candles become feature rows at once.

        Runs of trades of one market inside one window of the finest timeframe are summarized once
        (``TradeAggregate``: max, min, exact Decimal sums) and folded into every builder with
        ``CandleBuilder.add_aggregate``, the same candles as trade-by-trade ``add`` at a fraction of
        the cost; a resume after restart and timeframes that do not nest take the per-trade path.
        """
        if not isinstance(trades, (list, tuple)):
            trades = list(trades)
        if not trades:
            return
        received = len(trades)
        trades = self._in_bounds(trades)
        n = len(trades)
        i = 0
        tf_min = self._tf_min
        markets = self.markets
        while i < n:
            first = trades[i]
            exchange, symbol = first.exchange, first.symbol
            state = markets.get((exchange, symbol)) or self.market(exchange, symbol)
            t0 = first.time_ns
            start = t0 - t0 % tf_min
            end = start + tf_min
            j = i + 1
            while j < n:
                trade = trades[j]
                t = trade.time_ns
                if t < start or t >= end or trade.symbol != symbol or trade.exchange != exchange:
                    break
                j += 1
            segment = trades[i:j] if (i or j != n) else trades
            if j - i >= _MIN_SEGMENT and self._nested and state.resume_after_id == NO_RESUME \
                    and state.resume_max == NO_RESUME:
                self._fold_segment(state, segment)
            else:
                self._add_each(state, segment)
            if len(state.pending_flow) > _MAX_PENDING_FLOW:
                self._fold_flow(state)
            i = j
        self.trades_in += received

    def _fold_flow(self, state: MarketState) -> None:
        """Feed the pending trades to the market's ``TradeFlow``, skipping those the window has
        already left (time ordered input: the same window contents as feeding every trade)."""
        pending = state.pending_flow
        if not pending:
            return
        state.pending_flow = []
        flow = state.flow
        latest = max(trade.time_ns for trade in pending)
        if flow.latest_ns is not None and flow.latest_ns > latest:
            latest = flow.latest_ns
        cutoff = latest - flow.window_ns
        add = flow.add_values
        for trade in pending:
            t = trade.time_ns
            if t > cutoff:
                add(t, float(trade.price), float(trade.size), trade.side)

    def _add_each(self, state: MarketState, trades: Sequence[Trade]) -> None:
        """The per-trade path: every trade through every builder (late trades, resume marks)."""
        closed_any = self._closed
        builders = state.builders
        pending = state.pending_flow
        for trade in trades:
            tid = trade.trade_id
            if tid <= state.resume_after_id:
                self.duplicates += 1
                continue
            t = trade.time_ns
            if t < state.resume_max:
                self._add_resuming(state, trade)
            else:
                if state.resume_max != NO_RESUME:
                    state.set_resume_times([NO_RESUME] * len(builders))
                for k, builder in enumerate(builders):
                    closed = builder.add(trade)
                    if closed:
                        closed_any(state, k, closed)
            pending.append(trade)
            last = state.last_trade_id
            if last is None or tid > last:
                state.last_trade_id = tid
                state.last_trade_time_ns = t
            state.live_dirty = True

    def _fold_segment(self, state: MarketState, segment: Sequence[Trade]) -> None:
        """Trades of one market inside one window of every timeframe: fold them as one aggregate."""
        run = TradeAggregate(segment)
        closed_any = self._closed
        for k, builder in enumerate(state.builders):
            closed = builder.add_aggregate(run)
            if closed:
                closed_any(state, k, closed)
        state.pending_flow.extend(segment)
        top_id = max(trade.trade_id for trade in segment)
        if state.last_trade_id is None or top_id > state.last_trade_id:
            state.last_trade_id = top_id
            state.last_trade_time_ns = run.last.time_ns
        state.live_dirty = True

    def on_trade(self, trade: Trade) -> None:
        self.on_trades((trade,))

    def _add_resuming(self, state: MarketState, trade: Trade) -> None:
        """After a rebuild from stored candles: a builder skips trades its stored candles hold."""
        t = trade.time_ns
        for i, builder in enumerate(state.builders):
            if t < state.resume_until[i]:
                continue
            closed = builder.add(trade)
            if closed:
                self._closed(state, i, closed)

    def on_book(self, update: BookUpdate) -> None:
        """Apply an L2 snapshot or diff to the market's book (the live features read it)."""
        limit = self.future_limit_ns()
        if limit is not None and update.time_ns > limit:
            self._refuse(update)
            return
        self._saw(update.time_ns)
        state = self.markets.get((update.exchange, update.symbol)) or self.market(update.exchange, update.symbol)
        state.book.apply(update)
        state.book_seen = True
        state.live_dirty = True

    def advance(self, now_ns: int) -> None:
        """Move event time to ``now_ns`` (the feed's clock plus its idle time): candles whose window
        the watermark passed close. Never beyond the future bound."""
        limit = self.future_limit_ns()
        if limit is not None and now_ns > limit:
            now_ns = limit
        for state in self.markets.values():
            for i, builder in enumerate(state.builders):
                closed = builder.advance(now_ns)
                if closed:
                    self._closed(state, i, closed)
            self._fold_flow(state)
            if state.flow.trade_count:
                state.flow.advance(now_ns)
                state.live_dirty = True

    def flush_open(self) -> None:
        """Close every open window (end of a finite replay)."""
        for state in self.markets.values():
            for i, builder in enumerate(state.builders):
                closed = builder.flush()
                if closed:
                    self._closed(state, i, closed)

    def _closed(self, state: MarketState, index: int, candles: list[Candle]) -> None:
        engine = state.engines[index]
        tf = state.timeframes[index]
        tf_ns = self.tf_ns[index]
        now = self.clock()
        for candle in candles:
            self._candles.append(candle)
            self.candles_out += 1
            try:
                values = engine.update(candle)
            except InputError as error:  # a candle older than the engine's state: never crash
                self.engine_errors += 1
                log.error("feature_engine_refused_candle", exchange=state.exchange, symbol=state.symbol,
                          timeframe=tf, start_ns=candle.start_ns, error=str(error))
                continue
            end = candle.start_ns + tf_ns
            values = {**values, "close": float(candle.close)}  # ROW_CONTEXT_FIELDS: the price served with it
            self._rows.append(FeatureRow(state.exchange, state.symbol, tf, end, self.version, values))
            self._closed_at[(state.exchange, state.symbol, tf, end)] = now
            self.rows_out += 1
            self._microstructure_at_close(state, tf, end)

    def _microstructure_at_close(self, state: MarketState, timeframe: str, end: int) -> None:
        """The microstructure group's row of a candle closing at ``end`` (one computation per close
        time and market, shared by every timeframe closing then)."""
        key = (state.exchange, state.symbol)
        latest = self._micro_live.get(key)
        if latest is not None and latest[0] == end:
            values = latest[2]
        else:
            pending = state.pending_flow  # the caller may hold this list: fold it, keep the same object
            self._fold_flow(state)
            pending.clear()
            state.pending_flow = pending
            state.flow.advance(end)
            values = self.microstructure.values(state.book if state.book_seen else None, state.flow)
            if latest is None or end > latest[0]:
                self._micro_live[key] = (end, max(end, state.last_trade_time_ns or end), values)
        self._micro.append(FeatureRow(state.exchange, state.symbol, timeframe, end, self.microstructure.version,
                                      values))

    def _on_gap(self, builder: CandleBuilder, from_ns: int, to_ns: int) -> None:
        self.gaps += 1
        gap = Gap(builder.exchange, builder.symbol, builder.timeframe, from_ns, to_ns)
        self._gaps.append(gap)
        log.warning("candle_gap_not_filled", exchange=gap.exchange, symbol=gap.symbol, timeframe=gap.timeframe,
                    from_ns=from_ns, to_ns=to_ns, candles=gap.candles, max_fill_candles=self.max_fill_candles)

    def _on_correct(self, candle: Candle) -> None:
        self.corrections_applied += 1
        self._corrected.append(candle)

    def _on_late(self, builder: CandleBuilder, trade: Trade) -> None:
        self.late += 1
        t = trade.time_ns
        self._corrections.append(Correction(trade, builder.timeframe, t - t % builder.tf_ns, builder.watermark_ns))

    # -- outputs -----------------------------------------------------------------------------
    def drain(self) -> Output:
        """Everything produced since the last drain (and forget it)."""
        out = Output(self._candles, self._rows, self._corrections, self._closed_at, self._gaps, self._malformed,
                     self._corrected, self._micro, self._micro_live)
        self._new_output()
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._candles or self._rows or self._corrections or self._gaps or self._malformed
                    or self._corrected)

    def live_values(self) -> list[tuple[str, str, int, dict[str, float]]]:
        """(exchange, symbol, event time, values) of each market whose trades or book changed."""
        out = []
        for state in self.markets.values():
            if not state.live_dirty:
                continue
            state.live_dirty = False
            self._fold_flow(state)
            values = state.flow.features()
            time_ns = state.last_trade_time_ns or 0
            if state.book_seen and state.book.best_bid() is not None and state.book.best_ask() is not None:
                values.update(book_features(state.book, self.book_levels))
            values = {name: float(value) for name, value in values.items()}
            values = {name: value for name, value in values.items() if not math.isinf(value)}
            out.append((state.exchange, state.symbol, time_ns, values))
        return out
