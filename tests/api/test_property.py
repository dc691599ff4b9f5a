"""Property-based: whatever a client sends to the prediction endpoints, never a 5xx."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from api.app import create_app
from tests.api.conftest import HEADERS, TIMEFRAME, api_settings, feature_row

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
symbols = st.one_of(
    st.sampled_from(["BTC-USD", "ETH-USD", "XBT/USD", "BTCUSDT", "btc-usd", "DOGE-USD", "XXBTZUSD"]),
    st.text(max_size=40),
    st.from_regex(r"[A-Za-z0-9]{1,14}[-/_:][A-Za-z0-9]{1,14}", fullmatch=True),
)
timeframes = st.one_of(st.none(), st.sampled_from([TIMEFRAME, "1m", "0m", "99999999999d"]), st.text(max_size=8))
exchanges = st.one_of(st.none(), st.sampled_from(["kraken", "binance", "KRAKEN"]), st.text(max_size=40))
predict_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"symbol": symbols}, optional={"exchange": exchanges, "timeframe": timeframes,
                                                         "extra": json_values}),
)
batch_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"symbols": st.lists(symbols, max_size=8)},
                          optional={"exchange": exchanges, "timeframe": timeframes}),
)


@pytest.fixture
def client(online_store, registry, champion_version, real_data):
    online_store.write_rows([feature_row(real_data), feature_row(real_data, symbol="ETH-USD", rsi_14=float("nan"))])
    with TestClient(create_app(api_settings(), online_store=online_store, registry=registry)) as test_client:
        yield test_client


SERVER_STATE = {"features_warming_up"}  # ETH-USD's row is mid warm-up: a deliberate, documented 503


def check(response) -> None:
    body = response.json()
    assert response.status_code < 500 or (response.status_code == 503 and body["error"] in SERVER_STATE), \
        response.text
    if response.status_code >= 400:
        assert set(body) == {"status_code", "error", "detail"} and body["status_code"] == response.status_code


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=predict_bodies)
def test_predict_never_answers_5xx(client, body):
    check(client.post("/v1/predict", content=json.dumps(body), headers={**HEADERS, "Content-Type": "application/json"}))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=batch_bodies)
def test_batch_never_answers_5xx(client, body):
    check(client.post("/v1/predict/batch", content=json.dumps(body),
                      headers={**HEADERS, "Content-Type": "application/json"}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(symbol=symbols, raw=st.binary(max_size=64))
def test_features_and_raw_bytes_never_answer_5xx(client, symbol, raw):
    from urllib.parse import quote

    check(client.get(f"/v1/features/{quote(symbol, safe='') or 'x'}", headers=HEADERS))
    check(client.post("/v1/predict", content=raw, headers={**HEADERS, "Content-Type": "application/json"}))
