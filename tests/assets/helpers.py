"""Shared steps of the asset tests: build the code location on a given store and run it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg

from rtml_assets.definitions import build_definitions
from rtml_assets.market_history.markets import MarketSource, demo_markets
from rtml_assets.market_history.partitions import partition_key, range_tags
from rtml_assets.selections import without_freshness
from rtml_core.settings import Settings

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def market(key: str, markets: list[MarketSource] | None = None) -> MarketSource:
    return next(m for m in (markets or demo_markets()) if m.key == key)


def definitions(home: Path, offline_url: str, markets: list[MarketSource] | None = None) -> dg.Definitions:
    return build_definitions(Settings(home=home, offline_url=offline_url), markets or demo_markets())


def run(defs: dg.Definitions, assets: list[str], *, day: dt.date | None = None, market: MarketSource,
        last_day: dt.date | None = None, instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    """Materialize ``assets`` (with their quality checks) for one day of ``market``, or a range of days."""
    kwargs: dict = {}
    if last_day is None:
        kwargs["partition_key"] = str(partition_key(day or market.first_day, market))
    else:
        kwargs["tags"] = range_tags(market, day, last_day)
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=without_freshness(defs, assets),
        resources=defs.resources,
        instance=instance or dg.DagsterInstance.ephemeral(),
        run_config=QUIET,
        raise_on_error=False,
        **kwargs,
    )


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.event_specific_data.check_name: e.event_specific_data
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, list]:
    out: dict[str, list] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            m = event.event_specific_data.materialization
            out.setdefault(m.asset_key.to_user_string(), []).append(m)
    return out
