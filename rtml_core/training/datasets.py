"""Point-in-time training sets: for each time t, the features known at t and the return to t + H.

Pure and vectorized (a grid-slot table, or ``numpy.searchsorted`` off the grid); no I/O. Conventions:

- ``features`` and ``prices`` frames carry a ``time`` column holding each candle's *start*;
  a candle is known at ``start + timeframe`` (its close time), never before.
- The features at t are the row of the last candle closed at or before t.
- The price at t is the close of the last candle closed at or before t; the target is
  ``log(price(t + H) / price(t))`` with the price at t + H looked up the same way.
- A row is dropped (and counted) when its window crosses a gap: a candle missing between the
  one closing at or before t and the one closing at or before t + H, or features staler than
  the price at t.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rtml_core.errors import InputError
from rtml_core.timeframes import NS, timeframe_seconds

if TYPE_CHECKING:
    from rtml_core.training.pipeline import EvaluationPlan

BASELINE_WINDOW = 10
"""The baseline predicts the mean of the last ``BASELINE_WINDOW`` closes as the price at t + H."""

RESERVED_COLUMNS = ("time", "price", "baseline_price", "target_price", "target")


@dataclass(frozen=True)
class TrainingSet:
    """A training frame plus what produced it.

    ``frame`` columns: ``time`` (t, UTC), the feature columns in ``feature_names`` order,
    ``price`` (close at t), ``baseline_price`` (mean of the last 10 closes at t),
    ``target_price`` (close at t + H) and ``target`` (log return from t to t + H).
    """

    frame: pd.DataFrame
    feature_names: tuple[str, ...]
    feature_set_version: str
    timeframe: str
    horizon_s: int
    dropped_for_gaps: int
    dropped_for_warmup: int
    dropped_unlabelled: int
    content_hash: str
    exchange: str | None = None
    symbol: str | None = None
    plan: EvaluationPlan | None = None  # how later steps split and evaluate it (None: the default plan)
    microstructure_version: str | None = None  # the joined microstructure group's version, if any

    @property
    def row_count(self) -> int:
        return len(self.frame)

    @property
    def start(self) -> pd.Timestamp | None:
        return self.frame["time"].iloc[0] if len(self.frame) else None

    @property
    def end(self) -> pd.Timestamp | None:
        return self.frame["time"].iloc[-1] if len(self.frame) else None

    def summary(self) -> dict:
        """Plain JSON-able description (for metadata and the registry)."""
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "horizon_s": self.horizon_s,
            "feature_set_version": self.feature_set_version,
            "feature_names": list(self.feature_names),
            "row_count": self.row_count,
            "start": self.start.isoformat() if self.start is not None else None,
            "end": self.end.isoformat() if self.end is not None else None,
            "dropped_for_gaps": self.dropped_for_gaps,
            "dropped_for_warmup": self.dropped_for_warmup,
            "dropped_unlabelled": self.dropped_unlabelled,
            "content_hash": self.content_hash,
        }


def _time_ns(frame: pd.DataFrame, what: str) -> np.ndarray:
    if "time" not in frame.columns:
        raise InputError(f"{what} frame has no 'time' column (columns: {list(frame.columns)})")
    times = pd.to_datetime(frame["time"], utc=True)
    ns = times.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    if len(ns) > 1:
        steps = np.diff(ns)
        if (steps <= 0).any():
            row = int(np.argmax(steps <= 0)) + 1
            raise InputError(
                f"{what} times must be strictly increasing; row {row} is at {times.iloc[row]} "
                f"after {times.iloc[row - 1]}",
                line=row,
            )
    return ns


def feature_columns(features: pd.DataFrame) -> tuple[str, ...]:
    """Every column of a feature frame except ``time`` (and bookkeeping columns), in order."""
    skip = {"time", "exchange", "symbol", "timeframe", "feature_set_version", "event_time"}
    names = tuple(c for c in features.columns if c not in skip)
    clash = [n for n in names if n in RESERVED_COLUMNS]
    if clash:
        raise InputError(f"feature names {clash} clash with training-set columns {RESERVED_COLUMNS}")
    return names


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 over the canonical bytes of a frame: per column its name, dtype and values."""
    digest = hashlib.sha256()
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.DatetimeTZDtype) or np.issubdtype(column.dtype, np.datetime64):
            values = pd.to_datetime(column, utc=True).to_numpy(dtype="datetime64[ns]").astype("<i8")
            dtype = "datetime64[ns, UTC]"
        else:
            values = column.to_numpy(dtype="<f8")
            dtype = "float64"
        digest.update(name.encode() + b"\0" + dtype.encode() + b"\0")
        digest.update(memoryview(np.ascontiguousarray(values)).cast("B"))
    return digest.hexdigest()


