"""``microstructure_table``: the order-book group the sidecar logged, per (day, market).

The sidecar writes the rows (one per closed candle, as of its close; docs/stream.md); this asset
computes nothing. Materializing a partition records what is there for that day: rows, the share of
the day's candles that have them and of those with a book, so a new day of a streamed market is a
new feature partition (``retrain_hourly`` compares it with the last training set) and a day
without the sidecar shows as such.
"""

from collections.abc import Sequence

import dagster as dg
import numpy as np

from rtml_assets.features.assets import GROUP, OWNERS
from rtml_assets.market_history.markets import MarketSource
from rtml_assets.market_history.partitions import market_windows
from rtml_assets.resources import OfflineStoreResource
from rtml_core.errors import InputError
from rtml_core.features.microstructure import MICROSTRUCTURE, MicrostructureSet


def logged_rows(store, market: MarketSource, start_ns: int, end_ns: int, group: MicrostructureSet):
    """The group's rows of a market in ``[start_ns, end_ns)`` (empty before the sidecar logged any)."""
    try:
        return store.read_features(market.exchange, market.symbol, market.timeframe, group.version, start_ns, end_ns)
    except InputError:  # the version is registered with the sidecar's first row
        return None


def build_microstructure_asset(markets: Sequence[MarketSource], partitions_def: dg.PartitionsDefinition,
                               validated_candles: dg.AssetsDefinition,
                               group: MicrostructureSet = MICROSTRUCTURE) -> dg.AssetsDefinition:
    market_list = list(markets)

    @dg.asset(
        name="microstructure_table",
        group_name=GROUP,
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[validated_candles],
        kinds={"python", "sql"},
        owners=OWNERS,
        tags={"layer": "features"},
        metadata={"feature_set_version": group.version, "features": len(group.names)},
        description=(
            "Order-book and trade-flow features (book imbalance top-1 and top-N, microprice offset, spread, "
            "depth, taker imbalance, trade count, realized vol) as of each candle's close, logged by the "
            "streaming sidecar (rtml_core.features.microstructure). Records the day's coverage; training "
            "configs choose the group with feature_groups."
        ),
    )
    def microstructure_table(context: dg.AssetExecutionContext,
                             offline_store: OfflineStoreResource) -> dg.MaterializeResult:
        store = offline_store.get_store()
        table = ["| market | days | candles | rows | with book |", "|---|---|---|---|---|"]
        total = 0
        for window in market_windows(context.partition_keys, market_list):
            market = window.market
            candles = store.read_candles(market.exchange, market.symbol, market.timeframe,
                                         window.start_ns, window.end_ns)
            rows = logged_rows(store, market, window.start_ns, window.end_ns, group)
            count = 0 if rows is None else len(rows)
            with_book = 0 if rows is None else int(np.isfinite(rows[group.names[0]].to_numpy(float)).sum())
            total += count
            table.append(f"| {market.key} | {window.first_day}..{window.last_day} | {len(candles)} | {count} "
                         f"| {with_book} |")
            context.log.info(f"{window.label}: {count} microstructure rows for {len(candles)} candles")
        return dg.MaterializeResult(metadata={
            "rows": total,
            "feature_set_version": group.version,
            "markets": dg.MetadataValue.md("\n".join(table)),
        })

    return microstructure_table
