"""The one candle builder: event-time tumbling windows over trades, exact in Decimal.

Used by the batch path (``build_candles``, ``rtml candles``, importers) and by the stream
(one ``CandleBuilder`` per timeframe).

Rules:
- A window ``[start, start + tf)`` is aligned to the epoch (``rtml_core.timeframes``).
- Open is the first trade and close the last trade by ``(time_ns, trade_id)``, so trades
  with the same timestamp are ordered by trade id whatever order they arrive in.
- OHLC are the exchange's own Decimals; volume and ``sum(price * size)`` are summed in an
  unbounded-precision context, so they are exact. ``vwap = sum(p*q) / sum(q)`` is rounded
  to 28 significant digits (a quotient has no exact decimal form in general); ``None``
  when the volume is zero.
- The watermark is the largest event time seen (or given to ``advance``) minus the allowed
  lateness. A window closes when the watermark reaches its end. A trade whose window has
  already closed is *late*: never folded in silently, never dropped silently; it is
  counted in ``late`` and kept in ``late_trades`` (and passed to ``on_late``) so the stream
  can record a correction. With ``keep_closed=N`` the builder also keeps its last N closed
  windows that had trades: a late trade of one of them is folded in by the same rules and the
  corrected candle is passed to ``on_correct`` (``corrected`` counts them), so the stored
  candle can be rewritten.
- Gap filling follows Kraken's OHLC: an empty interval inside the range gets the previous
  close as open/high/low/close, zero volume and trade count, and ``vwap=None``. A gap longer
  than ``max_fill_candles`` is not filled candle by candle: it is counted in ``gaps`` and
  passed to ``on_gap(from_ns, to_ns)``, so one far jump in time costs constant memory and time.
- ``add_aggregate(TradeAggregate(trades))`` folds a run of trades that fall in one window as
  one exact summary (the stream's fast path): the same candles, lateness and counters as
  adding them one by one.
- ``snapshot()`` is the builder's state as plain data (Decimals as exact strings);
  ``load_state(data)`` / ``CandleBuilder.restore(data)`` continue from it exactly.
"""

from __future__ import annotations

import csv
import decimal
import operator
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from rtml_core.errors import InputError, RtmlError
from rtml_core.schemas import Candle, Trade
from rtml_core.timeframes import timeframe_ns
from rtml_core.times import iso_from_ns

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CSV_COLUMNS",
    "SNAPSHOT_FORMAT",
    "CandleBuilder",
    "TradeAggregate",
    "build_candles",
    "candles_to_frame",
    "fill_gaps",
    "write_candles_csv",
]

_EXACT = decimal.Context(
    prec=decimal.MAX_PREC,
    Emax=decimal.MAX_EMAX,
    Emin=decimal.MIN_EMIN,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)
_VWAP = decimal.Context(prec=28, rounding=decimal.ROUND_HALF_EVEN)
_add = _EXACT.add
_mul = _EXACT.multiply
_ZERO = Decimal(0)

CSV_COLUMNS = ("time", "open", "high", "low", "close", "volume", "vwap", "trade_count")

SNAPSHOT_FORMAT = 1
"""Layout of ``CandleBuilder.snapshot()`` (data without a ``format`` key is this layout too)."""
_ORDER = operator.attrgetter("time_ns", "trade_id")


class TradeAggregate:
    """A run of trades summarized exactly, to fold into builders at once (``add_aggregate``).

    ``first``/``last`` are the earliest and latest trades by ``(time_ns, trade_id)`` (the first
    met among equals, as ``add`` keeps them); ``high``/``low`` the extreme prices (the first
    met among equal values); ``volume`` and ``notional`` (the sum of price * size) exact.
    The trades are kept: a builder whose window has already closed records each one as late.
    """

    __slots__ = ("count", "first", "high", "last", "low", "notional", "trades", "volume")

    def __init__(self, trades: Sequence[Trade]):
        if not trades:
            raise ValueError("a trade aggregate needs at least one trade")
        prices = [trade.price for trade in trades]
        sizes = [trade.size for trade in trades]
        self.trades = trades
        self.first = min(trades, key=_ORDER)
        self.last = max(trades, key=_ORDER)
        self.high = max(prices)
        self.low = min(prices)
        self.count = len(trades)
        # summed from the first term (not from 0) so the exponent is the one adding one by one gives
        with decimal.localcontext(_EXACT):
            self.volume = sum(sizes[1:], sizes[0])
            products = map(operator.mul, prices, sizes)
            self.notional = sum(products, next(products))


