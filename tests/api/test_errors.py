"""Bad input is a 4xx with a clear message; unreachable stores are 503; never a stack trace."""

from __future__ import annotations

import asyncio
import math
import shutil
import time

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from rtml_core.errors import RtmlError
from rtml_core.registry import ModelRegistry
from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.online import open_online_store
from tests.api.conftest import (
    API_KEY, FEATURE_SET, HEADERS, api_settings, feature_row, register_xgboost,
)


def assert_error(response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status and body["error"] == kind, body
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body


@pytest.fixture
async def client(online_store, registry, champion_version, real_data):
    online_store.write_rows([feature_row(real_data)])
    async with AsyncTestClient(create_app(api_settings(api_max_body_bytes=2048), online_store=online_store,
                                          registry=registry)) as test_client:
        yield test_client


async def test_bad_requests_are_4xx_with_clear_messages(client):
    async def post(body=None, content=None, headers=HEADERS, path="/v1/predict"):
        return await client.post(path, json=body, content=content,
                                 headers={**headers, "Content-Type": "application/json"})

    assert "DOGE-USD" in assert_error(await post({"symbol": "DOGE-USD"}), 404, "unknown_symbol")["detail"]
    assert_error(await post(content=b"{not json"), 400, "invalid_request")
    assert "symbol" in assert_error(await post({"symbol": 42}), 400, "invalid_request")["detail"]
    assert_error(await post({}), 400, "invalid_request")
    assert_error(await post({"symbol": "BTC-USD", "extra": 1}), 400, "invalid_request")
    assert_error(await post({"symbol": "BTC-USD", "timeframe": "7x"}), 400, "invalid_request")
    assert_error(await post({"symbol": "BTC-USD-EUR"}), 400, "invalid_request")
    assert_error(await post(["BTC-USD"]), 400, "invalid_request")
    # the champion is BTC-USD 30m's; BTC-USD 1m has neither a model nor an online row
    assert_error(await post({"symbol": "BTC-USD", "timeframe": "1m"}), 404, "unknown_symbol")
    assert_error(await post({"symbol": "B" * 4000}), 413, "payload_too_large")
    assert_error(await post({"symbols": ["BTC-USD"] * 60}, path="/v1/predict/batch"), 400, "batch_too_large")
    assert_error(await post({"symbols": []}, path="/v1/predict/batch"), 400, "invalid_request")
    assert_error(await client.get("/v1/predict", headers=HEADERS), 405, "method_not_allowed")
    assert_error(await client.get("/v1/nothing", headers=HEADERS), 404, "not_found")
    assert_error(await client.get("/v1/features/NOT!!", headers=HEADERS), 400, "invalid_symbol")


async def test_api_key_required_and_compared(client):
    assert_error(await client.post("/v1/predict", json={"symbol": "BTC-USD"}), 401, "unauthorized")
    wrong = {"X-API-Key": API_KEY[:-1] + "x"}
    assert_error(await client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=wrong), 401,
                 "unauthorized")
    assert (await client.get("/health")).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'rtml_api_requests_total{method="POST",route="/v1/predict",status="401"} 2.0' in metrics


def test_no_keys_and_auth_not_disabled_refuses_to_start():
    with pytest.raises(RtmlError, match="RTML_API_KEYS"):
        create_app(api_settings(api_keys=""))


def test_keys_shorter_than_16_characters_refuse_to_start_and_are_never_printed():
    with pytest.raises(RtmlError, match="number 2 of 2 are shorter than 16") as refused:
        create_app(api_settings(api_keys=f"{API_KEY},short-secret"))
    assert "short-secret" not in str(refused.value)
    create_app(api_settings(api_keys="short", api_auth_disabled=True))  # the demo's auth-disabled mode


async def test_auth_disabled_serves_without_key(online_store, registry, champion_version, real_data):
    online_store.write_rows([feature_row(real_data)])
    app = create_app(api_settings(api_keys="", api_auth_disabled=True), online_store=online_store,
                     registry=registry)
    async with AsyncTestClient(app) as test_client:
        assert (await test_client.post("/v1/predict", json={"symbol": "BTC-USD"})).status_code == 200


