"""The one candle builder: event-time tumbling windows over trades, exact in Decimal.

Used by the batch path (``build_candles``, ``rtml candles``, importers) and by the stream
(one ``CandleBuilder`` per timeframe, or a ``MultiTimeframeBuilder``).

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
  can record a correction.
- Gap filling follows Kraken's OHLC: an empty interval inside the range gets the previous
  close as open/high/low/close, zero volume and trade count, and ``vwap=None``.
"""

from __future__ import annotations

import csv
import decimal
import os
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from rtml_core.errors import RtmlError
from rtml_core.schemas import Candle, Trade
from rtml_core.timeframes import timeframe_ns

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CSV_COLUMNS",
    "CandleBuilder",
    "MultiTimeframeBuilder",
    "build_candles",
    "candles_to_frame",
    "fill_gaps",
    "format_time",
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


class CandleBuilder:
    """Event-time tumbling-window candles for one (exchange, symbol, timeframe).

    ``add(trade)`` and ``advance(now_ns)`` return the candles they closed, oldest first;
    ``flush()`` closes every open window; ``peek()`` previews the newest open window.
    State is the open windows only (one, when trades arrive in time order).
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
    ):
        if allowed_lateness_ns is not None and allowed_lateness_ns < 0:
            raise ValueError("allowed_lateness_ns must be >= 0")
        self.exchange = exchange
        self.symbol = symbol
        self.timeframe = timeframe
        self.tf_ns = timeframe_ns(timeframe)
        self.allowed_lateness_ns = allowed_lateness_ns
        self.fill_gaps = fill_gaps
        self.on_late = on_late
        self.keep_late_trades = keep_late_trades
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

    # -- internals -----------------------------------------------------------------------
    def _record_late(self, trade: Trade) -> None:
        self.late += 1
        if len(self.late_trades) < self.keep_late_trades:
            self.late_trades.append(trade)
        if self.on_late is not None:
            self.on_late(trade)

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
            self._last_close = window.close
            self._closed_until = start + tf
        if fill and self._last_close is not None:
            out.extend(self._gap_candles(self._closed_until, boundary))
        if self._closed_until is None or boundary > self._closed_until:
            self._closed_until = boundary
        return out

    def _gap_candles(self, from_ns: int, to_ns: int) -> list[Candle]:
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


class MultiTimeframeBuilder:
    """Several timeframes over one trade stream: one ``CandleBuilder`` each."""

    def __init__(self, exchange: str, symbol: str, timeframes: Iterable[str], **builder_options):
        self.builders = {
            tf: CandleBuilder(exchange, symbol, tf, **builder_options) for tf in timeframes
        }

    def add(self, trade: Trade) -> list[Candle]:
        out: list[Candle] = []
        for builder in self.builders.values():
            closed = builder.add(trade)
            if closed:
                out.extend(closed)
        return out

    def advance(self, now_ns: int) -> list[Candle]:
        return [c for b in self.builders.values() for c in b.advance(now_ns)]

    def flush(self) -> list[Candle]:
        return [c for b in self.builders.values() for c in b.flush()]

    @property
    def late(self) -> int:
        return sum(b.late for b in self.builders.values())


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


def format_time(time_ns: int) -> str:
    """ISO 8601 UTC: ``2013-09-01T17:00:00Z`` (fractions of a second only when present)."""
    seconds, rest = divmod(time_ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if rest:
        text += f".{rest:09d}".rstrip("0")
    return text + "Z"


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
        format_time(candle.start_ns),
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
