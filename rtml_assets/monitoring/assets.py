"""Monitoring assets (group ``monitoring``): the served models against reality, and feature drift.

- ``live_model_performance``: the predictions the API served (table ``predictions``, written by
  ``rtml_core.prediction_log.PredictionLog``) joined with the prices realized after their
  horizon (candles in the offline store): MAE, directional accuracy and skill against both
  baselines by model version, with a plot; its check warns when the champion's live skill
  falls below the mean-of-last-10 baseline.
- ``feature_drift``: PSI of each of the champion's features between its training set and the
  last day of feature rows (the stream's offline log of what was served online), and per day
  over the last week; its check warns on a major shift (PSI >= 0.25).
"""


import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from rtml_assets.resources import OfflineStoreResource
from rtml_assets.training.resources import ModelRegistryResource
from rtml_core.monitoring import PSI_MAJOR, join_realized, live_metrics
from rtml_core.monitoring import feature_drift as psi_by_feature
from rtml_core.monitoring.drift import psi
from rtml_core.monitoring.plots import drift_png, live_performance_png
from rtml_core.prediction_log import newest_prediction_ns, read_predictions
from rtml_core.timeframes import NS, timeframe_seconds
from rtml_core.training.datasets import BASELINE_WINDOW
from rtml_core.training.plots import markdown_image

GROUP = "monitoring"
OWNERS = ["team:ml"]
DAY_NS = 86_400 * NS
CHAMPION_MODEL = dg.AssetKey("champion_model")
VALIDATED_CANDLES = dg.AssetKey("validated_candles")
INDICATOR_TABLE = dg.AssetKey("indicator_table")
ONLINE_FEATURES = dg.AssetKey("online_features")


class LivePerformanceConfig(dg.Config):
    lookback_days: float = Field(default=7.0, gt=0, description="Predictions whose feature time is within this "
                                 "many days of the newest logged one (a replay's old clock works too).")
    min_predictions: int = Field(default=30, ge=1, description="Matured predictions the check needs for a verdict.")
    skill_margin: float = Field(default=0.0, description="The check warns when live skill vs the mean-of-last-10 "
                                "baseline is below this.")


class DriftConfig(dg.Config):
    bins: int = Field(default=10, ge=2, description="Quantile bins of the training sample.")
    days: int = Field(default=7, ge=1, description="Days of PSI over time in the plot.")


def md_table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".6g")


def _float(value) -> dg.MetadataValue:
    value = float(value)
    return dg.MetadataValue.float(value) if np.isfinite(value) else dg.MetadataValue.text(str(value))