async def test_rate_limit_answers_429_per_key_and_window(online_store, registry, champion_version, real_data):
    online_store.write_rows([feature_row(real_data)])
    other = {"X-API-Key": "second-key-0123456789"}
    app = create_app(api_settings(api_rate_limit=5, api_keys=f"{API_KEY},second-key-0123456789"),
                     online_store=online_store, registry=registry)
    async with AsyncTestClient(app) as test_client:
        async def post(headers):
            return await test_client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=headers)

        await asyncio.sleep(1 - time.time() % 1)  # start at the beginning of a one-second window
        codes = [(await post(HEADERS)).status_code for _ in range(8)]
        assert codes[:5] == [200] * 5 and codes[5:] == [429] * 3
        limited = await post(HEADERS)
        assert_error(limited, 429, "rate_limited")
        assert limited.headers["ratelimit-limit"] == "5"
        assert (await post(other)).status_code == 200  # limits are per API key
        await asyncio.sleep(1.05)
        assert (await post(HEADERS)).status_code == 200  # a new window


async def test_stale_features_refused_or_flagged(online_store, registry, champion_version, real_data):
    online_store.write_rows([feature_row(real_data, age_s=3 * 3600)])
    async with AsyncTestClient(create_app(api_settings(), online_store=online_store,
                                          registry=registry)) as test_client:
        body = assert_error(await test_client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS),
                            503, "stale_features")
        assert "old" in body["detail"] and "limit" in body["detail"]
    app = create_app(api_settings(api_serve_stale=True), online_store=online_store, registry=registry)
    async with AsyncTestClient(app) as test_client:
        response = await test_client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS)
        assert response.status_code == 200 and response.json()["stale"] is True


async def test_feature_set_mismatch_and_warm_up_refused(online_store, registry, champion_version, real_data):
    online_store.write_rows([feature_row(real_data, version="another-set")])
    async with AsyncTestClient(create_app(api_settings(), online_store=online_store,
                                          registry=registry)) as test_client:
        body = assert_error(await test_client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS),
                            409, "feature_set_mismatch")
        assert FEATURE_SET in body["detail"] and "another-set" in body["detail"]
        online_store.write_rows([feature_row(real_data, age_s=1.0, rsi_14=math.nan)])  # the champion's market
        body = assert_error(await test_client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS),
                            503, "features_warming_up")
        assert "rsi_14" in body["detail"]


async def test_online_store_unreachable_is_503(registry, champion_version):
    dead = open_online_store("redis://127.0.0.1:1/0", "rtmltest-dead")
    try:
        async with AsyncTestClient(create_app(api_settings(), online_store=dead, registry=registry)) as test_client:
            body = assert_error(await test_client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS),
                                503, "online_store_unavailable")
            assert "unreachable" in body["detail"]
            ready = await test_client.get("/ready")
            assert ready.status_code == 503 and ready.json()["checks"]["online_store"] != "ok"
            assert ready.json()["reasons"] == ["online_store_unavailable"]
            assert "127.0.0.1" not in ready.text
    finally:
        dead.close()


async def test_registry_unreachable_is_503_and_no_champion_is_503(tmp_path, online_store, real_data):
    path = tmp_path / "reg.sqlite"
    registry = ModelRegistry(open_offline_store(f"sqlite:///{path}"), tmp_path / "artifacts", owns_store=True)
    register_xgboost(registry, real_data)
    registry.store.close()  # no pooled connection keeps the file
    path.unlink()
    path.mkdir()  # a directory where the database was: every query fails
    online_store.write_rows([feature_row(real_data)])
    async with AsyncTestClient(create_app(api_settings(), online_store=online_store,
                                          registry=registry)) as test_client:
        assert_error(await test_client.get("/v1/models", headers=HEADERS), 503, "registry_unavailable")
        assert_error(await test_client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS),
                     503, "no_champion")
        ready = await test_client.get("/ready")
        assert ready.status_code == 503 and "not loaded" in ready.json()["checks"]["champion"]
        assert set(ready.json()["reasons"]) == {"registry_unavailable", "no_champion"}
        assert str(tmp_path) not in ready.text and "sqlite" not in ready.text.lower()
    shutil.rmtree(path)


async def test_rate_limit_exclusions_are_anchored(online_store, registry, champion_version, real_data):
    app = create_app(api_settings(api_rate_limit=5), online_store=online_store, registry=registry)
    async with AsyncTestClient(app) as test_client:
        await asyncio.sleep(1 - time.time() % 1)  # start at the beginning of a one-second window
        codes = [(await test_client.get("/v1/features/healthy-usd", headers=HEADERS)).status_code
                 for _ in range(8)]
        assert codes == [404] * 5 + [429] * 3  # a path containing "health" is still limited
        for path in ("/health", "/ready", "/metrics", "/schema/openapi.json"):
            assert {(await test_client.get(path)).status_code for _ in range(8)} <= {200, 503}, path
