"""The offline indicator table: the feature set over validated candles, per (day, market).

A partition's rows are computed over the market's candles from its first stored candle up
to the partition's end, then cut to the partition: recursive indicators (EMA, RSI, ATR,
ADX, OBV) never restart at a partition boundary, so every partition equals a full-history
computation. Rows are written with the feature set's version; re-materializing replaces.
"""

from collections.abc import Sequence

import dagster as dg
import pandas as pd

from rtml_assets.market_history.markets import MarketSource
from rtml_assets.market_history.partitions import MarketWindow, market_windows
from rtml_assets.resources import OfflineStoreResource
from rtml_core.features import FeatureSet, compute_features

GROUP = "features"
OWNERS = ["team:features"]
PREVIEW_COLUMNS = 6


def history_for(store, window: MarketWindow) -> pd.DataFrame:
    """Every stored candle of the market up to the window's end (the full preceding history)."""
    market = window.market
    return store.read_candles(market.exchange, market.symbol, market.timeframe, None, window.end_ns)


def window_features(candles: pd.DataFrame, window: MarketWindow, feature_set: FeatureSet) -> pd.DataFrame:
    """The feature rows of the window's candles, computed over all candles given."""
    features = compute_features(candles, feature_set)
    start = pd.Timestamp(window.start_ns, unit="ns", tz="UTC")
    return features[features["time"] >= start].reset_index(drop=True)


def build_feature_assets(
    markets: Sequence[MarketSource], partitions_def: dg.PartitionsDefinition, feature_set: FeatureSet,
    validated_candles: dg.AssetsDefinition,
) -> list[dg.AssetsDefinition]:
    """``indicator_table`` for ``feature_set``, partitioned like ``validated_candles``."""
    market_list = list(markets)

    @dg.asset(
        name="indicator_table",
        group_name=GROUP,
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[validated_candles],
        kinds={"python", "pandas", "sql"},
        owners=OWNERS,
        tags={"layer": "features"},
        metadata={"feature_set_version": feature_set.version, "features": len(feature_set.names),
                  "warmup_candles": int(feature_set.warmup)},
        description=(
            "Technical indicators and market features (rtml_core.features, one definition for batch "
            "and stream) per validated candle, stored with their feature_set_version. Each partition "
            "is computed over the full preceding history, so its values equal a full-history run; "
            "older versions' rows stay queryable."
        ),
    )
    def indicator_table(context: dg.AssetExecutionContext, offline_store: OfflineStoreResource) -> dg.MaterializeResult:
        store = offline_store.get_store()
        store.register_feature_set(feature_set.version, list(feature_set.names), feature_set.stored_spec())
        table = ["| market | days | rows | first | last |", "|---|---|---|---|---|"]
        total = 0
        preview = ""
        for window in market_windows(context.partition_keys, market_list):
            market = window.market
            rows = window_features(history_for(store, window), window, feature_set)
            store.replace_features(rows, exchange=market.exchange, symbol=market.symbol,
                                   timeframe=market.timeframe, feature_set_version=feature_set.version,
                                   start_ns=window.start_ns, end_ns=window.end_ns)
            context.log.info(f"{window.label}: {len(rows)} feature rows ({feature_set.version})")
            total += len(rows)
            first = str(rows["time"].iloc[0]) if len(rows) else "-"
            last = str(rows["time"].iloc[-1]) if len(rows) else "-"
            table.append(f"| {market.key} | {window.first_day}..{window.last_day} | {len(rows)} | {first} | {last} |")
            if len(rows) and not preview:
                preview = rows.tail(3).iloc[:, :PREVIEW_COLUMNS].to_markdown(index=False)
        return dg.MaterializeResult(metadata={
            "rows": total,
            "feature_set_version": feature_set.version,
            "features": len(feature_set.names),
            "markets": dg.MetadataValue.md("\n".join(table)),
            "preview": dg.MetadataValue.md(preview or "(no rows)"),
        })

    return [indicator_table]