class _Window:
    """Running state of one open window (mutable; becomes a Candle when closed)."""

    __slots__ = (
        "start",
        "open",
        "open_t",
        "open_id",
        "high",
        "low",
        "close",
        "close_t",
        "close_id",
        "volume",
        "notional",
        "count",
    )

    def __init__(self, start: int, t: int, tid: int, price: Decimal, size: Decimal):
        self.start = start
        self.open = self.high = self.low = self.close = price
        self.open_t = self.close_t = t
        self.open_id = self.close_id = tid
        self.volume = size
        self.notional = _mul(price, size)
        self.count = 1

    @classmethod
    def of_aggregate(cls, start: int, run: TradeAggregate) -> _Window:
        window = cls.__new__(cls)
        first, last = run.first, run.last
        window.start = start
        window.open, window.open_t, window.open_id = first.price, first.time_ns, first.trade_id
        window.close, window.close_t, window.close_id = last.price, last.time_ns, last.trade_id
        window.high, window.low = run.high, run.low
        window.volume, window.notional, window.count = run.volume, run.notional, run.count
        return window

    @classmethod
    def of_snapshot(cls, s: _WindowSnapshot) -> _Window:
        window = cls.__new__(cls)
        for name in _WindowSnapshot.__struct_fields__:
            setattr(window, name, getattr(s, name))
        return window

    def to_snapshot(self) -> _WindowSnapshot:
        return _WindowSnapshot(*(getattr(self, name) for name in _WindowSnapshot.__struct_fields__))


def _fold(window: _Window, trade: Trade) -> None:
    """One trade into a window by ``add``'s rules (the late path; ``add`` inlines this)."""
    price, t, tid = trade.price, trade.time_ns, trade.trade_id
    if price > window.high:
        window.high = price
    elif price < window.low:
        window.low = price
    if t > window.close_t or (t == window.close_t and tid > window.close_id):
        window.close, window.close_t, window.close_id = price, t, tid
    elif t < window.open_t or (t == window.open_t and tid < window.open_id):
        window.open, window.open_t, window.open_id = price, t, tid
    window.volume = _add(window.volume, trade.size)
    window.notional = _add(window.notional, _mul(price, trade.size))
    window.count += 1


class _WindowSnapshot(msgspec.Struct, array_like=True, frozen=True):
    """One open window in a snapshot: a list of these fields in this order."""

    start: int
    open: Decimal
    open_t: int
    open_id: int
    high: Decimal
    low: Decimal
    close: Decimal
    close_t: int
    close_id: int
    volume: Decimal
    notional: Decimal
    count: int


class _Snapshot(msgspec.Struct, frozen=True):
    """``CandleBuilder.snapshot()``'s layout. The required fields are those the sidecar's
    checkpoint files held before this API existed, so those files still load."""

    timeframe: str
    watermark_ns: int | None
    closed_until_ns: int | None
    last_close: Decimal | None
    late: int
    windows: list[_WindowSnapshot]
    format: int = SNAPSHOT_FORMAT
    exchange: str | msgspec.UnsetType = msgspec.UNSET
    symbol: str | msgspec.UnsetType = msgspec.UNSET
    allowed_lateness_ns: int | None | msgspec.UnsetType = msgspec.UNSET
    fill_gaps: bool | msgspec.UnsetType = msgspec.UNSET
    late_trades: list[Trade] = []


_SNAPSHOT_SOURCE = "candle builder snapshot"


def _parse_snapshot(data: Any) -> _Snapshot:
    try:
        snapshot = msgspec.convert(data, _Snapshot)
    except msgspec.ValidationError as error:
        raise InputError(f"not a candle builder snapshot: {error}", source=_SNAPSHOT_SOURCE) from None
    if snapshot.format != SNAPSHOT_FORMAT:
        raise InputError(
            f"snapshot format {snapshot.format} is not {SNAPSHOT_FORMAT} (written by another rtml version)",
            source=_SNAPSHOT_SOURCE,
        )
    return snapshot