GRID_SLACK = 4
"""Use the grid lookup while the time span has at most this many slots per candle."""


def last_at_or_before(ends: np.ndarray, times: np.ndarray, step: int) -> np.ndarray:
    """Index of the last ``ends`` value <= each of ``times`` (-1 when none), ``ends`` strictly
    increasing. Exact either way: when the ends sit on a grid of ``step`` (candles) the lookup
    is a table of grid slots, O(1) per time; otherwise a binary search (``searchsorted``)."""
    if len(ends) == 0:
        return np.full(len(times), -1, dtype=np.int64)
    first = int(ends[0])
    offsets = ends - first
    slots = int(offsets[-1]) // step + 1
    if slots > GRID_SLACK * len(ends) + 1024 or np.any(offsets % step):
        return np.searchsorted(ends, times, side="right") - 1
    table = np.full(slots, -1, dtype=np.int64)
    table[offsets // step] = np.arange(len(ends))
    np.maximum.accumulate(table, out=table)  # an empty slot means: the last candle before it
    slot = (np.asarray(times, dtype=np.int64) - first) // step
    return np.where(slot < 0, -1, table[np.clip(slot, 0, slots - 1)])


def build_training_set(
    features: pd.DataFrame,
    prices: pd.DataFrame,
    *,
    timeframe: str,
    horizon_s: int = 60,
    feature_set_version: str = "unknown",
    times: np.ndarray | pd.Series | None = None,
    exchange: str | None = None,
    symbol: str | None = None,
) -> TrainingSet:
    """Build a point-in-time training set (see the module docstring for the exact semantics).

    ``times``: the sample times t (ns or datetimes); default the close time of every feature row.
    """
    tf_s = timeframe_seconds(timeframe)
    if horizon_s < tf_s:
        raise InputError(
            f"horizon {horizon_s}s is shorter than the timeframe {timeframe} ({tf_s}s): the price "
            f"at t + H would come from the same candle as the price at t"
        )
    if "close" not in prices.columns:
        raise InputError(f"prices frame has no 'close' column (columns: {list(prices.columns)})")
    names = feature_columns(features)
    if not names:
        raise InputError("features frame has no feature columns besides 'time'")
    tf_ns = tf_s * NS
    horizon_ns = int(horizon_s) * NS

    feature_end = _time_ns(features, "features") + tf_ns
    price_end = _time_ns(prices, "prices") + tf_ns
    close = prices["close"].to_numpy(dtype=np.float64)
    if len(close) and not (close > 0).all():
        row = int(np.argmax(~(close > 0)))
        raise InputError(f"prices row {row} has a non-positive or missing close {close[row]!r}", line=row)
    baseline = pd.Series(close).rolling(BASELINE_WINDOW, min_periods=BASELINE_WINDOW).mean().to_numpy()

    if len(close) == 0:
        raise InputError("prices frame has no rows: no candles in the range")
    if times is None:  # t is each feature row's own close time: the feature lookup is the identity
        t = feature_end.copy()
        feature_row = np.arange(len(t))
    else:
        t = np.unique(pd.to_datetime(pd.Series(times), utc=True).to_numpy(dtype="datetime64[ns]").astype(np.int64))
        feature_row = np.searchsorted(feature_end, t, side="right") - 1
    price_now = last_at_or_before(price_end, t, tf_ns)
    price_then = last_at_or_before(price_end, t + horizon_ns, tf_ns)

    labelled = (t + horizon_ns) <= price_end[-1]
    has_history = (feature_row >= 0) & (price_now >= 0)
    safe_f = np.clip(feature_row, 0, None)
    safe_p0 = np.clip(price_now, 0, None)
    safe_p1 = np.clip(price_then, 0, None)
    end_now, end_then = price_end[safe_p0], price_end[safe_p1]
    fresh_price = end_now > t - tf_ns  # the candle closing at or before t is the latest possible
    fresh_target = end_then > t + horizon_ns - tf_ns
    contiguous = (end_then - end_now) == (price_then - price_now).astype(np.int64) * tf_ns
    fresh_features = (feature_end[safe_f] == end_now) if len(feature_end) else fresh_price
    no_gap = has_history & fresh_price & fresh_target & contiguous & fresh_features

    columns = {name: features[name].to_numpy(dtype=np.float64) for name in names}
    finite_row = np.ones(len(features), dtype=bool)
    for values in columns.values():
        finite_row &= np.isfinite(values)
    complete = (finite_row[safe_f] if len(features) else np.zeros(len(t), dtype=bool)) & np.isfinite(baseline[safe_p0])

    keep = labelled & no_gap & complete
    # one float block, filled row by row and handed to pandas without a consolidating copy
    out_names = [*names, "price", "baseline_price", "target_price", "target"]
    block = np.empty((len(out_names), int(keep.sum())), dtype=np.float64)
    for position, values in enumerate(columns.values()):
        if times is None:  # the feature row of t is row t itself: compress by the mask
            np.compress(keep, values, out=block[position])
        else:
            np.take(values, safe_f[keep], out=block[position])
    now, then = safe_p0[keep], safe_p1[keep]
    price, target_price, target = block[-4], block[-2], block[-1]
    np.take(close, now, out=price)
    np.take(baseline, now, out=block[-3])
    np.take(close, then, out=target_price)
    np.log(target_price / price, out=target)
    frame = pd.DataFrame(block.T, columns=out_names, copy=False)
    frame.insert(0, "time", pd.to_datetime(t[keep], unit="ns", utc=True))

    return TrainingSet(
        frame=frame,
        feature_names=names,
        feature_set_version=feature_set_version,
        timeframe=timeframe,
        horizon_s=int(horizon_s),
        dropped_for_gaps=int((labelled & ~no_gap).sum()),
        dropped_for_warmup=int((labelled & no_gap & ~complete).sum()),
        dropped_unlabelled=int((~labelled).sum()),
        content_hash=content_hash(frame),
        exchange=exchange,
        symbol=symbol,
    )


def naive_training_set(
    features: pd.DataFrame, prices: pd.DataFrame, *, timeframe: str, horizon_s: int = 60
) -> pd.DataFrame:
    """The same rows by a per-row Python lookup: the reference the vectorized build is checked
    and benchmarked against. Slow on purpose (one dict lookup chain per row)."""
    tf_ns = timeframe_seconds(timeframe) * NS
    horizon_ns = int(horizon_s) * NS
    names = feature_columns(features)
    feature_end = _time_ns(features, "features") + tf_ns
    price_end = _time_ns(prices, "prices") + tf_ns
    close = prices["close"].to_numpy(dtype=np.float64)
    by_end = {int(e): i for i, e in enumerate(price_end)}
    values = features.loc[:, list(names)].to_numpy(dtype=np.float64)
    rows = []
    for f_index, t in enumerate(feature_end):
        t = int(t)
        path = [by_end.get(t + k * tf_ns) for k in range(horizon_ns // tf_ns + 1)]
        if any(p is None for p in path):
            continue
        p0, p1 = path[0], path[-1]
        if p0 < BASELINE_WINDOW - 1 or not np.isfinite(values[f_index]).all():
            continue
        base = float(np.mean(close[p0 - BASELINE_WINDOW + 1 : p0 + 1]))
        rows.append((t, *values[f_index], close[p0], base, close[p1], np.log(close[p1] / close[p0])))
    frame = pd.DataFrame(rows, columns=["time_ns", *names, "price", "baseline_price", "target_price", "target"])
    frame.insert(0, "time", pd.to_datetime(frame.pop("time_ns"), unit="ns", utc=True))
    return frame
