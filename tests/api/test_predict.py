"""The API through Litestar's AsyncTestClient on both online-store backends, with real models."""

from __future__ import annotations

import math

import numpy as np
import xgboost as xgb
from litestar.testing import AsyncTestClient

from api.app import create_app
from tests.api.conftest import (
    EXCHANGE, FEATURE_SET, FEATURES, HEADERS, HORIZON_S, TIMEFRAME, api_settings, feature_row, phi,
)

PREDICTION_FIELDS = {
    "symbol", "exchange", "timeframe", "model_version", "feature_set_version", "feature_event_time",
    "feature_age_ms", "price", "predicted_price", "predicted_return", "prob_up", "horizon_s",
    "execution",
}


def booster_of(registry, version) -> xgb.Booster:
    return registry.load_model(version).predictor.booster


async def test_predict_answers_every_field_from_the_champion(online_store, registry, champion_version,
                                                             real_data):
    row = feature_row(real_data, -1)
    online_store.write_rows([row])
    async with AsyncTestClient(create_app(api_settings(), online_store=online_store,
                                          registry=registry)) as client:
        response = await client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS)
        assert response.status_code == 200, response.text
        body = response.json()
    assert PREDICTION_FIELDS <= set(body)
    assert body["symbol"] == "BTC-USD" and body["exchange"] == EXCHANGE and body["timeframe"] == TIMEFRAME
    assert body["model_version"] == str(champion_version)
    assert body["feature_set_version"] == FEATURE_SET and body["horizon_s"] == HORIZON_S
    assert 4000 <= body["feature_age_ms"] < 60_000 and body["stale"] is False
    x = np.array([[row.values[n] for n in FEATURES]], dtype=np.float32)
    expected = float(booster_of(registry, champion_version).inplace_predict(x)[0])
    assert abs(body["predicted_return"] - expected) <= 1e-6
    assert body["price"] == row.values["close"]
    assert math.isclose(body["predicted_price"], row.values["close"] * math.exp(body["predicted_return"]))
    residual_std = registry.get(champion_version).residual_std
    assert math.isclose(body["prob_up"], phi(body["predicted_return"] / residual_std), rel_tol=1e-9)
    execution = body["execution"]
    assert execution["side"] in ("buy", "sell", "hold")
    assert execution["atr"] == row.values["atr_14"]
    assert body["inference_path"] == "onnxruntime"


async def test_exchange_spelling_batch_features_models_health_metrics(online_store, registry,
                                                                      champion_version, real_data):
    online_store.write_rows([feature_row(real_data, -1), feature_row(real_data, -2, symbol="ETH-USD")])
    app = create_app(api_settings(), online_store=online_store, registry=registry)
    async with AsyncTestClient(app) as client:
        spelled = await client.post("/v1/predict", json={"symbol": "XBT/USD", "exchange": EXCHANGE,
                                                         "timeframe": TIMEFRAME}, headers=HEADERS)
        assert spelled.status_code == 200 and spelled.json()["symbol"] == "BTC-USD"

        batch = await client.post("/v1/predict/batch", json={"symbols": ["BTC-USD", "ETH-USD", "DOGE-USD"]},
                                  headers=HEADERS)
        assert batch.status_code == 200, batch.text
        body = batch.json()
        assert [p["symbol"] for p in body["predictions"]] == ["BTC-USD"]  # one champion per market
        assert [(e["symbol"], e["status_code"], e["error"]) for e in body["errors"]] == [
            ("ETH-USD", 404, "no_model_for_market"), ("DOGE-USD", 404, "unknown_symbol")]

        features = await client.get("/v1/features/BTC-USD", headers=HEADERS)
        assert features.status_code == 200
        assert features.json()["values"]["rsi_14"] == real_data.features["rsi_14"].iloc[-1]
        assert features.json()["event_time"].endswith("Z")

        models = (await client.get("/v1/models", headers=HEADERS)).json()
        assert models["champion"] == str(champion_version)
        assert [m["version"] for m in models["models"] if m["champion"]] == [str(champion_version)]
        champion = (await client.get("/v1/models/champion", headers=HEADERS)).json()
        assert champion["version"] == str(champion_version)
        assert champion["feature_names"] == list(FEATURES)
        assert champion["inference_path"] == "onnxruntime" and champion["inference_max_abs_diff"] <= 1e-6

        assert (await client.get("/health")).json() == {"status": "ok", "checks": {}, "reasons": []}
        ready = await client.get("/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["reasons"] == []

        metrics = (await client.get("/metrics")).text
        assert 'rtml_api_requests_total{method="POST",route="/v1/predict",status="200"} 1.0' in metrics
        assert 'rtml_api_errors_total{kind="unknown_symbol"} 1.0' in metrics
        assert f'rtml_api_model_info{{inference_path="onnxruntime",kind="xgboost",version="{champion_version}"}} 1.0' in metrics
        assert 'rtml_api_feature_age_seconds{exchange="kraken",symbol="BTC-USD",timeframe="30m"}' in metrics
        assert "rtml_api_request_latency_seconds_bucket" in metrics

        schema = (await client.get("/schema/openapi.json")).json()
        assert {"/v1/predict", "/v1/predict/batch", "/v1/features/{symbol}", "/v1/models",
                "/v1/models/champion"} <= set(schema["paths"])


async def test_lasso_champion_is_served_by_its_own_predict(online_store, registry, real_data):
    from tests.api.conftest import register_lasso

    version = register_lasso(registry, real_data)
    registry.promote(version, "lasso test", force=True)
    row = feature_row(real_data, -3)
    online_store.write_rows([row])
    async with AsyncTestClient(create_app(api_settings(), online_store=online_store,
                                          registry=registry)) as client:
        body = (await client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS)).json()
    loaded = registry.load_model(version)
    expected = float(loaded.predict(np.array([[row.values[n] for n in FEATURES]]))[0])
    assert body["inference_path"] == "python"
    assert body["predicted_return"] == expected


async def test_served_predictions_are_logged_to_the_offline_store(tmp_path, online_store, registry,
                                                                  champion_version, real_data):
    import sqlalchemy as sa

    from rtml_core.prediction_log import read_predictions
    from rtml_core.stores.offline import open_offline_store

    online_store.write_rows([feature_row(real_data, -1)])
    offline_url = f"sqlite:///{tmp_path / 'offline.sqlite'}"
    settings = api_settings(api_log_predictions=True, offline_url=offline_url)
    async with AsyncTestClient(create_app(settings, online_store=online_store, registry=registry)) as client:
        answers = [(await client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS)).json()
                   for _ in range(3)]
    store = open_offline_store(offline_url)  # the log was flushed and closed with the app
    logged = read_predictions(store, symbol="BTC-USD")
    store.close()
    assert len(logged) == 3
    assert list(logged["predicted_return"]) == [a["predicted_return"] for a in answers]
    assert set(logged["model_version"]) == {str(champion_version)}
    assert set(logged["inference_path"]) == {"onnxruntime"}