class CandleBuilder:
    """Event-time tumbling-window candles for one (exchange, symbol, timeframe).

    ``add(trade)`` and ``advance(now_ns)`` return the candles they closed, oldest first;
    ``flush()`` closes every open window; ``peek()`` previews the newest open window.
    ``add_aggregate`` folds a run of trades of one window at once; ``snapshot``/``load_state``
    save and restore the state. State is the open windows only (one, when trades arrive in
    time order).
    ``allowed_lateness_ns=None`` keeps every window open until ``advance``/``flush``
    (the batch mode: order-independent, nothing is ever late).
    The builder does not deduplicate: a trade fed twice counts twice (sources and stores
    key trades on their id).
    """

    def __init__(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        *,
        allowed_lateness_ns: int | None = 0,
        fill_gaps: bool = False,
        on_late: Callable[[Trade], None] | None = None,
        keep_late_trades: int = 10_000,
        max_fill_candles: int | None = None,
        on_gap: Callable[[int, int], None] | None = None,
        keep_closed: int = 0,
        on_correct: Callable[[Candle], None] | None = None,
    ):
        if allowed_lateness_ns is not None and allowed_lateness_ns < 0:
            raise ValueError("allowed_lateness_ns must be >= 0")
        if max_fill_candles is not None and max_fill_candles < 0:
            raise ValueError("max_fill_candles must be >= 0")
        self.exchange = exchange
        self.symbol = symbol
        self.timeframe = timeframe
        self.tf_ns = timeframe_ns(timeframe)
        self.allowed_lateness_ns = allowed_lateness_ns
        self.fill_gaps = fill_gaps
        self.on_late = on_late
        self.keep_late_trades = keep_late_trades
        self.max_fill_candles = max_fill_candles
        self.on_gap = on_gap
        self.keep_closed = keep_closed
        self.on_correct = on_correct
        self.corrected = 0
        """How many late trades were folded into a kept closed window (a corrected candle each)."""
        self._recent: dict[int, _Window] = {}  # the last ``keep_closed`` closed windows with trades
        self.gaps = 0
        """How many gaps were longer than ``max_fill_candles`` (recorded, not filled)."""
        self.late = 0
        """How many late trades were seen (their window had already closed)."""
        self.late_trades: list[Trade] = []
        """Late trades not yet drained (the first ``keep_late_trades``; ``late`` counts all)."""
        self.watermark_ns: int | None = None
        self._windows: dict[int, _Window] = {}
        self._current: _Window | None = None  # the window the last trade went to (fast path)
        self._closed_until: int | None = None  # end of the last closed (or filled) window
        self._last_close: Decimal | None = None

    # -- feeding -------------------------------------------------------------------------
    def add(self, trade: Trade) -> list[Candle]:
        """Fold one trade in; return the candles the advancing watermark closed."""
        t = trade.time_ns
        tf = self.tf_ns
        start = t - t % tf
        current = self._current
        if current is not None and current.start == start:
            window = current
        else:
            closed_until = self._closed_until
            if closed_until is not None and start < closed_until:
                self._record_late(trade)
                return []
            window = self._windows.get(start)
            if window is None:
                window = _Window(start, t, trade.trade_id, trade.price, trade.size)
                self._windows[start] = window
                self._current = window
                return self._after_event(t) if self.allowed_lateness_ns is not None else []
            self._current = window
        price = trade.price
        tid = trade.trade_id
        if price > window.high:
            window.high = price
        elif price < window.low:
            window.low = price
        if t > window.close_t or (t == window.close_t and tid > window.close_id):
            window.close = price
            window.close_t = t
            window.close_id = tid
        elif t < window.open_t or (t == window.open_t and tid < window.open_id):
            window.open = price
            window.open_t = t
            window.open_id = tid
        size = trade.size
        window.volume = _add(window.volume, size)
        window.notional = _add(window.notional, _mul(price, size))
        window.count += 1
        lateness = self.allowed_lateness_ns
        if lateness is None:
            return []
        watermark = self.watermark_ns
        if watermark is not None and t - lateness <= watermark:
            return []
        return self._after_event(t)

    def add_many(self, trades: Iterable[Trade]) -> list[Candle]:
        """Fold many trades in; return every candle closed on the way."""
        closed: list[Candle] = []
        add = self.add
        extend = closed.extend
        for trade in trades:
            out = add(trade)
            if out:
                extend(out)
        return closed

    def add_aggregate(self, run: TradeAggregate) -> list[Candle]:
        """Fold in a run of trades that all fall in one window of this timeframe, as one summary.

        The same candles, watermark and late trades as ``add`` of each trade in turn: if the
        window has already closed, every trade of the run is late (counted, kept, passed to
        ``on_late``, in run order); otherwise the summary is folded in and the watermark moves
        to the run's latest trade.
        """
        first = run.first
        last = run.last
        t0 = first.time_ns
        tf = self.tf_ns
        start = t0 - t0 % tf
        if last.time_ns >= start + tf:
            raise ValueError(f"the trades span more than one {self.timeframe} window")
        current = self._current
        if current is not None and current.start == start:
            window = current
        else:
            closed_until = self._closed_until
            if closed_until is not None and start < closed_until:
                for trade in run.trades:
                    self._record_late(trade)
                return []
            window = self._windows.get(start)
            if window is None:
                window = _Window.of_aggregate(start, run)
                self._windows[start] = window
                self._current = window
                return self._after_event(last.time_ns) if self.allowed_lateness_ns is not None else []
            self._current = window
        window.high = max(window.high, run.high)  # the first of equal values stays, as in add
        window.low = min(window.low, run.low)
        t = last.time_ns
        if t > window.close_t or (t == window.close_t and last.trade_id > window.close_id):
            window.close = last.price
            window.close_t = t
            window.close_id = last.trade_id
        if t0 < window.open_t or (t0 == window.open_t and first.trade_id < window.open_id):
            window.open = first.price
            window.open_t = t0
            window.open_id = first.trade_id
        window.volume = _add(window.volume, run.volume)
        window.notional = _add(window.notional, run.notional)
        window.count += run.count
        lateness = self.allowed_lateness_ns
        if lateness is None:
            return []
        watermark = self.watermark_ns
        if watermark is not None and t - lateness <= watermark:
            return []
        return self._after_event(t)

    def advance(self, now_ns: int) -> list[Candle]:
        """Move event time to ``now_ns`` (a timer or heartbeat) and close what it passes."""
        return self._after_event(now_ns)

    def flush(self) -> list[Candle]:
        """Close every open window (end of input or shutdown)."""
        if not self._windows:
            return []
        last_end = max(self._windows) + self.tf_ns
        out = self._close_until(last_end)
        if self.watermark_ns is None or self.watermark_ns < last_end:
            self.watermark_ns = last_end
        return out

    def peek(self) -> Candle | None:
        """The newest open window as a candle, without closing it."""
        if not self._windows:
            return None
        return self._to_candle(self._windows[max(self._windows)])

    def drain_late(self) -> list[Trade]:
        """Return the kept late trades and forget them (``late`` keeps counting)."""
        late, self.late_trades = self.late_trades, []
        return late

    @property
    def open_windows(self) -> int:
        return len(self._windows)

    # -- state ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The builder's state as plain data (JSON and msgpack ready; Decimals as exact strings).

        Holds the configuration, watermark, end of the last closed window, last close, the
        ``late`` count, the kept late trades and every open window; ``load_state`` or
        ``CandleBuilder.restore`` continue from it exactly. The ``on_late`` callback is not state.
        """
        snapshot = _Snapshot(
            timeframe=self.timeframe,
            watermark_ns=self.watermark_ns,
            closed_until_ns=self._closed_until,
            last_close=self._last_close,
            late=self.late,
            windows=[self._windows[start].to_snapshot() for start in sorted(self._windows)],
            exchange=self.exchange,
            symbol=self.symbol,
            allowed_lateness_ns=self.allowed_lateness_ns,
            fill_gaps=self.fill_gaps,
            late_trades=list(self.late_trades),
        )
        return msgspec.to_builtins(snapshot)

    @classmethod
    def restore(cls, data: Any, **options: Any) -> CandleBuilder:
        """A builder continuing from ``snapshot()`` data, configured as the snapshot says
        (``options``, e.g. ``on_late``, override or complete that configuration)."""
        snapshot = _parse_snapshot(data)
        if snapshot.exchange is msgspec.UNSET or snapshot.symbol is msgspec.UNSET:
            raise InputError("the snapshot names no exchange and symbol: use load_state on a builder",
                             source=_SNAPSHOT_SOURCE)
        config = {name: getattr(snapshot, name) for name in ("allowed_lateness_ns", "fill_gaps")
                  if getattr(snapshot, name) is not msgspec.UNSET}
        builder = cls(snapshot.exchange, snapshot.symbol, snapshot.timeframe, **{**config, **options})
        builder._load(snapshot)
        return builder

    def load_state(self, data: Any) -> None:
        """Replace this builder's state with ``snapshot()`` data of the same market and timeframe.

        The builder keeps its own configuration (lateness, gap filling, ``on_late``). Data that
        is not a valid snapshot raises ``InputError`` and leaves the builder as it was.
        """
        self._load(_parse_snapshot(data))

    def resume_at(self, end_ns: int, last_close: Decimal) -> None:
        """Continue after candles closed elsewhere (e.g. rebuilt from storage): every window
        ending at or before ``end_ns`` counts as closed, the watermark starts at ``end_ns`` and
        gap filling repeats ``last_close``. Only on a builder with no open window."""
        if end_ns % self.tf_ns:
            raise ValueError(f"{end_ns} is not a {self.timeframe} window boundary")
        if self._windows:
            raise ValueError("resume_at needs a builder with no open window")
        self._closed_until = end_ns
        self.watermark_ns = end_ns
        self._last_close = last_close

    # -- internals -----------------------------------------------------------------------
    def _load(self, snapshot: _Snapshot) -> None:
        def refuse(problem: str) -> InputError:
            return InputError(problem, source=_SNAPSHOT_SOURCE)

        if snapshot.timeframe != self.timeframe:
            raise refuse(f"snapshot of timeframe {snapshot.timeframe}, not {self.timeframe}")
        for name in ("exchange", "symbol"):
            value = getattr(snapshot, name)
            if value is not msgspec.UNSET and value != getattr(self, name):
                raise refuse(f"snapshot of {name} {value}, not {getattr(self, name)}")
        windows: dict[int, _Window] = {}
        closed_until = snapshot.closed_until_ns
        for s in snapshot.windows:
            if s.start % self.tf_ns or s.start in windows or s.count < 1:
                raise refuse(f"window at {s.start} is not an open {self.timeframe} window")
            if closed_until is not None and s.start < closed_until:
                raise refuse(f"window at {s.start} is before the closed-until mark {closed_until}")
            windows[s.start] = _Window.of_snapshot(s)
        self.watermark_ns = snapshot.watermark_ns
        self._closed_until = closed_until
        self._last_close = snapshot.last_close
        self.late = snapshot.late
        self.late_trades = snapshot.late_trades[: self.keep_late_trades]
        self._windows = windows
        self._current = None

    def _record_late(self, trade: Trade) -> None:
        self.late += 1
        if len(self.late_trades) < self.keep_late_trades:
            self.late_trades.append(trade)
        if self.on_late is not None:
            self.on_late(trade)
        t = trade.time_ns
        window = self._recent.get(t - t % self.tf_ns)
        if window is not None:
            _fold(window, trade)
            self.corrected += 1
            if self.on_correct is not None:
                self.on_correct(self._to_candle(window))

    def _after_event(self, event_ns: int) -> list[Candle]:
        watermark = event_ns - (self.allowed_lateness_ns or 0)
        if self.watermark_ns is not None and watermark <= self.watermark_ns:
            return []
        self.watermark_ns = watermark
        boundary = watermark - watermark % self.tf_ns  # windows ending at or before it close
        if self._closed_until is not None and boundary <= self._closed_until:
            return []
        return self._close_until(boundary)

    def _close_until(self, boundary: int) -> list[Candle]:
        """Close windows ending at or before ``boundary``, filling gaps when asked to."""
        tf = self.tf_ns
        windows = self._windows
        fill = self.fill_gaps
        out: list[Candle] = []
        for start in sorted(s for s in windows if s + tf <= boundary):
            if fill and self._last_close is not None:
                out.extend(self._gap_candles(self._closed_until, start))
            window = windows.pop(start)
            if window is self._current:
                self._current = None
            out.append(self._to_candle(window))
            if self.keep_closed:
                self._recent[start] = window
                if len(self._recent) > self.keep_closed:
                    del self._recent[next(iter(self._recent))]
            self._last_close = window.close
            self._closed_until = start + tf
        if fill and self._last_close is not None:
            out.extend(self._gap_candles(self._closed_until, boundary))
        if self._closed_until is None or boundary > self._closed_until:
            self._closed_until = boundary
        return out

    def _gap_candles(self, from_ns: int, to_ns: int) -> list[Candle]:
        limit = self.max_fill_candles
        if limit is not None and to_ns - from_ns > limit * self.tf_ns:
            self.gaps += 1
            if self.on_gap is not None:
                self.on_gap(from_ns, to_ns)
            return []
        close = self._last_close
        return [
            Candle(
                self.exchange,
                self.symbol,
                self.timeframe,
                start,
                close,
                close,
                close,
                close,
                _ZERO,
                None,
                0,
            )
            for start in range(from_ns, to_ns, self.tf_ns)
            if start not in self._windows
        ]

    def _to_candle(self, w: _Window) -> Candle:
        vwap = _VWAP.divide(w.notional, w.volume) if w.volume else None
        return Candle(
            self.exchange,
            self.symbol,
            self.timeframe,
            w.start,
            w.open,
            w.high,
            w.low,
            w.close,
            w.volume,
            vwap,
            w.count,
        )


def build_candles(
    trades: Iterable[Trade],
    timeframe: str,
    *,
    fill_gaps: bool = False,
    exchange: str | None = None,
    symbol: str | None = None,
) -> list[Candle]:
    """Batch candles from trades of one (exchange, symbol), oldest first.

    Order-independent: every window stays open until the end, so a file that is not
    sorted still gives the same candles (memory is one small state per window).
    """
    iterator = iter(trades)
    first = next(iterator, None)
    if first is None:
        return []
    builder = CandleBuilder(
        exchange if exchange is not None else first.exchange,
        symbol if symbol is not None else first.symbol,
        timeframe,
        allowed_lateness_ns=None,
    )
    builder.add(first)
    builder.add_many(iterator)
    candles = builder.flush()
    return _fill(candles, builder.tf_ns) if fill_gaps else candles


def fill_gaps(candles: Iterable[Candle], timeframe: str) -> list[Candle]:
    """Fill empty intervals inside the range like Kraken's OHLC (previous close, no volume)."""
    return _fill(sorted(candles, key=lambda c: c.start_ns), timeframe_ns(timeframe))


