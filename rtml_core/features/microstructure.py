"""The ``microstructure`` feature group: order-book and trade-flow values as of each candle's close.

The sidecar computes them from its L2 book and trade-flow window (``rtml_core.book``) when it
closes a candle, logs them offline as one row per closed candle (a feature table of their own,
``features_<version>``, keyed like the indicator table) and writes the same values to the
market's live hash with the close time (``ms_close_s``), so training and serving read one
definition. The group is versioned like the indicator set: a short hash of its names and
parameters (book levels N, trade-flow window).

Point in time: a training row at t takes the group's row of the candle closing at t (at most
``max_lag_candles`` earlier); the API refuses a model that uses the group (409) when the live
values are missing or as of a close older than the feature row's by more than that bound.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rtml_core.book import OrderBook, TradeFlow, book_features
from rtml_core.errors import RtmlError

if TYPE_CHECKING:
    import pandas as pd

GROUP = "microstructure"
INDICATORS = "indicators"
FEATURE_GROUPS = (INDICATORS, GROUP)
"""The feature groups a training config may choose."""
PREFIX = "ms_"
VERSION_PREFIX = "ms-"
CLOSE_FIELD = "ms_close_s"
"""Live-hash field: the close (epoch seconds, whole) the ``ms_*`` values are as of."""
REVISION = 1
"""Bump when a definition below changes meaning (the version changes with it)."""


class MicrostructureUnavailable(RtmlError):
    """A model needs the microstructure group and the live values are missing or too old."""


@dataclass(frozen=True)
class MicrostructureSet:
    """The group's definition: N book levels and the trade-flow window it was computed with."""

    levels: int = 10
    flow_window_s: int = 60
    max_lag_candles: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        n = self.levels
        return (f"{PREFIX}imbalance_top", f"{PREFIX}imbalance_{n}", f"{PREFIX}microprice_offset_bps",
                f"{PREFIX}spread_bps", f"{PREFIX}depth_{n}", f"{PREFIX}taker_imbalance", f"{PREFIX}trade_count",
                f"{PREFIX}realized_vol")

    def to_json(self) -> dict:
        """The definition as plain data (stored beside the version in the offline store)."""
        n = self.levels
        return {
            "group": GROUP, "revision": REVISION, "levels": n, "flow_window_s": self.flow_window_s,
            "definitions": {
                f"{PREFIX}imbalance_top": "(best bid size - best ask size) / sum",
                f"{PREFIX}imbalance_{n}": f"(bid depth - ask depth) / sum over the best {n} levels",
                f"{PREFIX}microprice_offset_bps": "(microprice - mid) / mid * 10000",
                f"{PREFIX}spread_bps": "(best ask - best bid) / mid * 10000",
                f"{PREFIX}depth_{n}": f"bid + ask size of the best {n} levels (base units)",
                f"{PREFIX}taker_imbalance": f"(taker buy - taker sell) / sum over {self.flow_window_s} s; 0 when none",
                f"{PREFIX}trade_count": f"trades in the last {self.flow_window_s} s",
                f"{PREFIX}realized_vol": f"sqrt(sum of squared trade-to-trade log returns) over {self.flow_window_s} s",
            },
        }

    @property
    def version(self) -> str:
        payload = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return VERSION_PREFIX + hashlib.sha256(payload).hexdigest()[:12]

    # -- computing: from the sidecar's book and trade flow ------------------------------------
    def values(self, book: OrderBook | None, flow: TradeFlow) -> dict[str, float]:
        """The group's values now (book ones NaN without a two-sided book)."""
        live = flow.features()
        if book is not None and book.best_bid() is not None and book.best_ask() is not None:
            live.update(book_features(book, self.levels))
        return self.from_live(live)

    def from_live(self, live: Mapping[str, float]) -> dict[str, float]:
        """The group's values from the sidecar's live names (``book_*``, ``flow_*``)."""
        n = self.levels
        def get(name: str) -> float:
            return float(live.get(name, math.nan))

        mid, micro = get("book_mid"), get("book_microprice")
        taker = get("flow_volume_imbalance")
        values = {
            f"{PREFIX}imbalance_top": get("book_imbalance_top"),
            f"{PREFIX}imbalance_{n}": get(f"book_imbalance_{n}"),
            f"{PREFIX}microprice_offset_bps": (micro - mid) / mid * 10_000 if mid > 0 else math.nan,
            f"{PREFIX}spread_bps": get("book_spread_bps"),
            f"{PREFIX}depth_{n}": get(f"book_bid_depth_{n}") + get(f"book_ask_depth_{n}"),
            f"{PREFIX}taker_imbalance": 0.0 if math.isnan(taker) else taker,
            f"{PREFIX}trade_count": get("flow_trade_count"),
            f"{PREFIX}realized_vol": get("flow_realized_vol"),
        }
        return {name: value if math.isfinite(value) else math.nan for name, value in values.items()}

    def live_fields(self, values: Mapping[str, float], close_ns: int) -> dict[str, float]:
        """What the sidecar merges into the live hash at a close: the values and their close time."""
        return {**values, CLOSE_FIELD: float(close_ns // 1_000_000_000)}

    # -- serving --------------------------------------------------------------------------------
    def for_row(self, live: Mapping[str, float], row_close_ns: int, timeframe_ns: int,
                names: Sequence[str]) -> dict[str, float]:
        """The live values of ``names`` for a feature row closing at ``row_close_ns``; raises
        ``MicrostructureUnavailable`` when missing, not finite, or older than the bound."""
        close_s = live.get(CLOSE_FIELD)
        if close_s is None:
            raise MicrostructureUnavailable("no live microstructure values (is the sidecar streaming the book?)")
        lag_s = row_close_ns // 1_000_000_000 - int(close_s)  # closes are whole seconds
        if lag_s * 1_000_000_000 > self.max_lag_candles * timeframe_ns:
            raise MicrostructureUnavailable(
                f"live microstructure values are as of {lag_s} s before the feature row's close "
                f"(bound {self.max_lag_candles} candle(s))")
        values = {name: live.get(name) for name in names}
        missing = [name for name, value in values.items() if value is None or not math.isfinite(value)]
        if missing:
            raise MicrostructureUnavailable(f"live microstructure values {missing[:10]} are missing or undefined")
        return values


MICROSTRUCTURE = MicrostructureSet()
"""The sidecar's default group (10 book levels, 60 s trade flow)."""


def uses_microstructure(names: Sequence[str]) -> bool:
    return any(name.startswith(PREFIX) for name in names)


def group_names(names: Sequence[str]) -> list[str]:
    """The names of this group among ``names`` (a model's inputs), in their order."""
    return [name for name in names if name.startswith(PREFIX)]


def is_microstructure_version(version: str) -> bool:
    """A feature-table version of this group (not computed from candles: never rebuilt from them)."""
    return version.startswith(VERSION_PREFIX)


def join_group(features: pd.DataFrame, group: pd.DataFrame, *, timeframe_ns: int,
               max_lag_candles: int = 0) -> pd.DataFrame:  # pandas imported here: the API reads this module
    """``features`` with the ``group`` columns as of each row: the group row of the same candle or
    of one at most ``max_lag_candles`` earlier (never a later one); NaN where there is none.

    Both frames have a ``time`` column (the candle start, datetime64[ns, UTC]), sorted ascending.
    """
    import numpy as np
    import pandas as pd

    names = [c for c in group.columns if c != "time"]
    clash = sorted(set(names) & (set(features.columns) - {"time"}))
    if clash:
        raise ValueError(f"feature groups share column names: {clash}")
    left = features.sort_values("time").reset_index(drop=True)
    right = group.sort_values("time").reset_index(drop=True)
    right = right.assign(time=right["time"].astype(left["time"].dtype))
    tolerance = pd.Timedelta(int(max_lag_candles * timeframe_ns), unit="ns")
    joined = pd.merge_asof(left, right, on="time", direction="backward", tolerance=tolerance)
    for name in names:
        joined[name] = joined[name].astype(np.float64)
    return joined
