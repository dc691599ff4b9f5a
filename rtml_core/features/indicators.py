"""Indicator kinds: for each, the batch definition (pandas-ta via the shim) and the incremental node.

A *kind* (``sma``, ``macd``, ...) knows its outputs, its warm-up (leading NaN rows) and how
to compute itself both ways:

- ``batch(columns, **params)``: pandas-ta with ``talib=True`` over whole columns. This *is*
  the definition of the feature.
- ``node(**params)``: a small incremental class with O(window) state and ``update``/``peek``.

Two kinds of node, both bit-identical to the batch values (the parity tests check it):

- *Stream nodes* drive a ``talib.stream`` handle: TA-Lib's own C code, so the same floating
  point operations as the batch function (EMA, RSI, MACD, ATR/NATR, MFI, CCI, and the
  standard deviation inside Bollinger Bands and realized volatility). Handles cannot be
  pickled: a snapshot rebuilds them by replaying the engine's last ``REPLAY_HORIZON``
  candles (exact while the stream is no longer than that; past it the recursive ones have
  forgotten their different start to far below an ulp, the running sums agree to the last
  ulps).
- *Exact nodes* are small classes whose arithmetic is TA-Lib's operation for operation
  (SMA running total, OBV, ROC, MOM, STOCH, WILLR, ADX, log returns): their state is a few
  plain numbers, snapshotted exactly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rtml_core.features.ta import ta, talib, talib_abstract, talib_stream

NAN = float("nan")
EPSILON = float(np.finfo(float).eps)  # pandas-ta's non_zero_range replaces an exact 0 with this
REPLAY_HORIZON = 1024
"""Candles the engine keeps to rebuild stream nodes from a snapshot. With this many, a
recursive TA-Lib state (EMA(26), Wilder(14), ...) started from a different seed has decayed
the difference by more than 2**-60."""

_np_log = np.log

Row = tuple[float, float, float, float, float, float]  # open, high, low, close, volume, vwap


def _log(x: float) -> float:
    """numpy's log (what pandas-ta's log_return uses), bit for bit: math.log differs by an ulp."""
    return float(_np_log(x))


def _is_zero(value: float) -> bool:
    """TA-Lib's ``TA_IS_ZERO``."""
    return -0.00000001 < value < 0.00000001


class RunningSma:
    """TA-Lib ``TA_INT_SMA``: add the new value, divide, then drop the oldest from the total."""

    __slots__ = ("length", "window", "total")

    def __init__(self, length: int):
        self.length = length
        self.window: deque[float] = deque()
        self.total = 0.0

    def push(self, value: float) -> float:
        self.total += value
        window = self.window
        window.append(value)
        if len(window) < self.length:
            return NAN
        out = self.total / self.length
        self.total -= window.popleft()
        return out

    def preview(self, value: float) -> float:
        if len(self.window) + 1 < self.length:
            return NAN
        return (self.total + value) / self.length

    def state(self) -> list:
        return [list(self.window), self.total]

    def load(self, state: list) -> None:
        self.window = deque(state[0])
        self.total = state[1]


class Handle:
    """A ``talib.stream`` handle that opens itself once enough inputs arrived."""

    __slots__ = ("function", "params", "need", "pending", "stream")

    def __init__(self, function: str, **params):
        self.function = function
        self.params = params
        self.need = talib_abstract.Function(function, **params).lookback + 1
        self.pending: list[tuple[float, ...]] = []
        self.stream = None  # the open talib.stream handle

    def _open(self, rows: list[tuple[float, ...]]):
        columns = [np.array(column, dtype=float) for column in zip(*rows)]
        try:
            return getattr(talib_stream, self.function)(*columns, **self.params)
        except talib.InsufficientHistory:
            return None

    def warm(self, xs: tuple[float, ...]):
        """Before the handle is open: collect ``xs``; its first value, or None."""
        pending = self.pending
        pending.append(xs)
        if len(pending) < self.need:
            return None
        stream = self._open(pending)
        if stream is None:
            return None
        self.stream = stream
        self.pending = []
        return stream.value

    def push(self, xs: tuple[float, ...]):
        stream = self.stream
        if stream is not None:
            return stream.update(*xs)
        return self.warm(xs)

    def preview(self, xs: tuple[float, ...]):
        if self.stream is not None:
            return self.stream.peek(*xs)
        if len(self.pending) + 1 < self.need:
            return None
        stream = self._open([*self.pending, xs])
        return None if stream is None else stream.value

    def reset(self) -> None:
        self.pending = []
        self.stream = None


