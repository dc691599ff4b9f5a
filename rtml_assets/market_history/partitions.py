"""Partitions: one per (day, market), so a date range of one market can be backfilled from the UI.

A run may cover one partition or a range (a single-run backfill); assets work on
``market_windows(context.partition_keys)``: each market's half-open UTC window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from rtml_assets.market_history.markets import MarketSource

DATE = "date"
MARKET = "market"
NS_PER_DAY = 86_400 * 1_000_000_000


def market_day_partitions(markets: Sequence[MarketSource]) -> dg.MultiPartitionsDefinition:
    """Daily partitions from the earliest market's first day, crossed with the market keys."""
    start = min(market.first_day for market in markets)
    return dg.MultiPartitionsDefinition(
        {
            DATE: dg.DailyPartitionsDefinition(start_date=start.isoformat(), timezone="UTC"),
            MARKET: dg.StaticPartitionsDefinition([market.key for market in markets]),
        }
    )


def partition_key(day: dt.date, market: MarketSource | str) -> dg.MultiPartitionKey:
    key = market if isinstance(market, str) else market.key
    return dg.MultiPartitionKey({DATE: day.isoformat(), MARKET: key})


def range_tags(market: MarketSource, first_day: dt.date | None = None,
               last_day: dt.date | None = None) -> dict[str, str]:
    """Run tags that make one run materialize a market's days ``first_day..last_day``."""
    return {
        "dagster/asset_partition_range_start": str(partition_key(first_day or market.first_day, market)),
        "dagster/asset_partition_range_end": str(partition_key(last_day or market.last_day_at(), market)),
    }


def day_start_ns(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days * NS_PER_DAY


@dataclass(frozen=True)
class MarketWindow:
    """The days of one market a run covers: times in ``[start_ns, end_ns)``."""

    market: MarketSource
    first_day: dt.date
    last_day: dt.date
    days: int

    @property
    def start_ns(self) -> int:
        return day_start_ns(self.first_day)

    @property
    def end_ns(self) -> int:
        return day_start_ns(self.last_day) + NS_PER_DAY

    @property
    def label(self) -> str:
        if self.first_day == self.last_day:
            return f"{self.market.key} {self.first_day}"
        return f"{self.market.key} {self.first_day}..{self.last_day}"


def market_windows(partition_keys: Iterable[str], markets: Sequence[MarketSource]) -> list[MarketWindow]:
    """Group a run's partition keys by market into one contiguous window each.

    Days missing inside a window are included: a range run covers every day between its ends.
    """
    by_key = {market.key: market for market in markets}
    days: dict[str, list[dt.date]] = {}
    for raw in partition_keys:
        key = raw if isinstance(raw, dg.MultiPartitionKey) else _parse(raw)
        dims = key.keys_by_dimension
        if dims[MARKET] not in by_key:
            raise dg.DagsterInvariantViolationError(f"partition {raw} names an unknown market")
        days.setdefault(dims[MARKET], []).append(dt.date.fromisoformat(dims[DATE]))
    return [
        MarketWindow(by_key[key], min(values), max(values), len(set(values)))
        for key, values in sorted(days.items())
    ]


def _parse(raw: str) -> dg.MultiPartitionKey:
    day, market = raw.split("|", 1)  # dimensions sorted by name: date|market
    return dg.MultiPartitionKey({DATE: day, MARKET: market})