def join_logged_predictions(store, predictions: pd.DataFrame):
    """Every market's predictions joined with its candles: (joined frame, pending, gaps)."""
    frames, pending, gaps = [], 0, 0
    for (exchange, symbol, timeframe), group in predictions.groupby(["exchange", "symbol", "timeframe"]):
        step = timeframe_seconds(timeframe) * NS
        start = int(group["feature_time_ns"].min()) - (BASELINE_WINDOW + 1) * step
        end = int((group["feature_time_ns"] + group["horizon_s"] * NS).max()) + step
        candles = store.read_candles(exchange, symbol, timeframe, start, end)
        joined = join_realized(group, candles, timeframe)
        frames.append(joined.frame)
        pending, gaps = pending + joined.pending, gaps + joined.gaps
    frame = pd.concat(frames, ignore_index=True) if frames else predictions.iloc[0:0]
    return frame, pending, gaps


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"python", "pandas"},
    deps=[CHAMPION_MODEL, VALIDATED_CANDLES],
    check_specs=[dg.AssetCheckSpec(
        "check_live_model_performance_skill", asset="live_model_performance",
        description="The champion's live skill against the mean-of-last-10 baseline is not below the margin.",
    )],
    description="Served predictions joined with the prices realized after their horizon: live MAE, directional "
    "accuracy and skill against the baselines by model version, with a plot.",
)
def live_model_performance(context: dg.AssetExecutionContext, config: LivePerformanceConfig,
                           offline_store: OfflineStoreResource, model_registry: ModelRegistryResource):
    store = offline_store.get_store()
    champion = model_registry.get_registry().champion()
    newest = newest_prediction_ns(store)
    if newest is None:
        predictions = read_predictions(store, start_ns=0, end_ns=0)
    else:
        predictions = read_predictions(store, start_ns=newest - int(config.lookback_days * DAY_NS))
    joined, pending, gaps = join_logged_predictions(store, predictions)
    table = live_metrics(joined)
    metadata: dict[str, object] = {
        "predictions": dg.MetadataValue.int(len(predictions)),
        "matured": dg.MetadataValue.int(len(joined)),
        "pending": dg.MetadataValue.int(pending),
        "dropped_for_gaps": dg.MetadataValue.int(gaps),
        "champion_version": str(champion.version) if champion else "none",
        "by_model_version": dg.MetadataValue.md(md_table(table) if len(table) else "no matured predictions yet"),
    }
    if len(joined):
        metadata["predicted_vs_realized"] = dg.MetadataValue.md(
            markdown_image(live_performance_png(joined), "predicted vs realized, live"))
    judged = table[table["model_version"] == str(champion.version)] if champion else table.iloc[0:0]
    if champion is None and len(table):
        judged = table.tail(1)  # no champion recorded: the newest version that served
    check_metadata = dict(metadata)
    check_metadata.pop("predicted_vs_realized", None)
    if len(judged) and int(judged["n"].iloc[0]) >= config.min_predictions:
        row = judged.iloc[0]
        for key in ("mae_price", "directional_accuracy", "skill_vs_mean10", "skill_vs_zero"):
            metadata[f"live_{key}"] = check_metadata[f"live_{key}"] = _float(row[key])
        if champion is not None and "skill_vs_mean10" in champion.metrics:
            metadata["holdout_skill_vs_mean10"] = check_metadata["holdout_skill_vs_mean10"] = _float(
                champion.metrics["skill_vs_mean10"])
        passed = bool(row["skill_vs_mean10"] >= config.skill_margin)
        verdict = (f"model {row['model_version']}: live skill vs the mean-of-last-10 baseline "
                   f"{row['skill_vs_mean10']:.4f} over {int(row['n'])} predictions is "
                   + ("at or above" if passed else "below") + f" the margin {config.skill_margin}")
    else:
        n = int(judged["n"].iloc[0]) if len(judged) else 0
        passed, verdict = True, (f"no verdict yet: {n} matured predictions of the champion "
                                 f"(the check needs {config.min_predictions})")
    context.log.info(verdict)
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[dg.AssetCheckResult(
            check_name="check_live_model_performance_skill", passed=passed, severity=dg.AssetCheckSeverity.WARN,
            description=verdict, metadata={"verdict": verdict, **check_metadata},
        )],
    )


