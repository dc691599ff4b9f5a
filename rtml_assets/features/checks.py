"""Checks on the indicator table, each recording what it measured; all block downstream."""

from collections.abc import Sequence

import dagster as dg
import numpy as np
import pandas as pd

from rtml_assets.features.assets import history_for
from rtml_assets.market_history.checks import ERROR, Measurement, combine, to_check_result
from rtml_assets.market_history.markets import MarketSource
from rtml_assets.market_history.partitions import MarketWindow, market_windows
from rtml_assets.resources import OfflineStoreResource
from rtml_core.features import FeatureSet

BOUNDED = {
    "rsi_14": (0.0, 100.0),
    "stoch_k_14_3_3": (0.0, 100.0),
    "stoch_d_14_3_3": (0.0, 100.0),
    "mfi_14": (0.0, 100.0),
    "willr_14": (-100.0, 0.0),
}
"""Features with a defined range; absent ones are skipped."""
TOLERANCE = 1e-9


def measure_no_nan_after_warmup(features: pd.DataFrame, first_position: int, warmup: int) -> Measurement:
    """No NaN in rows at or after the warm-up: ``first_position`` is the history index of row 0."""
    values = features.drop(columns=["time"])
    positions = np.arange(first_position, first_position + len(features))
    after = values[positions >= warmup]
    nan_by_feature = after.isna().sum()
    bad = nan_by_feature[nan_by_feature > 0]
    rows = int(after.isna().any(axis=1).sum())
    return Measurement(rows == 0, {
        "rows_checked": len(after), "warmup_rows": int((positions < warmup).sum()),
        "warmup_candles": warmup, "rows_with_nan": rows,
        "features_with_nan": ", ".join(f"{name} ({count})" for name, count in bad.items()) or "-",
    })


def measure_ranges(features: pd.DataFrame, bounds: dict[str, tuple[float, float]] = BOUNDED) -> Measurement:
    """Bounded oscillators (RSI, stochastics, MFI, Williams %R) stay inside their range."""
    metadata: dict[str, object] = {}
    outside_total = 0
    for name, (low, high) in bounds.items():
        if name not in features:
            continue
        column = features[name].astype(float)
        outside = int(((column < low - TOLERANCE) | (column > high + TOLERANCE)).sum())
        outside_total += outside
        metadata[f"{name} outside [{low:g}, {high:g}]"] = outside
        if column.notna().any():
            metadata[f"{name} min..max"] = f"{column.min():.6g}..{column.max():.6g}"
    metadata["outside_total"] = outside_total
    return Measurement(outside_total == 0, metadata)


def measure_row_count(features: pd.DataFrame, candles: pd.DataFrame) -> Measurement:
    """One feature row per candle, at the same times."""
    missing = int((~candles["time"].isin(features["time"])).sum())
    extra = int((~features["time"].isin(candles["time"])).sum())
    return Measurement(len(features) == len(candles) and missing == 0 and extra == 0, {
        "feature_rows": len(features), "candle_rows": len(candles),
        "candles_without_features": missing, "features_without_candle": extra,
    })


def build_feature_checks(
    markets: Sequence[MarketSource], indicator_table: dg.AssetsDefinition, feature_set: FeatureSet
) -> list[dg.AssetChecksDefinition]:
    """ERROR, blocking checks on ``indicator_table`` for ``feature_set``'s rows."""
    def read(store, window: MarketWindow) -> pd.DataFrame:
        market = window.market
        return store.read_features(market.exchange, market.symbol, market.timeframe,
                                   feature_set.version, window.start_ns, window.end_ns)

    def run(context, offline_store, measure) -> dg.AssetCheckResult:
        store = offline_store.get_store()
        results = [(w.label, measure(store, w)) for w in market_windows(context.partition_keys, markets)]
        return to_check_result(combine(results), ERROR)

    def spec(name: str, doc: str):
        return dict(asset=indicator_table, name=f"check_indicator_table_{name}", description=doc, blocking=True)

    @dg.asset_check(**spec("no_nan_after_warmup", "No NaN in any feature once the warm-up is over."))
    def check_no_nan(context: dg.AssetCheckExecutionContext, offline_store: OfflineStoreResource):
        def measure(store, window):
            history = history_for(store, window)
            start = pd.Timestamp(window.start_ns, unit="ns", tz="UTC")
            first_position = int((history["time"] < start).sum())
            return measure_no_nan_after_warmup(read(store, window), first_position, int(feature_set.warmup))
        return run(context, offline_store, measure)

    @dg.asset_check(**spec("ranges", "RSI, stochastics, MFI in [0, 100]; Williams %R in [-100, 0]."))
    def check_ranges(context: dg.AssetCheckExecutionContext, offline_store: OfflineStoreResource):
        return run(context, offline_store, lambda store, window: measure_ranges(read(store, window)))

    @dg.asset_check(**spec("row_count", "One feature row per validated candle."))
    def check_row_count(context: dg.AssetCheckExecutionContext, offline_store: OfflineStoreResource):
        def measure(store, window):
            m = window.market
            candles = store.read_candles(m.exchange, m.symbol, m.timeframe, window.start_ns, window.end_ns)
            return measure_row_count(read(store, window), candles)
        return run(context, offline_store, measure)

    return [check_no_nan, check_ranges, check_row_count]
