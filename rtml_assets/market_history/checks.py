"""Data-quality checks on validated candles; each records the numbers it measured.

The measurements are pure functions of a candle frame (``time, open, high, low, close,
volume, ...``) returning a ``Measurement``; ``build_market_history_checks`` wraps them as
Dagster asset checks that read the run's partitions back from the offline store. Hard
checks (duplicate keys, time order, OHLC invariants) fail with ERROR and block downstream
assets; gaps and outlier returns warn.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dagster as dg
import numpy as np
import pandas as pd

from rtml_assets.market_history import sources
from rtml_assets.market_history.markets import MarketSource
from rtml_assets.market_history.partitions import MarketWindow, market_windows
from rtml_assets.market_history.resources import ExchangeHistoryResource
from rtml_assets.resources import OfflineStoreResource
from rtml_core.schemas import Candle
from rtml_core.timeframes import timeframe_seconds

ERROR = dg.AssetCheckSeverity.ERROR
WARN = dg.AssetCheckSeverity.WARN
OUTLIER_Z = 10.0
"""|robust z| above this flags a return as an outlier (3.5 is the textbook cut-off for normal
data; one-minute crypto returns are far heavier-tailed, so 10 flags only the implausible)."""
SAMPLE = 5


@dataclass(frozen=True)
class Measurement:
    """What a check measured and whether that passes."""

    passed: bool
    metadata: dict[str, object] = field(default_factory=dict)


def _times(frame: pd.DataFrame, mask: pd.Series | np.ndarray) -> str:
    picked = frame.loc[np.asarray(mask), "time"].head(SAMPLE)
    return ", ".join(str(t) for t in picked) or "-"


def _prices(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["open", "high", "low", "close", "volume"]].apply(pd.to_numeric, errors="coerce").astype(float)


def measure_duplicate_keys(frame: pd.DataFrame) -> Measurement:
    """Each candle start time appears once."""
    duplicated = frame["time"].duplicated(keep=False)
    count = int(frame["time"].duplicated().sum())
    return Measurement(count == 0, {"rows": len(frame), "duplicate_keys": count,
                                    "examples": _times(frame, duplicated)})


def measure_monotonic_time(frame: pd.DataFrame) -> Measurement:
    """Start times strictly increase row by row."""
    steps = frame["time"].diff()
    backwards = (steps <= pd.Timedelta(0)).to_numpy()
    count = int(backwards.sum())
    return Measurement(count == 0, {"rows": len(frame), "non_increasing_steps": count,
                                    "examples": _times(frame, backwards)})


def measure_ohlc_invariants(frame: pd.DataFrame) -> Measurement:
    """low <= open, close <= high; prices > 0 and finite; volume >= 0."""
    p = _prices(frame)
    rules = {
        "low_above_open_or_close": p["low"] > p[["open", "close"]].min(axis=1),
        "high_below_open_or_close": p["high"] < p[["open", "close"]].max(axis=1),
        "low_above_high": p["low"] > p["high"],
        "non_positive_or_missing_price": ~(p[["open", "high", "low", "close"]] > 0).all(axis=1),
        "negative_or_missing_volume": ~(p["volume"] >= 0),
    }
    counts = {name: int(mask.sum()) for name, mask in rules.items()}
    bad = np.logical_or.reduce([mask.to_numpy() for mask in rules.values()]) if len(frame) else np.array([], bool)
    total = int(bad.sum())
    return Measurement(total == 0, {"rows": len(frame), "violating_rows": total, **counts,
                                    "examples": _times(frame, bad)})


def measure_gaps(frame: pd.DataFrame, timeframe: str, max_gap_seconds: int) -> Measurement:
    """Missing intervals between consecutive candles; warns when one is longer than allowed."""
    step = pd.Timedelta(seconds=timeframe_seconds(timeframe))
    diffs = frame["time"].diff().iloc[1:]
    gaps = diffs[diffs > step]
    longest = gaps.max() if len(gaps) else pd.Timedelta(0)
    missing = int(((gaps / step) - 1).sum()) if len(gaps) else 0
    metadata: dict[str, object] = {
        "gap_count": len(gaps),
        "missing_candles": missing,
        "longest_gap_seconds": float(longest.total_seconds()),
        "max_gap_seconds": max_gap_seconds,
    }
    if len(gaps):
        end = gaps.idxmax()
        metadata["longest_gap"] = f"{frame['time'].loc[end] - longest} -> {frame['time'].loc[end]}"
    if "trade_count" in frame:  # flat zero-volume candles the builder filled in
        empty = (pd.to_numeric(frame["trade_count"]) == 0) & (_prices(frame)["volume"] == 0)
        metadata["filled_candles"] = int(empty.sum())
    return Measurement(longest.total_seconds() <= max_gap_seconds, metadata)


def robust_z_scores(values: pd.Series) -> pd.Series:
    """Modified z-score 0.6745 (x - median) / MAD (Iglewicz-Hoaglin); when MAD is 0 (mostly
    unchanged prices) the mean absolute deviation stands in: (x - median) / (1.253314 MeanAD)."""
    clean = values.dropna()
    median = clean.median()
    deviation = (clean - median).abs()
    mad = deviation.median()
    if mad > 0:
        return 0.6745 * (values - median) / mad
    mean_ad = deviation.mean()
    if mean_ad > 0:
        return (values - median) / (1.253314 * mean_ad)
    return pd.Series(0.0, index=values.index)


def measure_outlier_returns(frame: pd.DataFrame, threshold: float = OUTLIER_Z) -> Measurement:
    """Flags close-to-close log returns whose robust z-score exceeds ``threshold``."""
    traded = frame[_prices(frame)["volume"] > 0]  # filled flat candles would shrink the MAD
    close = pd.to_numeric(traded["close"], errors="coerce").astype(float)
    returns = np.log(close).diff()
    z = robust_z_scores(returns)
    flagged = (z.abs() > threshold).fillna(False).to_numpy()
    metadata: dict[str, object] = {
        "returns": int(returns.notna().sum()),
        "outliers": int(flagged.sum()),
        "threshold_robust_z": threshold,
        "max_abs_robust_z": float(z.abs().max()) if z.notna().any() else 0.0,
        "examples": _times(traded, flagged),
    }
    if flagged.any():
        metadata["largest_return"] = float(returns[flagged].abs().max())
    return Measurement(not flagged.any(), metadata)


def combine(results: Sequence[tuple[str, Measurement]]) -> Measurement:
    """One result for a run: passes when every market window passes."""
    if len(results) == 1:
        label, only = results[0]
        return Measurement(only.passed, {"window": label, **only.metadata})
    merged: dict[str, object] = {"windows": len(results)}
    for label, result in results:
        merged.update({f"{label} {name}": value for name, value in result.metadata.items()})
        merged[f"{label} passed"] = result.passed
    return Measurement(all(result.passed for _, result in results), merged)


def to_check_result(measurement: Measurement, severity: dg.AssetCheckSeverity) -> dg.AssetCheckResult:
    metadata = {k: (dg.MetadataValue.text(v) if isinstance(v, str) else v) for k, v in measurement.metadata.items()}
    return dg.AssetCheckResult(passed=measurement.passed, severity=severity, metadata=metadata)


CandleMeasure = Callable[[pd.DataFrame, MarketSource], Measurement]

CANDLE_CHECKS: dict[str, tuple[CandleMeasure, dg.AssetCheckSeverity, str]] = {
    "no_duplicate_keys": (lambda f, m: measure_duplicate_keys(f), ERROR,
                          "Each (exchange, symbol, timeframe, start time) appears once."),
    "monotonic_time": (lambda f, m: measure_monotonic_time(f), ERROR,
                       "Candle start times strictly increase."),
    "ohlc_invariants": (lambda f, m: measure_ohlc_invariants(f), ERROR,
                        "low <= open, close <= high; prices positive; volume >= 0."),
    "gaps": (lambda f, m: measure_gaps(f, m.timeframe, m.max_gap_seconds), WARN,
             "Counts missing intervals and the longest gap; warns above the market's max_gap_seconds."),
    "outlier_returns": (lambda f, m: measure_outlier_returns(f), WARN,
                        f"Flags log returns with a robust (median/MAD) z-score above {OUTLIER_Z:g}."),
}


def read_window_candles(store, window: MarketWindow) -> pd.DataFrame:
    market = window.market
    return store.read_candles(market.exchange, market.symbol, market.timeframe, window.start_ns, window.end_ns)


def build_market_history_checks(
    markets: Sequence[MarketSource], validated_candles: dg.AssetsDefinition
) -> list[dg.AssetChecksDefinition]:
    """One asset check per property of ``validated_candles``; the ERROR ones block downstream.

    A check covers the partitions of the run it runs in (one day, or a backfilled range) and
    names that window in its metadata. Checks are not partitioned themselves: Dagster records
    a partitioned check's planned evaluation per partition, which made range runs several
    times slower, for a status the window metadata already gives.
    """
    def make(prop: str, measure: CandleMeasure, severity: dg.AssetCheckSeverity, doc: str):
        @dg.asset_check(
            asset=validated_candles,
            name=f"check_validated_candles_{prop}",
            description=doc,
            blocking=severity == ERROR,
        )
        def _check(context: dg.AssetCheckExecutionContext, offline_store: OfflineStoreResource) -> dg.AssetCheckResult:
            store = offline_store.get_store()
            results = [
                (window.label, measure(read_window_candles(store, window), window.market))
                for window in market_windows(context.partition_keys, markets)
            ]
            return to_check_result(combine(results), severity)

        return _check

    checks = [make(prop, *spec) for prop, spec in CANDLE_CHECKS.items()]
    if any(market.stream for market in markets):
        checks.append(build_reconciliation_check(markets, validated_candles))
    return checks


RECONCILED_FIELDS = ("open", "high", "low", "close", "volume", "trade_count")
MISMATCH_ROWS = 20


def reconcile(stored: Sequence[Candle], exchange: Sequence[Candle]) -> Measurement:
    """Every closed candle with trades, stored (the stream's where it logged them) against the one
    the exchange's REST history gives: equal OHLCV and trade count, else listed."""
    ours = {c.start_ns: c for c in stored if c.trade_count}
    theirs = {c.start_ns: c for c in exchange if c.trade_count}
    rows = []
    for start in sorted(ours.keys() | theirs.keys()):
        a, b = ours.get(start), theirs.get(start)
        for name in RECONCILED_FIELDS:
            left = getattr(a, name) if a else None
            right = getattr(b, name) if b else None
            if left != right:
                rows.append({"time": str(pd.Timestamp(start, unit="ns", tz="UTC")), "field": name,
                             "stored": "-" if left is None else str(left), "exchange": "-" if right is None else str(right)})
    bad = len({row["time"] for row in rows})
    metadata: dict[str, object] = {"compared_candles": len(ours.keys() | theirs.keys()), "mismatched_candles": bad,
                                   "missing_in_store": len(theirs.keys() - ours.keys()),
                                   "missing_at_exchange": len(ours.keys() - theirs.keys())}
    if rows:
        metadata["mismatches"] = dg.MetadataValue.md(pd.DataFrame(rows[:MISMATCH_ROWS]).to_markdown(index=False))
    return Measurement(bad == 0, metadata)


def exchange_candles(window: MarketWindow, store, exchange_history: ExchangeHistoryResource) -> list[Candle]:
    """What the exchange's REST history gives for ``window``: rtml's candles of the REST trades
    raw_trades stored, or the exchange's own candles (Binance klines) fetched again."""
    from rtml_assets.market_history.assets import candles_by_day, fetch_candles

    market = window.market
    if not market.has_trades:
        return fetch_candles(window, exchange_history)
    trades = store.read_trades(market.exchange, market.symbol, window.start_ns, window.end_ns, exact=True)
    return candles_by_day(list(sources.frame_to_trades(trades, market)), market)


def build_reconciliation_check(markets: Sequence[MarketSource],
                               validated_candles: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """``check_validated_candles_match_exchange``: streamed markets' days against the REST history."""
    @dg.asset_check(
        asset=validated_candles,
        name="check_validated_candles_match_exchange",
        description="Streamed markets: every closed candle of the day (the sidecar's where it logged them) "
                    "equals the exchange's REST history for that day in OHLCV and trade count; mismatches "
                    "are listed in the metadata. Markets without a stream are not compared.",
    )
    def _check(context: dg.AssetCheckExecutionContext, offline_store: OfflineStoreResource,
               exchange_history: ExchangeHistoryResource) -> dg.AssetCheckResult:
        store = offline_store.get_store()
        results = []
        for window in market_windows(context.partition_keys, markets):
            if not window.market.stream:
                results.append((window.label, Measurement(True, {"compared_candles": 0, "streamed": False})))
                continue
            market = window.market
            stored = store.read_candles(market.exchange, market.symbol, market.timeframe, window.start_ns,
                                        window.end_ns, exact=True)
            ours = sources.frame_to_candles(stored, market.exchange, market.symbol, market.timeframe)
            results.append((window.label, reconcile(ours, exchange_candles(window, store, exchange_history))))
        return to_check_result(combine(results), ERROR)

    return _check
