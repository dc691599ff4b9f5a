"""Freshness checks: are the candles and the online features still arriving?

- ``check_validated_candles_fresh`` (on ``validated_candles``): the newest closed candle of each
  market in the offline store against the wall clock (the stream's offline log keeps it fresh;
  imported history is old by nature and shows as such), a table of ages in its metadata.
- ``check_online_features_fresh`` (on the sidecar's ``online_features`` external asset): the
  newest report of each streamed market in the Dagster event log (the sidecar reports its rows
  through Dagster's API), beside the asset's own ``FreshnessPolicy``.

``monitoring_freshness_schedule`` runs both every 5 minutes (a job of checks only).
"""


import time

import dagster as dg
import pandas as pd
from pydantic import Field

from rtml_assets.monitoring.assets import ONLINE_FEATURES, VALIDATED_CANDLES, md_table
from rtml_assets.resources import OfflineStoreResource
from rtml_core.timeframes import timeframe_seconds


class CandleFreshnessConfig(dg.Config):
    max_age_minutes: float = Field(default=10.0, gt=0, description="Oldest acceptable newest-candle close.")
    markets: list[str] = Field(default_factory=list, description="'exchange:symbol:timeframe' to check; "
                               "empty = every market with candles.")


def candle_ages(inventory: pd.DataFrame, now_ns: int) -> pd.DataFrame:
    """Per candle series: market, newest candle close (UTC) and its age in minutes."""
    candles = inventory[inventory["kind"] == "candles"]
    rows = []
    for row in candles.itertuples():
        close = row.last + pd.Timedelta(seconds=timeframe_seconds(row.timeframe))
        rows.append({"market": f"{row.exchange}:{row.symbol}:{row.timeframe}", "newest_close": close.isoformat(),
                     "age_minutes": (now_ns - close.value) / 60e9, "rows": int(row.rows)})
    return pd.DataFrame(rows, columns=["market", "newest_close", "age_minutes", "rows"])


@dg.asset_check(
    asset=VALIDATED_CANDLES,
    description="The newest candle of each market closed within max_age_minutes of now (WARN otherwise).",
)
def check_validated_candles_fresh(config: CandleFreshnessConfig,
                                  offline_store: OfflineStoreResource) -> dg.AssetCheckResult:
    ages = candle_ages(offline_store.get_store().markets(), time.time_ns())
    if config.markets:
        ages = ages[ages["market"].isin(config.markets)]
    stale = ages[ages["age_minutes"] > config.max_age_minutes]
    if ages.empty:
        verdict = "no candles in the offline store"
    elif stale.empty:
        verdict = f"all {len(ages)} markets have a candle closed in the last {config.max_age_minutes:g} min"
    else:
        verdict = (f"{len(stale)} of {len(ages)} markets have no candle closed in the last "
                   f"{config.max_age_minutes:g} min (freshest {ages['age_minutes'].min():,.0f} min old)")
    return dg.AssetCheckResult(
        passed=bool(len(ages) and stale.empty), severity=dg.AssetCheckSeverity.WARN, description=verdict,
        metadata={
            "verdict": verdict,
            "max_age_minutes": dg.MetadataValue.float(config.max_age_minutes),
            "markets_checked": dg.MetadataValue.int(len(ages)),
            "stale_markets": dg.MetadataValue.int(len(stale)),
            "ages": dg.MetadataValue.md(md_table(ages.sort_values("age_minutes")) if len(ages) else "none"),
        },
    )


class OnlineFreshnessConfig(dg.Config):
    max_age_minutes: float = Field(default=5.0, gt=0, description="Oldest acceptable sidecar report per market.")


def online_report_ages(records, now_s: float) -> pd.DataFrame:
    """The newest sidecar report per market from ``online_features`` materialization records."""
    newest: dict[tuple[str, str], dict] = {}
    for record in records:
        metadata = record.asset_materialization.metadata if record.asset_materialization else {}
        values = {key: getattr(value, "value", value) for key, value in metadata.items()}
        key = (str(values.get("exchange", "?")), str(values.get("symbol", "?")))
        if key not in newest or record.timestamp > newest[key]["reported_at"]:
            newest[key] = {"market": f"{key[0]}:{key[1]}", "reported_at": record.timestamp,
                           "last_event_time": str(values.get("last_event_time", "")),
                           "rows_written": values.get("rows_written")}
    frame = pd.DataFrame(list(newest.values()), columns=["market", "reported_at", "last_event_time", "rows_written"])
    frame["report_age_minutes"] = (now_s - frame["reported_at"]) / 60
    frame["reported_at"] = pd.to_datetime(frame["reported_at"], unit="s", utc=True).map(lambda t: t.isoformat())
    return frame


@dg.asset_check(
    asset=ONLINE_FEATURES,
    description="The sidecar reported new online feature rows of every market it streams within max_age_minutes.",
)
def check_online_features_fresh(context: dg.AssetCheckExecutionContext,
                                config: OnlineFreshnessConfig) -> dg.AssetCheckResult:
    result = context.instance.fetch_materializations(ONLINE_FEATURES, limit=500)
    ages = online_report_ages(result.records, time.time())
    stale = ages[ages["report_age_minutes"] > config.max_age_minutes]
    if ages.empty:
        verdict = "the sidecar never reported online_features (is `rtml stream` running with RTML_STREAM_DAGSTER?)"
    elif stale.empty:
        verdict = f"all {len(ages)} streamed markets reported in the last {config.max_age_minutes:g} min"
    else:
        verdict = (f"{len(stale)} of {len(ages)} streamed markets did not report in the last "
                   f"{config.max_age_minutes:g} min: {', '.join(stale['market'])}")
    return dg.AssetCheckResult(
        passed=bool(len(ages) and stale.empty), severity=dg.AssetCheckSeverity.WARN, description=verdict,
        metadata={
            "verdict": verdict,
            "max_age_minutes": dg.MetadataValue.float(config.max_age_minutes),
            "markets": dg.MetadataValue.int(len(ages)),
            "stale_markets": dg.MetadataValue.int(len(stale)),
            "reports": dg.MetadataValue.md(md_table(ages) if len(ages) else "none"),
        },
    )


MONITORING_CHECKS = [check_validated_candles_fresh, check_online_features_fresh]
freshness_job = dg.define_asset_job(
    "monitoring_freshness_job", selection=dg.AssetSelection.checks(*MONITORING_CHECKS),
    description="The freshness checks of the candles and the online features, without materializing anything.",
)
MONITORING_SCHEDULES = [
    dg.ScheduleDefinition(name="monitoring_freshness_schedule", job=freshness_job, cron_schedule="*/5 * * * *",
                          description="Run the freshness checks every 5 minutes."),
]
MONITORING_JOBS = [freshness_job]
