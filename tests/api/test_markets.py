"""One champion per market: each market is served by its own champion (a model or its zero-return
baseline, whatever kind), a market without a model is 404 ``no_model_for_market``, and prob_up
is the champion's calibrated probability."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from litestar.testing import AsyncTestClient

from api.app import create_app
from rtml_core.registry import ModelRegistry
from rtml_core.training.calibration import fit_calibrator
from rtml_core.training.models import baseline_artifact, fit_lasso, lasso_to_json
from tests.api.conftest import (
    EXCHANGE,
    FEATURE_SET,
    FEATURES,
    HEADERS,
    HORIZON_S,
    TIMEFRAME,
    RealData,
    api_settings,
    feature_row,
    register_xgboost,
)


def _calibration(data: RealData, predicted: np.ndarray) -> dict:
    """A calibrator fitted on the training rows' predictions (the API only applies it)."""
    natr = data.features["natr_14"].to_numpy()[data.train]
    return fit_calibrator(predicted, data.target[data.train], natr, "natr_14").to_dict()


def _baseline(registry: ModelRegistry, data: RealData, symbol: str) -> int:
    meta = registry.register(
        kind="baseline_zero", artifact=baseline_artifact("baseline_zero"), artifact_format="json", feature_names=(),
        feature_set_version=FEATURE_SET, timeframe=TIMEFRAME, horizon_s=HORIZON_S, training_rows=data.train.stop,
        training_set_hash=f"baseline-{symbol}", metrics={}, residual_std=float(np.std(data.target)),
        exchange=EXCHANGE, symbol=symbol, calibration=_calibration(data, np.zeros(data.train.stop)),
        served_fit="a baseline without fitted parameters",
    )
    registry.promote(meta.version, f"first champion of {symbol}: the zero-return baseline")
    return meta.version


def _lasso(registry: ModelRegistry, data: RealData, symbol: str) -> int:
    X = data.features.loc[:, FEATURES].to_numpy(np.float64)
    model = fit_lasso(X[data.train], data.target[data.train], alpha=1e-5)
    residual = data.target[data.holdout] - model.predict(X[data.holdout])
    return registry.register(
        kind="lasso", artifact=lasso_to_json(model, FEATURES), artifact_format="json", feature_names=FEATURES,
        feature_set_version=FEATURE_SET, timeframe=TIMEFRAME, horizon_s=HORIZON_S, training_rows=data.train.stop,
        training_set_hash=f"lasso-{symbol}", metrics={}, residual_std=float(np.std(residual)),
        exchange=EXCHANGE, symbol=symbol, calibration=_calibration(data, model.predict(X[data.train])),
    ).version


async def _until(client, predicate, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while True:
        body = (await client.post("/v1/predict", json={"symbol": "ETH-USD"}, headers=HEADERS)).json()
        if predicate(body) or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.02)


async def test_each_market_is_served_by_its_own_champion_and_others_are_404(online_store, registry, real_data):
    _baseline(registry, real_data, "BTC-USD")
    btc = _lasso(registry, real_data, "BTC-USD")
    registry.promote(btc, "serve the lasso in this test (not judged here)", force=True)
    eth = _baseline(registry, real_data, "ETH-USD")
    rows = {symbol: feature_row(real_data, -1, symbol=symbol) for symbol in ("BTC-USD", "ETH-USD", "DOGE-USD")}
    online_store.write_rows(list(rows.values()))

    app = create_app(api_settings(api_model_poll_s=0.02), online_store=online_store, registry=registry)
    async with AsyncTestClient(app) as client:
        body = (await client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS)).json()
        loaded = registry.load_model(btc)
        expected = float(loaded.predict(np.array([[rows["BTC-USD"].values[n] for n in FEATURES]]))[0])
        assert body["model_version"] == str(btc) and body["model_kind"] == "lasso"
        assert abs(body["predicted_return"] - expected) <= 1e-12
        calibrator = registry.get(btc).calibration
        z = (calibrator["a"] + calibrator["b"] * expected / calibrator["scale"]
             + calibrator["c"] * np.log1p(rows["BTC-USD"].values["natr_14"] / calibrator["activity_median"]))
        assert abs(body["prob_up"] - 1 / (1 + np.exp(-z))) <= 1e-12

        body = (await client.post("/v1/predict", json={"symbol": "ETH-USD"}, headers=HEADERS)).json()
        assert body["model_version"] == str(eth) and body["model_kind"] == "baseline_zero"
        assert body["predicted_return"] == 0.0 and body["predicted_price"] == body["price"]
        assert body["execution"]["side"] == "hold" and "baseline" in body["execution"]["reason"]
        base = registry.get(eth).calibration
        z = base["a"] + base["c"] * np.log1p(rows["ETH-USD"].values["natr_14"] / base["activity_median"])
        assert abs(body["prob_up"] - 1 / (1 + np.exp(-z))) <= 1e-12 and 0 < body["prob_up"] < 1

        missing = await client.post("/v1/predict", json={"symbol": "DOGE-USD"}, headers=HEADERS)
        assert missing.status_code == 404 and missing.json()["error"] == "no_model_for_market"
        assert "kraken DOGE-USD 30m" in missing.json()["detail"]
        batch = (await client.post("/v1/predict/batch", json={"symbols": ["BTC-USD", "DOGE-USD", "ETH-USD"]},
                                   headers=HEADERS)).json()
        assert [(p["symbol"], p["model_version"]) for p in batch["predictions"]] == [("BTC-USD", str(btc)),
                                                                                     ("ETH-USD", str(eth))]
        assert [(e["symbol"], e["error"]) for e in batch["errors"]] == [("DOGE-USD", "no_model_for_market")]

        listed = (await client.get("/v1/models", params={"symbol": "ETH-USD"}, headers=HEADERS)).json()
        assert [(m["version"], m["kind"], m["symbol"]) for m in listed["models"]] == [(str(eth), "baseline_zero",
                                                                                     "ETH-USD")]
        assert listed["champion"] == str(eth)
        every = (await client.get("/v1/models", headers=HEADERS)).json()
        assert {m["version"] for m in every["models"] if m["champion"]} == {str(btc), str(eth)}
        champion = (await client.get("/v1/models/champion", headers=HEADERS,
                                     params={"exchange": EXCHANGE, "symbol": "ETH-USD", "timeframe": TIMEFRAME})).json()
        assert (champion["version"], champion["kind"], champion["exchange"], champion["symbol"],
                champion["timeframe"], champion["horizon_s"]) == (str(eth), "baseline_zero", EXCHANGE, "ETH-USD",
                                                                  TIMEFRAME, HORIZON_S)
        assert champion["calibration"]["activity"] == "natr_14"
        none = await client.get("/v1/models/champion", params={"symbol": "DOGE-USD"}, headers=HEADERS)
        assert none.status_code == 404 and none.json()["error"] == "no_model_for_market"

        # a promotion in one market swaps that market only
        xgb = register_xgboost(registry, real_data, symbol="ETH-USD")
        registry.promote(xgb, "an ETH-USD model, forced in this test", force=True)
        body = await _until(client, lambda b: b["model_version"] == str(xgb))
        assert body["model_kind"] == "xgboost" and body["inference_path"] == "onnxruntime"
        again = (await client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS)).json()
        assert again["model_version"] == str(btc)
        registry.promote(eth, "rollback to the baseline")
        body = await _until(client, lambda b: b["model_version"] == str(eth))
        assert body["model_kind"] == "baseline_zero"