class Node:
    """Incremental state of one indicator; ``update`` returns a tuple in ``outputs`` order.

    ``state()`` is the exact part of the state (plain numbers); ``load(state, tail)`` restores
    it, rebuilding any TA-Lib handle by replaying ``tail``, the engine's last candles.
    """

    __slots__ = ()
    outputs: tuple[str, ...] = ("value",)

    def update(self, o: float, h: float, l: float, c: float, v: float, vw: float) -> tuple:  # noqa: E741
        raise NotImplementedError

    def peek(self, o: float, h: float, l: float, c: float, v: float, vw: float) -> tuple:  # noqa: E741
        """What ``update`` would return, committing nothing."""
        twin = object.__new__(type(self))
        for name in _all_slots(type(self)):
            setattr(twin, name, getattr(self, name))
        twin.load(self.state(), ())
        return twin.update(o, h, l, c, v, vw)

    def state(self) -> list:
        return []

    def load(self, state: list, tail: Sequence[Row]) -> None:
        raise NotImplementedError


def _all_slots(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        names.extend(getattr(klass, "__slots__", ()))
    return names


# ----------------------------------------------------------------------------- stream nodes


class _StreamNode(Node):
    """A node that is one TA-Lib handle over the close (subclasses override ``_inputs``)."""

    __slots__ = ("handle", "blank", "single")

    def _setup(self, function: str, **params) -> None:
        self.handle = Handle(function, **params)
        self.blank = (NAN,) * len(self.outputs)
        self.single = len(self.outputs) == 1

    def _inputs(self, o, h, l, c, v):  # noqa: E741
        return (c,)

    def _out(self, value) -> tuple:
        if value is None:
            return self.blank
        return (value,) if self.single else value

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        stream = self.handle.stream
        if stream is not None and self.single:
            return (stream.update(*self._inputs(o, h, l, c, v)),)
        return self._out(self.handle.push(self._inputs(o, h, l, c, v)))

    def peek(self, o, h, l, c, v, vw):  # noqa: E741
        return self._out(self.handle.preview(self._inputs(o, h, l, c, v)))

    def load(self, state, tail):
        self.handle = Handle(self.handle.function, **self.handle.params)
        for row in tail:
            self.update(*row)


class EmaNode(_StreamNode):
    """TA-Lib EMA: k = 2/(length+1), seeded with the SMA of the first ``length`` closes."""

    __slots__ = ()

    def __init__(self, length: int):
        self._setup("EMA", timeperiod=length)

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        stream = self.handle.stream
        if stream is not None:
            return (stream.update(c),)
        return self._out(self.handle.warm((c,)))


class RsiNode(EmaNode):
    """TA-Lib RSI: Wilder smoothing seeded with the mean gain and loss of the first moves."""

    __slots__ = ()

    def __init__(self, length: int):
        self._setup("RSI", timeperiod=length)


class MacdNode(_StreamNode):
    """TA-Lib MACD: both EMAs seeded at bar ``slow - 1``, signal EMA seeded with the mean of
    its first ``signal`` MACD values."""

    __slots__ = ()
    outputs = ("macd", "signal", "hist")

    def __init__(self, fast: int, slow: int, signal: int):
        self._setup("MACD", fastperiod=fast, slowperiod=slow, signalperiod=signal)

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        stream = self.handle.stream
        if stream is not None:
            return stream.update(c)
        return self._out(self.handle.warm((c,)))


class AtrNode(_StreamNode):
    """TA-Lib ATR; NATR = (ATR / close) * 100 exactly as TA-Lib's NATR computes it."""

    __slots__ = ()
    outputs = ("atr", "natr")

    def __init__(self, length: int):
        self._setup("ATR", timeperiod=length)

    def _pair(self, atr, c: float) -> tuple:
        if atr is None:
            return (NAN, NAN)
        return (atr, (atr / c) * 100.0 if not _is_zero(c) else 0.0)

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        stream = self.handle.stream
        if stream is not None:
            atr = stream.update(h, l, c)
            return (atr, (atr / c) * 100.0 if not _is_zero(c) else 0.0)
        return self._pair(self.handle.warm((h, l, c)), c)

    def peek(self, o, h, l, c, v, vw):  # noqa: E741
        return self._pair(self.handle.preview((h, l, c)), c)


class CciNode(_StreamNode):
    """TA-Lib CCI over typical price."""

    __slots__ = ()

    def __init__(self, length: int):
        self._setup("CCI", timeperiod=length)

    def _inputs(self, o, h, l, c, v):  # noqa: E741
        return (h, l, c)

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        stream = self.handle.stream
        if stream is not None:
            return (stream.update(h, l, c),)
        return self._out(self.handle.warm((h, l, c)))


class MfiNode(_StreamNode):
    """TA-Lib MFI (its running sums decide tiny flows against zero in TA-Lib's own way)."""

    __slots__ = ()

    def __init__(self, length: int):
        self._setup("MFI", timeperiod=length)

    def _inputs(self, o, h, l, c, v):  # noqa: E741
        return (h, l, c, v)

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        stream = self.handle.stream
        if stream is not None:
            return (stream.update(h, l, c, v),)
        return self._out(self.handle.warm((h, l, c, v)))


class RealizedVolNode(Node):
    """Population standard deviation (ddof=0, TA-Lib STDDEV) of the last ``length`` one-bar
    log returns; not annualized."""

    __slots__ = ("prev_close", "handle")

    def __init__(self, length: int):
        self.prev_close = NAN
        self.handle = Handle("STDDEV", timeperiod=length, nbdev=1.0)

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        prev = self.prev_close
        self.prev_close = c
        if prev != prev:
            return (NAN,)
        stream = self.handle.stream
        if stream is not None:
            return (stream.update(float(_np_log(c / prev))),)
        value = self.handle.warm((_log(c / prev),))
        return (NAN,) if value is None else (value,)

    def peek(self, o, h, l, c, v, vw):  # noqa: E741
        prev = self.prev_close
        if prev != prev:
            return (NAN,)
        value = self.handle.preview((_log(c / prev),))
        return (NAN,) if value is None else (value,)

    def load(self, state, tail):
        self.prev_close = NAN
        self.handle.reset()
        for row in tail:
            self.update(*row)


class BbandsNode(Node):
    """TA-Lib BBANDS (SMA middle +- nbdev population std devs) plus pandas-ta's bandwidth and
    %B. The middle band is an exact running SMA, so %B stays exact on flat windows, where
    pandas-ta divides the middle band's rounding by machine epsilon."""

    __slots__ = ("nbdev", "mid", "std")
    outputs = ("lower", "mid", "upper", "bandwidth", "percent")

    def __init__(self, length: int, std: float):
        self.nbdev = float(std)
        self.mid = RunningSma(length)
        self.std = Handle("STDDEV", timeperiod=length, nbdev=1.0)

    def _bands(self, c: float, mid: float, dev) -> tuple:
        if mid != mid or dev is None:
            return (NAN, NAN, NAN, NAN, NAN)
        if self.nbdev == 1.0:
            upper, lower = mid + dev, mid - dev
        else:
            width = dev * self.nbdev
            upper, lower = mid + width, mid - width
        span = upper - lower
        if span == 0:
            span = EPSILON
        above = c - lower
        if above == 0:
            above = EPSILON
        return (lower, mid, upper, 100 * span / mid, above / span)

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        stream = self.std.stream
        dev = stream.update(c) if stream is not None else self.std.warm((c,))
        return self._bands(c, self.mid.push(c), dev)

    def peek(self, o, h, l, c, v, vw):  # noqa: E741
        return self._bands(c, self.mid.preview(c), self.std.preview((c,)))

    def state(self):
        return self.mid.state()

    def load(self, state, tail):
        self.mid = RunningSma(self.mid.length)
        self.mid.load(state)
        self.std = Handle(self.std.function, **self.std.params)
        for row in tail:
            c = row[3]
            if self.std.stream is not None:
                self.std.stream.update(c)
            else:
                self.std.warm((c,))


# ------------------------------------------------------------------------------ exact nodes


class SmaNode(Node):
    __slots__ = ("sma",)

    def __init__(self, length: int):
        self.sma = RunningSma(length)

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        sma = self.sma  # RunningSma.push, inlined: this is the hottest path
        sma.total += c
        window = sma.window
        window.append(c)
        if len(window) < sma.length:
            return (NAN,)
        out = sma.total / sma.length
        sma.total -= window.popleft()
        return (out,)

    def peek(self, o, h, l, c, v, vw):  # noqa: E741
        return (self.sma.preview(c),)

    def state(self):
        return self.sma.state()

    def load(self, state, tail):
        self.sma = RunningSma(self.sma.length)
        self.sma.load(state)


class ObvNode(Node):
    """TA-Lib OBV: starts at the first bar's volume, then adds or subtracts each volume."""

    __slots__ = ("prev_close", "obv")

    def __init__(self):
        self.prev_close = NAN
        self.obv = NAN

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        prev = self.prev_close
        self.prev_close = c
        if prev != prev:
            self.obv = v
        elif c > prev:
            self.obv += v
        elif c < prev:
            self.obv -= v
        return (self.obv,)

    def state(self):
        return [self.prev_close, self.obv]

    def load(self, state, tail):
        self.prev_close, self.obv = state


class _LagNode(Node):
    """Base of indicators on the close ``length`` bars ago."""

    __slots__ = ("length", "closes")

    def __init__(self, length: int):
        self.length = length
        self.closes: deque[float] = deque(maxlen=length)

    def state(self):
        return list(self.closes)

    def load(self, state, tail):
        self.closes = deque(state, maxlen=self.length)

    def peek(self, o, h, l, c, v, vw):  # noqa: E741
        twin = object.__new__(type(self))
        twin.length = self.length
        twin.closes = deque(self.closes, maxlen=self.length)
        return twin.update(o, h, l, c, v, vw)


class RocNode(_LagNode):
    """TA-Lib ROC: ``((close / then) - 1) * 100``, 0 when ``then`` is 0."""

    __slots__ = ()

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        closes = self.closes
        if len(closes) == self.length:
            then = closes[0]
            closes.append(c)
            return (((c / then) - 1.0) * 100.0 if then != 0.0 else 0.0,)
        closes.append(c)
        return (NAN,)


class MomNode(_LagNode):
    __slots__ = ()

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        closes = self.closes
        if len(closes) == self.length:
            then = closes[0]
            closes.append(c)
            return (c - then,)
        closes.append(c)
        return (NAN,)


class LogReturnNode(_LagNode):
    __slots__ = ()

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        closes = self.closes
        if len(closes) == self.length:
            then = closes[0]
            closes.append(c)
            return (float(_np_log(c / then)),)
        closes.append(c)
        return (NAN,)


class _RangeNode(Node):
    """Base of indicators on the highest high and lowest low of the last ``length`` bars."""

    __slots__ = ("length", "highs", "lows")

    def __init__(self, length: int):
        self.length = length
        self.highs: deque[float] = deque(maxlen=length)
        self.lows: deque[float] = deque(maxlen=length)

    def _range_state(self) -> list:
        return [list(self.highs), list(self.lows)]

    def _load_range(self, state: list) -> None:
        self.highs = deque(state[0], maxlen=self.length)
        self.lows = deque(state[1], maxlen=self.length)


class StochNode(_RangeNode):
    """TA-Lib STOCH: fast %K = 100 * ((close - lowest) / (highest - lowest)) over ``k`` bars
    (0 on a flat range), slow %K = SMA(smooth_k) of it, %D = SMA(d) of slow %K."""

    __slots__ = ("slow_k", "slow_d")
    outputs = ("k", "d")

    def __init__(self, k: int, d: int, smooth_k: int):
        super().__init__(k)
        self.slow_k = RunningSma(smooth_k)
        self.slow_d = RunningSma(d)

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        highs, lows = self.highs, self.lows
        highs.append(h)
        lows.append(l)
        if len(highs) < self.length:
            return (NAN, NAN)
        lowest = min(lows)
        span = max(highs) - lowest
        k = self.slow_k.push(100.0 * ((c - lowest) / span) if span != 0.0 else 0.0)
        if k != k:
            return (NAN, NAN)
        d = self.slow_d.push(k)
        if d != d:
            return (NAN, NAN)
        return (k, d)

    def state(self):
        return [self._range_state(), self.slow_k.state(), self.slow_d.state()]

    def load(self, state, tail):
        self._load_range(state[0])
        self.slow_k = RunningSma(self.slow_k.length)
        self.slow_k.load(state[1])
        self.slow_d = RunningSma(self.slow_d.length)
        self.slow_d.load(state[2])


class WillrNode(_RangeNode):
    """TA-Lib WILLR: ``-100 * ((highest - close) / (highest - lowest))``, 0 on a flat range."""

    __slots__ = ()

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        highs, lows = self.highs, self.lows
        highs.append(h)
        lows.append(l)
        if len(highs) < self.length:
            return (NAN,)
        highest = max(highs)
        span = highest - min(lows)
        return (-100.0 * ((highest - c) / span) if span != 0.0 else 0.0,)

    def state(self):
        return self._range_state()

    def load(self, state, tail):
        self._load_range(state)


class AdxNode(Node):
    """TA-Lib ADX: Wilder-smoothed +DM, -DM and true range; ADX seeded with the mean of the
    first ``length`` DX values, then Wilder-smoothed (a bar with undefined DX keeps it)."""

    __slots__ = ("length", "bars", "prev_high", "prev_low", "prev_close", "plus_dm", "minus_dm", "tr", "adx")

    def __init__(self, length: int):
        self.length = length
        self.bars = 0
        self.prev_high = self.prev_low = self.prev_close = NAN
        self.plus_dm = self.minus_dm = self.tr = 0.0
        self.adx = 0.0

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        bar = self.bars
        self.bars = bar + 1
        if bar == 0:
            self.prev_high, self.prev_low, self.prev_close = h, l, c
            return (NAN,)
        n = self.length
        diff_p = h - self.prev_high
        diff_m = self.prev_low - l
        self.prev_high, self.prev_low = h, l
        prev_close = self.prev_close
        self.prev_close = c
        tr = h - l
        other = abs(h - prev_close)
        if other > tr:
            tr = other
        other = abs(l - prev_close)
        if other > tr:
            tr = other
        if bar < n:
            if diff_m > 0 and diff_p < diff_m:
                self.minus_dm += diff_m
            elif diff_p > 0 and diff_p > diff_m:
                self.plus_dm += diff_p
            self.tr += tr
            return (NAN,)
        self.minus_dm -= self.minus_dm / n
        self.plus_dm -= self.plus_dm / n
        if diff_m > 0 and diff_p < diff_m:
            self.minus_dm += diff_m
        elif diff_p > 0 and diff_p > diff_m:
            self.plus_dm += diff_p
        self.tr = self.tr - (self.tr / n) + tr
        dx = NAN
        if not _is_zero(self.tr):
            minus_di = 100.0 * (self.minus_dm / self.tr)
            plus_di = 100.0 * (self.plus_dm / self.tr)
            total = minus_di + plus_di
            if not _is_zero(total):
                dx = 100.0 * (abs(minus_di - plus_di) / total)
        if bar < 2 * n:
            if dx == dx:
                self.adx += dx
            if bar < 2 * n - 1:
                return (NAN,)
            self.adx = self.adx / n
            return (self.adx,)
        if dx == dx:
            self.adx = ((self.adx * (n - 1)) + dx) / n
        return (self.adx,)

    def state(self):
        return [self.bars, self.prev_high, self.prev_low, self.prev_close, self.plus_dm, self.minus_dm, self.tr, self.adx]

    def load(self, state, tail):
        (self.bars, self.prev_high, self.prev_low, self.prev_close,
         self.plus_dm, self.minus_dm, self.tr, self.adx) = state


class VwapDeviationNode(Node):
    """``close / vwap - 1``; the vwap is the candle's own, or its typical price without one."""

    __slots__ = ()

    def update(self, o, h, l, c, v, vw):  # noqa: E741
        return (c / vw - 1.0,)

    peek = update

    def load(self, state, tail):
        pass


# ---------------------------------------------------------------------------------------
# Batch definitions: pandas-ta with talib=True.
# ---------------------------------------------------------------------------------------

Columns = Mapping[str, pd.Series]


def _nan_like(index: pd.Index) -> pd.Series:
    return pd.Series(np.full(len(index), np.nan), index=index)


def _values(result, index: pd.Index, count: int) -> list[pd.Series]:
    """pandas-ta's result as ``count`` float Series (pandas-ta answers None on too few rows)."""
    if result is None:
        return [_nan_like(index) for _ in range(count)]
    if isinstance(result, pd.DataFrame):
        return [pd.Series(result.iloc[:, i].to_numpy(dtype=float), index=index) for i in range(count)]
    return [pd.Series(np.asarray(result, dtype=float), index=index)]


def _batch_sma(cols: Columns, length: int):
    return {"value": _values(ta.sma(cols["close"], length=length, talib=True), cols["close"].index, 1)[0]}


def _batch_ema(cols: Columns, length: int):
    return {"value": _values(ta.ema(cols["close"], length=length, talib=True), cols["close"].index, 1)[0]}


def _batch_rsi(cols: Columns, length: int):
    return {"value": _values(ta.rsi(cols["close"], length=length, talib=True), cols["close"].index, 1)[0]}


def _batch_macd(cols: Columns, fast: int, slow: int, signal: int):
    result = ta.macd(cols["close"], fast=fast, slow=slow, signal=signal, talib=True)
    index = cols["close"].index
    if result is None:
        return {name: _nan_like(index) for name in MacdNode.outputs}
    prefix = f"_{fast}_{slow}_{signal}"
    return {
        "macd": result[f"MACD{prefix}"].astype(float),
        "signal": result[f"MACDs{prefix}"].astype(float),
        "hist": result[f"MACDh{prefix}"].astype(float),
    }


def _batch_bbands(cols: Columns, length: int, std: float):
    result = ta.bbands(cols["close"], length=length, std=std, talib=True)
    return dict(zip(BbandsNode.outputs, _values(result, cols["close"].index, 5)))


def _batch_atr(cols: Columns, length: int):
    h, l, c = cols["high"], cols["low"], cols["close"]  # noqa: E741
    return {
        "atr": _values(ta.atr(h, l, c, length=length, talib=True), c.index, 1)[0],
        "natr": _values(ta.natr(h, l, c, length=length, talib=True), c.index, 1)[0],
    }


def _batch_obv(cols: Columns):
    return {"value": _values(ta.obv(cols["close"], cols["volume"], talib=True), cols["close"].index, 1)[0]}


def _batch_roc(cols: Columns, length: int):
    return {"value": _values(ta.roc(cols["close"], length=length, talib=True), cols["close"].index, 1)[0]}


def _batch_mom(cols: Columns, length: int):
    return {"value": _values(ta.mom(cols["close"], length=length, talib=True), cols["close"].index, 1)[0]}


def _batch_stoch(cols: Columns, k: int, d: int, smooth_k: int):
    result = ta.stoch(cols["high"], cols["low"], cols["close"], k=k, d=d, smooth_k=smooth_k, talib=True)
    return dict(zip(StochNode.outputs, _values(result, cols["close"].index, 2)))


def _batch_adx(cols: Columns, length: int):
    result = ta.adx(cols["high"], cols["low"], cols["close"], length=length, talib=True)
    index = cols["close"].index
    if result is None:
        return {"value": _nan_like(index)}
    return {"value": result[f"ADX_{length}"].astype(float)}


def _batch_cci(cols: Columns, length: int):
    result = ta.cci(cols["high"], cols["low"], cols["close"], length=length, talib=True)
    return {"value": _values(result, cols["close"].index, 1)[0]}


def _batch_willr(cols: Columns, length: int):
    result = ta.willr(cols["high"], cols["low"], cols["close"], length=length, talib=True)
    return {"value": _values(result, cols["close"].index, 1)[0]}


def _batch_mfi(cols: Columns, length: int):
    result = ta.mfi(cols["high"], cols["low"], cols["close"], cols["volume"], length=length, talib=True)
    return {"value": _values(result, cols["close"].index, 1)[0]}


def _batch_log_return(cols: Columns, length: int):
    return {"value": _values(ta.log_return(cols["close"], length=length), cols["close"].index, 1)[0]}


def _batch_realized_vol(cols: Columns, length: int):
    close = cols["close"]
    returns = ta.log_return(close, length=1)
    if returns is None or len(close) < length + 1:
        return {"value": _nan_like(close.index)}
    return {"value": _values(ta.stdev(returns, length=length, talib=True), close.index, 1)[0]}


def _batch_vwap_deviation(cols: Columns):
    return {"value": cols["close"] / cols["vwap"] - 1.0}


# ---------------------------------------------------------------------------------------
# The registry of kinds.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One indicator kind: its outputs, warm-up, description, batch and incremental forms."""

    name: str
    outputs: tuple[str, ...]
    batch: Callable[..., dict[str, pd.Series]]
    node: Callable[..., Node]
    warmup: Callable[..., int]
    describe: Callable[..., str]


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("sma", ("value",), _batch_sma, SmaNode, lambda length: length - 1,
             lambda length: f"simple moving average of close over {length} bars (pandas-ta sma, TA-Lib SMA)"),
        Kind("ema", ("value",), _batch_ema, EmaNode, lambda length: length - 1,
             lambda length: f"exponential moving average of close, k=2/({length}+1), seeded with the SMA of "
             f"the first {length} closes (pandas-ta ema, TA-Lib EMA)"),
        Kind("rsi", ("value",), _batch_rsi, RsiNode, lambda length: length,
             lambda length: f"relative strength index, Wilder smoothing over {length} moves (pandas-ta rsi, TA-Lib RSI)"),
        Kind("macd", MacdNode.outputs, _batch_macd, MacdNode,
             lambda fast, slow, signal: max(fast, slow) - 1 + signal - 1,
             lambda fast, slow, signal: f"MACD {fast}/{slow}/{signal}: EMA({fast}) - EMA({slow}) of close, "
             f"signal EMA({signal}) of it, hist = macd - signal (pandas-ta macd, TA-Lib MACD)"),
        Kind("bbands", BbandsNode.outputs, _batch_bbands, BbandsNode, lambda length, std: length - 1,
             lambda length, std: f"Bollinger Bands: SMA({length}) of close +- {std:g} population std devs; "
             f"bandwidth = 100*(upper-lower)/mid, percent = (close-lower)/(upper-lower) (pandas-ta bbands, TA-Lib BBANDS)"),
        Kind("atr", AtrNode.outputs, _batch_atr, AtrNode, lambda length: length,
             lambda length: f"average true range over {length} bars, Wilder smoothing; natr = 100*atr/close "
             f"(pandas-ta atr/natr, TA-Lib ATR/NATR)"),
        Kind("obv", ("value",), _batch_obv, ObvNode, lambda: 0,
             lambda: "on-balance volume, starting at the first bar's volume (pandas-ta obv, TA-Lib OBV)"),
        Kind("roc", ("value",), _batch_roc, RocNode, lambda length: length,
             lambda length: f"rate of change in percent over {length} bars (pandas-ta roc, TA-Lib ROC)"),
        Kind("mom", ("value",), _batch_mom, MomNode, lambda length: length,
             lambda length: f"momentum: close minus the close {length} bars earlier (pandas-ta mom, TA-Lib MOM)"),
        Kind("stoch", StochNode.outputs, _batch_stoch, StochNode, lambda k, d, smooth_k: k - 1 + smooth_k - 1 + d - 1,
             lambda k, d, smooth_k: f"stochastic oscillator: fast %K over {k} bars smoothed by SMA({smooth_k}), "
             f"%D = SMA({d}) of %K (pandas-ta stoch, TA-Lib STOCH)"),
        Kind("adx", ("value",), _batch_adx, AdxNode, lambda length: 2 * length - 1,
             lambda length: f"average directional index over {length} bars (pandas-ta adx, TA-Lib ADX)"),
        Kind("cci", ("value",), _batch_cci, CciNode, lambda length: length - 1,
             lambda length: f"commodity channel index over {length} bars of typical price, c=0.015 (pandas-ta cci, TA-Lib CCI)"),
        Kind("willr", ("value",), _batch_willr, WillrNode, lambda length: length - 1,
             lambda length: f"Williams %R over {length} bars (pandas-ta willr, TA-Lib WILLR)"),
        Kind("mfi", ("value",), _batch_mfi, MfiNode, lambda length: length,
             lambda length: f"money flow index over {length} moves of typical price (pandas-ta mfi, TA-Lib MFI)"),
        Kind("log_return", ("value",), _batch_log_return, LogReturnNode, lambda length: length,
             lambda length: f"log(close / close {length} bars earlier) (pandas-ta log_return)"),
        Kind("realized_vol", ("value",), _batch_realized_vol, RealizedVolNode, lambda length: length,
             lambda length: f"population std dev (ddof=0) of the last {length} one-bar log returns, not annualized "
             f"(pandas-ta stdev of log_return, TA-Lib STDDEV)"),
        Kind("vwap_deviation", ("value",), _batch_vwap_deviation, VwapDeviationNode, lambda: 0,
             lambda: "close / vwap - 1; vwap is the candle's own, or its typical price (high+low+close)/3 "
             "when the candle has none"),
    )
}
