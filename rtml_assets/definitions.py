"""The code location: wiring only. Each domain folder builds its assets for the market catalog.

Loaded lazily by Dagster (``@dg.definitions``): configuration is read when the code location
loads, never at import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import dagster as dg

from rtml_assets.features.assets import build_feature_assets
from rtml_assets.features.checks import build_feature_checks
from rtml_assets.features.microstructure import build_microstructure_asset
from rtml_assets.market_history.assets import build_market_history_assets
from rtml_assets.market_history.checks import build_market_history_checks
from rtml_assets.market_history.markets import MarketSource, demo_markets, load_markets
from rtml_assets.market_history.partitions import market_day_partitions
from rtml_assets.market_history.resources import ExchangeHistoryResource
from rtml_assets.market_history.schedules import build_market_history_schedule
from rtml_assets.monitoring import monitoring_assets, monitoring_checks, monitoring_schedules
from rtml_assets.online import online_features_spec
from rtml_assets.resources import OfflineStoreResource
from rtml_assets.training import build_training_assets, build_training_schedules, training_resources
from rtml_core.features import DEFAULT_FEATURE_SET, FeatureSet
from rtml_core.settings import Settings


def offline_store_resource(settings: Settings) -> OfflineStoreResource:
    """From ``RTML_OFFLINE_URL`` (shown as an env var in the UI) or the embedded SQLite default."""
    if settings.offline_url and os.environ.get("RTML_OFFLINE_URL") == settings.offline_url:
        return OfflineStoreResource(url=dg.EnvVar("RTML_OFFLINE_URL"))
    settings.home.mkdir(parents=True, exist_ok=True)
    return OfflineStoreResource(url=settings.resolved_offline_url)


def market_catalog(settings: Settings) -> list[MarketSource]:
    return load_markets(settings.markets_file) if settings.markets_file else demo_markets()


def build_definitions(settings: Settings, markets: Sequence[MarketSource] | None = None,
                      feature_set: FeatureSet | None = None) -> dg.Definitions:
    """Every asset, check and resource of rtml for ``markets`` (default: the configured catalog)."""
    markets = list(markets) if markets is not None else market_catalog(settings)
    feature_set = feature_set or DEFAULT_FEATURE_SET
    partitions = market_day_partitions(markets)
    raw_trades, validated_candles = build_market_history_assets(markets, partitions)
    (indicator_table,) = build_feature_assets(markets, partitions, feature_set, validated_candles)
    microstructure_table = build_microstructure_asset(markets, partitions, validated_candles)
    training = build_training_assets(markets)
    training_jobs, training_schedules, training_sensors = build_training_schedules(training.partitions)
    offline_store = offline_store_resource(settings)
    return dg.Definitions(
        assets=[raw_trades, validated_candles, indicator_table, microstructure_table, *training.assets,
                online_features_spec(),
                *monitoring_assets],
        asset_checks=[
            *build_market_history_checks(markets, validated_candles),
            *build_feature_checks(markets, indicator_table, feature_set),
            *training.checks,
            *monitoring_checks,
        ],
        schedules=[*training_schedules, *monitoring_schedules, build_market_history_schedule(markets, partitions)],
        sensors=training_sensors,
        jobs=[
            dg.define_asset_job("market_history_job", selection=dg.AssetSelection.groups("market_history"),
                                partitions_def=partitions,
                                description="Import trades and build validated candles for chosen days and markets."),
            dg.define_asset_job("features_job", selection=dg.AssetSelection.groups("features"),
                                partitions_def=partitions,
                                description="Recompute the indicator table for chosen days and markets."),
            *training_jobs,
        ],
        resources={
            "offline_store": offline_store,
            "exchange_history": ExchangeHistoryResource(),
            **training_resources(offline_store, str(settings.resolved_artifacts_dir)),
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(Settings())