def _fill(candles: list[Candle], tf_ns: int) -> list[Candle]:
    out: list[Candle] = []
    previous: Candle | None = None
    for candle in candles:
        if previous is not None:
            close = previous.close
            for start in range(previous.start_ns + tf_ns, candle.start_ns, tf_ns):
                out.append(
                    Candle(
                        candle.exchange,
                        candle.symbol,
                        candle.timeframe,
                        start,
                        close,
                        close,
                        close,
                        close,
                        _ZERO,
                        None,
                        0,
                    )
                )
        out.append(candle)
        previous = candle
    return out


def _plain(value: Decimal | None) -> str:
    return "" if value is None else format(value, "f")


def candles_to_frame(candles: Iterable[Candle]) -> pd.DataFrame:
    """Candles as a frame: ``time`` (datetime64[ns, UTC]) then float64 columns."""
    import pandas as pd

    rows = list(candles)
    frame = pd.DataFrame(
        {
            "time": pd.to_datetime([c.start_ns for c in rows], unit="ns", utc=True),
            "open": [float(c.open) for c in rows],
            "high": [float(c.high) for c in rows],
            "low": [float(c.low) for c in rows],
            "close": [float(c.close) for c in rows],
            "volume": [float(c.volume) for c in rows],
            "vwap": [float(c.vwap) if c.vwap is not None else float("nan") for c in rows],
            "trade_count": pd.array([c.trade_count for c in rows], dtype="int64"),
        }
    )
    frame["time"] = frame["time"].astype("datetime64[ns, UTC]")
    return frame


def candle_csv_row(candle: Candle) -> list[str]:
    return [
        iso_from_ns(candle.start_ns, "trim"),
        _plain(candle.open),
        _plain(candle.high),
        _plain(candle.low),
        _plain(candle.close),
        _plain(candle.volume),
        _plain(candle.vwap),
        str(candle.trade_count),
    ]


def write_candles_csv(candles: Iterable[Candle], output: str | os.PathLike[str]) -> int:
    """Write ``time,open,...,trade_count`` to ``output`` atomically; return the row count.

    The rows go to a temporary file beside ``output`` that is renamed into place only when
    every row is written, so an error (bad input half-way) leaves no partial file.
    """
    target = Path(output)
    try:
        handle = tempfile.NamedTemporaryFile(
            "w",
            newline="",
            encoding="utf-8",
            dir=target.parent,
            prefix=f".{target.name}.",
            suffix=".tmp",
            delete=False,
        )
    except OSError as error:
        raise RtmlError(f"cannot write {target}: {error.strerror or error}") from None
    rows = 0
    try:
        with handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for candle in candles:
                writer.writerow(candle_csv_row(candle))
                rows += 1
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return rows
