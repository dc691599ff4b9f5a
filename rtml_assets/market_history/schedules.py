"""New days of the growing markets, by themselves: shortly after each UTC midnight the schedule asks
for every day of an open-ended market (``last_day`` unset) within the last ``lookback_days`` that
``validated_candles`` has no materialization of, one run per (day, market), with ``indicator_table``
in the same run so the training automation sees new feature partitions. Runs are keyed on the
partition, so a day is requested once; ``rtml history sync`` fills longer gaps."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from rtml_assets.market_history.assets import GROUP
from rtml_assets.market_history.markets import MarketSource
from rtml_assets.market_history.partitions import partition_key

SYNC_CRON = "15 0 * * *"
LOOKBACK_DAYS = 7
VALIDATED_CANDLES = dg.AssetKey("validated_candles")
FRESHNESS_CHECK = dg.AssetCheckKey(VALIDATED_CANDLES, "check_validated_candles_fresh")


def missing_partitions(markets: Sequence[MarketSource], materialized: set[str], now, lookback_days: int) -> list[str]:
    """Partition keys of the growing markets' recent days not materialized yet, oldest first."""
    keys = []
    for market in markets:
        if market.last_day is not None:
            continue
        for day in market.days(now)[-lookback_days:]:
            key = str(partition_key(day, market))
            if key not in materialized:
                keys.append(key)
    return keys


def build_market_history_schedule(markets: Sequence[MarketSource], partitions_def: dg.PartitionsDefinition, *,
                                  cron: str = SYNC_CRON, lookback_days: int = LOOKBACK_DAYS,
                                  status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.RUNNING,
                                  ) -> dg.ScheduleDefinition:
    """``market_history_sync``: the growing markets' new days (history and features), daily."""
    market_list = list(markets)
    job = dg.define_asset_job(
        "market_history_sync_job",
        selection=(dg.AssetSelection.groups(GROUP, "features") - dg.AssetSelection.checks(FRESHNESS_CHECK)),
        partitions_def=partitions_def,
        description="One day of one market: trades from the exchange, validated candles, indicator rows.",
    )

    @dg.schedule(name="market_history_sync", cron_schedule=cron, job=job, execution_timezone="UTC",
                 default_status=status,
                 description=f"New days of the open-ended markets (REST sources), {cron} UTC: the days of the last "
                             f"{lookback_days} without validated_candles, one run each.")
    def market_history_sync(context: dg.ScheduleEvaluationContext):
        if not any(m.last_day is None for m in market_list):
            return dg.SkipReason("no open-ended market in the catalog")
        materialized = set(context.instance.get_materialized_partitions(VALIDATED_CANDLES))
        keys = missing_partitions(market_list, materialized, context.scheduled_execution_time, lookback_days)
        if not keys:
            return dg.SkipReason("every recent day of the open-ended markets is materialized")
        return [dg.RunRequest(run_key=key, partition_key=key) for key in keys]

    return market_history_sync