def drift_over_days(expected: pd.DataFrame, recent: pd.DataFrame, names, last_ns: int, days: int,
                    bins: int) -> pd.DataFrame:
    """Max and median PSI over ``names`` for each of the ``days`` days ending at ``last_ns``."""
    rows = []
    times = recent["time"].astype("datetime64[ns, UTC]").to_numpy("datetime64[ns]").astype(np.int64)
    for back in range(days - 1, -1, -1):
        end = last_ns - back * DAY_NS
        window = recent[(times > end - DAY_NS) & (times <= end)]
        values = []
        for name in names:
            a, e = window[name].to_numpy(np.float64), expected[name].to_numpy(np.float64)
            if np.isfinite(a).any() and np.isfinite(e).any():
                values.append(psi(e, a, bins))
        if values:
            rows.append({"day": pd.Timestamp(end, unit="ns", tz="UTC"), "max_psi": float(np.max(values)),
                         "median_psi": float(np.median(values)), "rows": len(window)})
    return pd.DataFrame(rows, columns=["day", "max_psi", "median_psi", "rows"])


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"python", "pandas"},
    deps=[CHAMPION_MODEL, INDICATOR_TABLE, ONLINE_FEATURES],
    check_specs=[dg.AssetCheckSpec(
        "check_feature_drift_psi", asset="feature_drift",
        description="No feature of the champion shifted by PSI >= 0.25 in the last day against its training set.",
    )],
    description="Population stability index of each of the champion's features between its training set and "
    "the last day of feature rows (the sidecar's offline log of the online features), with PSI per day.",
)
def feature_drift(context: dg.AssetExecutionContext, config: DriftConfig, offline_store: OfflineStoreResource,
                  model_registry: ModelRegistryResource):
    store = offline_store.get_store()
    champion = model_registry.get_registry().champion()
    if champion is None:
        raise dg.Failure(description="no champion model yet: materialize champion_model (training group) first")
    if not champion.exchange or not champion.symbol or champion.train_start_ns is None:
        raise dg.Failure(description=f"champion model {champion.version} records no market or training range")
    market = (champion.exchange, champion.symbol, champion.timeframe, champion.feature_set_version)
    names = list(champion.feature_names)
    expected = store.read_features(*market, champion.train_start_ns, champion.train_end_ns + 1)
    inventory = store.markets()
    series = inventory[(inventory["kind"] == "features") & (inventory["exchange"] == market[0])
                       & (inventory["symbol"] == market[1]) & (inventory["timeframe"] == market[2])
                       & (inventory["feature_set_version"] == market[3])]
    if expected.empty or series.empty:
        raise dg.Failure(description=f"no feature rows of {market} in the offline store")
    last_ns = int(series["last"].iloc[0].value)
    recent = store.read_features(*market, last_ns - config.days * DAY_NS + 1, last_ns + 1)
    recent_times = recent["time"].astype("datetime64[ns, UTC]").to_numpy("datetime64[ns]").astype(np.int64)
    last_day = recent[recent_times > last_ns - DAY_NS]
    table = psi_by_feature(expected, last_day, names, config.bins)
    over_time = drift_over_days(expected, recent, names, last_ns, config.days, config.bins)
    major = table[table["psi"] >= PSI_MAJOR]["feature"].tolist()
    overlap = last_ns - DAY_NS < champion.train_end_ns
    summary = {
        "champion_version": str(champion.version),
        "market": " ".join(market),
        "training_rows": dg.MetadataValue.int(len(expected)),
        "last_day_rows": dg.MetadataValue.int(len(last_day)),
        "last_day_end": pd.Timestamp(last_ns, unit="ns", tz="UTC").isoformat(),
        "last_day_overlaps_training": dg.MetadataValue.bool(bool(overlap)),
        "max_psi": _float(table["psi"].max()) if table["psi"].notna().any() else "unknown",
        "major_shift_features": ", ".join(major) or "none",
        "psi_by_feature": dg.MetadataValue.md(md_table(table.sort_values("psi", ascending=False))),
    }
    verdict = (f"{len(major)} of {len(names)} features shifted by PSI >= {PSI_MAJOR}: {', '.join(major)}" if major
               else f"no feature of {len(names)} shifted by PSI >= {PSI_MAJOR}")
    context.log.info(verdict)
    return dg.MaterializeResult(
        metadata={**summary, "drift": dg.MetadataValue.md(markdown_image(drift_png(table, over_time), "PSI")),
                  "psi_by_day": dg.MetadataValue.md(md_table(over_time) if len(over_time) else "none")},
        check_results=[dg.AssetCheckResult(
            check_name="check_feature_drift_psi", passed=not major, severity=dg.AssetCheckSeverity.WARN,
            description=verdict, metadata={"verdict": verdict, **summary},
        )],
    )


MONITORING_ASSETS = [live_model_performance, feature_drift]
