"""A model that uses the order-book group gets the live ``ms_*`` values as of the feature row's
close, and is refused (409 microstructure_unavailable) when they are missing or older."""

from __future__ import annotations

import json
from decimal import Decimal

import numpy as np
from litestar.testing import AsyncTestClient

from api.app import create_app
from rtml_core.book import OrderBook, TradeFlow
from rtml_core.features.microstructure import MICROSTRUCTURE
from rtml_core.registry import ModelRegistry
from rtml_core.schemas import BookLevel
from rtml_core.timeframes import timeframe_ns
from rtml_core.training.models import fit_lasso, lasso_to_json
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
)
from tests.conftest import FIXTURES

NAMES = (*FEATURES, *MICROSTRUCTURE.names)


def _capture_values() -> dict[str, float]:
    """The group on the real Kraken book snapshot of the capture (no trades yet)."""
    snapshot = (FIXTURES / "kraken_book_v2_capture.jsonl").read_text().splitlines()[2]
    (data,) = json.loads(snapshot, parse_float=Decimal)["data"]
    book = OrderBook(depth=10)
    book.apply_snapshot([BookLevel(Decimal(str(x["price"])), Decimal(str(x["qty"]))) for x in data["bids"]],
                        [BookLevel(Decimal(str(x["price"])), Decimal(str(x["qty"]))) for x in data["asks"]])
    return MICROSTRUCTURE.values(book, TradeFlow(60 * 1_000_000_000))


def _register(registry: ModelRegistry, data: RealData, book: dict[str, float]) -> int:
    """A Lasso on the indicator features and the group (the group's columns hold the one real book state)."""
    X = np.column_stack([data.features.loc[:, FEATURES].to_numpy(np.float64),
                         np.tile([book[name] for name in MICROSTRUCTURE.names], (len(data.features), 1))])
    model = fit_lasso(X[data.train], data.target[data.train], alpha=1e-5)
    version = registry.register(
        kind="lasso", artifact=lasso_to_json(model, NAMES), artifact_format="json", feature_names=NAMES,
        feature_set_version=FEATURE_SET, timeframe=TIMEFRAME, horizon_s=HORIZON_S, training_rows=data.train.stop,
        training_set_hash="test-ms", metrics={}, residual_std=0.01, exchange=EXCHANGE, symbol="BTC-USD",
    ).version
    registry.promote(version, "order-book model", force=True)
    return version


async def test_order_book_model_gets_the_values_of_its_row_close_and_409_without(
        registry, real_data, online_store) -> None:
    book = _capture_values()
    _register(registry, real_data, book)
    row = feature_row(real_data, -1)
    tf_ns = timeframe_ns(TIMEFRAME)
    row_close_s = row.event_time_ns // 1_000_000_000
    online_store.write_rows([row])
    async with AsyncTestClient(create_app(api_settings(), online_store=online_store, registry=registry)) as client:
        async def predict():
            return await client.post("/v1/predict", json={"symbol": "BTC-USD", "exchange": EXCHANGE,
                                                          "timeframe": TIMEFRAME}, headers=HEADERS)

        missing = await predict()
        assert missing.status_code == 409, missing.text
        assert missing.json()["error"] == "microstructure_unavailable"
        assert "no live microstructure values" in missing.json()["detail"]

        older = MICROSTRUCTURE.live_fields(book, (row_close_s - tf_ns // 1_000_000_000) * 1_000_000_000)
        online_store.write_live(EXCHANGE, "BTC-USD", row.event_time_ns, older)
        stale = await predict()
        assert stale.status_code == 409 and stale.json()["error"] == "microstructure_unavailable"
        assert "before the feature row's close" in stale.json()["detail"]

        undefined = MICROSTRUCTURE.live_fields({**book, "ms_spread_bps": float("nan")}, row_close_s * 1_000_000_000)
        online_store.write_live(EXCHANGE, "BTC-USD", row.event_time_ns, undefined)
        nan = await predict()
        assert nan.status_code == 409 and "ms_spread_bps" in nan.json()["detail"]

        online_store.write_live(EXCHANGE, "BTC-USD", row.event_time_ns,
                                MICROSTRUCTURE.live_fields(book, row_close_s * 1_000_000_000))
        served = await predict()
        assert served.status_code == 200, served.text
        assert served.json()["model_kind"] == "lasso"
        features = (await client.get("/v1/features/BTC-USD", params={"exchange": EXCHANGE, "timeframe": TIMEFRAME},
                                     headers=HEADERS)).json()
        assert features["microstructure"] == book
