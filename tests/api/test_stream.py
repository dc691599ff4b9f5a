"""WebSocket /v1/predictions/stream pushes a prediction for each newly published feature row."""

from __future__ import annotations

import asyncio
import pytest
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import AsyncTestClient

from api.app import create_app
from tests.api.conftest import HEADERS, api_settings, feature_row


async def test_stream_pushes_a_prediction_per_feature_update(online_store, registry, champion_version,
                                                             real_data):
    online_store.write_rows([feature_row(real_data, -5, age_s=30)])
    app = create_app(api_settings(), online_store=online_store, registry=registry)
    async with AsyncTestClient(app) as client:
        socket = await client.websocket_connect("/v1/predictions/stream?symbol=BTC-USD", headers=HEADERS)
        await asyncio.to_thread(socket.__enter__)  # the session runs the app in its own thread
        try:
            first = await asyncio.to_thread(socket.receive_json, timeout=10)
            assert first["symbol"] == "BTC-USD" and first["model_version"] == str(champion_version)
            pushed = []
            for index in (-4, -3):
                row = feature_row(real_data, index, age_s=1)
                await asyncio.to_thread(online_store.write_rows, [row])
                message = await asyncio.to_thread(socket.receive_json, timeout=10)
                pushed.append(message)
                assert message["price"] == row.values["close"]
                assert message["feature_age_ms"] < 5_000
            assert pushed[0]["feature_event_time"] < pushed[1]["feature_event_time"]
            assert pushed[0]["predicted_return"] != first["predicted_return"] or \
                pushed[0]["price"] != first["price"]
        finally:
            await asyncio.to_thread(socket.__exit__, None, None, None)


async def test_stream_rejects_a_bad_symbol_with_a_message(online_store, registry, champion_version):
    app = create_app(api_settings(), online_store=online_store, registry=registry)
    async with AsyncTestClient(app) as client:
        socket = await client.websocket_connect("/v1/predictions/stream?symbol=NOT!!", headers=HEADERS)
        await asyncio.to_thread(socket.__enter__)
        message = await asyncio.to_thread(socket.receive_json, timeout=10)
        assert message["status_code"] == 400 and message["error"] == "invalid_symbol"
        with pytest.raises(WebSocketDisconnect) as closed:
            await asyncio.to_thread(socket.receive_json, timeout=10)
        assert closed.value.code == 1008
        socket = await client.websocket_connect("/v1/predictions/stream", headers=HEADERS)  # no symbol
        await asyncio.to_thread(socket.__enter__)
        message = await asyncio.to_thread(socket.receive_json, timeout=10)
        assert message["status_code"] == 400 and message["error"] == "invalid_symbol"
        with pytest.raises(WebSocketDisconnect) as closed:
            await asyncio.to_thread(socket.receive_json, timeout=10)
        assert closed.value.code == 1008  # a client error, not Litestar's 4500
