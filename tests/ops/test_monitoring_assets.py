"""The monitoring assets and checks end to end on real BTC-USD candles: a champion trained and
registered, 1,000 predictions served by the real API (create_app) and logged by its PredictionLog,
then joined with reality."""

from __future__ import annotations

import asyncio
import base64
import re
from decimal import Decimal

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from rtml_assets.monitoring import monitoring_assets, monitoring_checks, monitoring_schedules
from rtml_assets.online import online_features_spec
from rtml_assets.resources import OfflineStoreResource
from rtml_assets.training.resources import ModelRegistryResource
from rtml_core.monitoring import psi
from rtml_core.prediction_log import PredictionLog
from rtml_core.registry import ModelRegistry
from rtml_core.schemas import Candle, FeatureRow
from rtml_core.stores.offline import open_offline_store
from rtml_core.training.datasets import build_training_set
from rtml_core.training.pipeline import train_model
from rtml_core.training.tuning import SearchSpace
from tests.training.data import btc_candles, trailing_features

H = 3600
TRAIN_ROWS, ALL_ROWS = 2000, 3000
MARKET = {"exchange": "gym", "symbol": "BTC-USD", "timeframe": "30m"}
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def _candles(frame: pd.DataFrame) -> list[Candle]:
    d = lambda x: Decimal(repr(float(x)))
    return [Candle(start_ns=int(t.value), open=d(o), high=d(h), low=d(lo), close=d(c), volume=d(v), vwap=None,
                   trade_count=0, **MARKET)
            for t, o, h, lo, c, v in frame[["time", "open", "high", "low", "close", "volume"]].itertuples(index=False)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Offline store with real candles and features, a trained champion, and its served predictions."""
    home = tmp_path_factory.mktemp("monitoring")
    url = f"sqlite:///{home / 'offline.sqlite'}"
    store = open_offline_store(url)
    candles = btc_candles(ALL_ROWS)
    store.write_candles(_candles(candles))
    features = trailing_features(candles)
    names = [c for c in features.columns if c != "time"]
    store.register_feature_set("test-v1", names, {"source": "tests.training.data.trailing_features"})
    store.write_features(features, feature_set_version="test-v1", **MARKET)
    training = build_training_set(features.iloc[:TRAIN_ROWS], candles.iloc[:TRAIN_ROWS], timeframe="30m", horizon_s=H,
                                  feature_set_version="test-v1", exchange="gym", symbol="BTC-USD")
    model = train_model(training, "lasso", SearchSpace(n_folds=2, lasso_alphas=(1e-5, 1e-4), nthread=1))
    registry = ModelRegistry(store, home / "artifacts")
    version = registry.register(
        kind=model.kind, artifact=model.artifact, artifact_format=model.artifact_format,
        feature_names=training.feature_names, feature_set_version="test-v1", timeframe="30m", horizon_s=H,
        training_rows=training.row_count, training_set_hash=training.content_hash, metrics=model.metrics,
        residual_std=model.metrics["residual_std"], exchange="gym", symbol="BTC-USD",
        train_start_ns=training.start.value, train_end_ns=training.end.value,
    )
    registry.promote(version.version, "test", force=True)
    champion = registry.load_champion()
    live = features.iloc[TRAIN_ROWS:].reset_index(drop=True)
    predicted = champion.predict(live)
    closes = candles["close"].iloc[TRAIN_ROWS:].to_numpy()
    log = PredictionLog(store, flush_interval_s=0.05)
    served = asyncio.run(_serve_through_the_api(home, registry, log, live, closes))
    log.close()
    assert log.written == len(live) and log.dropped == 0
    np.testing.assert_allclose(served, predicted, rtol=1e-9, atol=1e-15)  # what the API answered
    yield {"url": url, "home": home, "candles": candles, "features": features, "predicted": predicted,
           "version": version, "training": training}
    store.close()


async def _serve_through_the_api(home, registry, log, live: pd.DataFrame, closes: np.ndarray) -> np.ndarray:
    """The real API on the champion: each feature row written to the online store, then one
    POST /v1/predict; the API logs every answer through ``log``. Returns the predicted returns."""
    from litestar.testing import AsyncTestClient

    from api.app import create_app
    from rtml_core.settings import Settings
    from rtml_core.stores.online import open_online_store

    online = open_online_store(f"sqlite:///{home / 'online.sqlite'}")
    settings = Settings(home=home, api_auth_disabled=True, api_serve_stale=True, api_rate_limit=0,
                        api_default_exchange="gym", api_default_timeframe="30m")
    names = [c for c in live.columns if c != "time"]
    answers = []
    async with AsyncTestClient(create_app(settings, online_store=online, registry=registry,
                                          prediction_log=log)) as client:
        for i in range(len(live)):
            values = {name: float(live[name].iloc[i]) for name in names} | {"close": float(closes[i])}
            event_ns = int((live["time"].iloc[i] + pd.Timedelta(minutes=30)).value)
            online.write_rows([FeatureRow(event_time_ns=event_ns, feature_set_version="test-v1", values=values,
                                          **MARKET)])
            reply = await client.post("/v1/predict", json={"symbol": "BTC-USD"})
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["stale"] and body["price"] == closes[i]
            answers.append(body["predicted_return"])
    online.close()
    return np.asarray(answers)



def _definitions(served) -> dg.Definitions:
    offline = OfflineStoreResource(url=served["url"])
    return dg.Definitions(
        assets=[*monitoring_assets, online_features_spec(), dg.AssetSpec("champion_model"),
                dg.AssetSpec("validated_candles"), dg.AssetSpec("indicator_table")],
        asset_checks=monitoring_checks, schedules=monitoring_schedules,
        resources={"offline_store": offline,
                   "model_registry": ModelRegistryResource(offline_store=offline,
                                                           artifacts_dir=str(served["home"] / "artifacts"))},
    )


def _events(result, kind: str) -> dict:
    out = {}
    for event in result.all_events:
        if event.event_type_value == kind:
            data = event.event_specific_data
            if kind == "ASSET_MATERIALIZATION":
                out[data.materialization.asset_key.to_user_string()] = {
                    k: v.value for k, v in data.materialization.metadata.items()}
            else:
                out[data.check_name] = data
    return out


def test_live_model_performance_and_feature_drift(served):
    defs = _definitions(served)
    result = dg.materialize([*defs.assets], selection=["live_model_performance", "feature_drift"],
                            resources=defs.resources, instance=dg.DagsterInstance.ephemeral(),
                            run_config={**QUIET, "ops": {"live_model_performance": {"config": {"lookback_days": 30}}}})
    assert result.success
    meta, checks = _events(result, "ASSET_MATERIALIZATION"), _events(result, "ASSET_CHECK_EVALUATION")
    live = meta["live_model_performance"]
    if live["predictions"] != 1000:  # the default 7-day lookback keeps the newest week only
        raise AssertionError(f"lookback_days=30 should read all 1000 predictions, read {live['predictions']}")
    assert live["predictions"] == 1000 and live["pending"] == 2  # the last two horizons run past the data
    assert live["matured"] + live["pending"] + live["dropped_for_gaps"] == 1000
    # independent: realized = close two candles later, baseline = mean of the 10 closes up to t
    close = served["candles"]["close"].to_numpy()
    index = np.arange(TRAIN_ROWS, ALL_ROWS - 2)
    price, realized = close[index], close[index + 2]
    mean10 = pd.Series(close).rolling(10).mean().to_numpy()[index]
    predicted_price = price * np.exp(served["predicted"][: len(index)])
    mae = np.mean(np.abs(predicted_price - realized))
    # skill on the judged loss (squared error of the log return), as on the holdout
    loss = np.mean((served["predicted"][: len(index)] - np.log(realized / price)) ** 2)
    loss_mean10 = np.mean((np.log(mean10 / price) - np.log(realized / price)) ** 2)
    assert live["live_mae_price"] == pytest.approx(mae, rel=1e-9)
    assert live["live_skill_vs_mean10"] == pytest.approx(1 - loss / loss_mean10, rel=1e-9)
    skill_check = checks["check_live_model_performance_skill"]
    assert skill_check.severity == dg.AssetCheckSeverity.WARN
    assert skill_check.passed == (1 - loss / loss_mean10 >= 0)
    assert "data:image/png;base64," in live["predicted_vs_realized"]

    drift = meta["feature_drift"]
    features, training = served["features"], served["training"]
    in_training = features[(features["time"] >= training.start) & (features["time"] <= training.end)]
    last_day = features.iloc[-48:]  # 30-minute rows in the day ending at the newest one
    assert drift["training_rows"] == len(in_training) and drift["last_day_rows"] == 48
    table = drift["psi_by_feature"]
    expected_vol = psi(in_training["vol_12"], last_day["vol_12"])
    assert f"{expected_vol:.6g}" in table
    drift_check = checks["check_feature_drift_psi"]
    major = [n for n in training.feature_names if psi(in_training[n], last_day[n]) >= 0.25]
    assert drift_check.passed == (not major)
    assert drift["major_shift_features"] == (", ".join(major) or "none")
    assert "data:image/png;base64," in drift["drift"]
    _keep_png(live["predicted_vs_realized"], "live_model_performance.png")
    _keep_png(drift["drift"], "feature_drift.png")


def _keep_png(markdown: str, name: str) -> None:
    """Decode the plot of a metadata entry into tests/ops/artifacts/ (git-ignored) for a person to look at."""
    from tests.ops.test_dagster_ui import ARTIFACTS

    png = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)\)", markdown).group(1))
    assert png.startswith(b"\x89PNG")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    (ARTIFACTS / name).write_bytes(png)


def test_freshness_checks(served):
    defs = _definitions(served)
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("monitoring_freshness_job")
    checks = _events(job.execute_in_process(instance=instance, run_config=QUIET), "ASSET_CHECK_EVALUATION")
    candles = checks["check_validated_candles_fresh"]
    assert not candles.passed and candles.severity == dg.AssetCheckSeverity.WARN  # 2017 candles are history
    assert candles.metadata["stale_markets"].value == 1 and "gym:BTC-USD:30m" in candles.metadata["ages"].value
    online = checks["check_online_features_fresh"]
    assert not online.passed and "never reported" in online.description
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "online_features", metadata={"exchange": "kraken", "symbol": "BTC-USD", "rows_written": 3,
                                     "last_event_time": "2026-01-01T00:00:00+00:00"}))
    checks = _events(job.execute_in_process(instance=instance, run_config=QUIET), "ASSET_CHECK_EVALUATION")
    online = checks["check_online_features_fresh"]
    assert online.passed and "kraken:BTC-USD" in online.metadata["reports"].value
