"""Promotions and rollbacks swap the served model atomically while requests keep flowing."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from litestar.testing import AsyncTestClient

from api.app import create_app
from tests.api.conftest import FEATURES, HEADERS, api_settings, feature_row, phi, register_xgboost


async def test_requests_during_swaps_never_fail_or_mix_models(online_store, registry, real_data):
    first = register_xgboost(registry, real_data, seed=0, depth=2)
    second = register_xgboost(registry, real_data, seed=1, depth=5)
    registry.promote(first, "initial", force=True)
    registry.promote(second, "second", force=True)
    registry.promote(first, "back to the first (a rollback from here on)")
    row = feature_row(real_data, -1)
    online_store.write_rows([row])
    x = np.array([[row.values[n] for n in FEATURES]])
    expected = {str(v): float(registry.load_model(v).predict(x)[0]) for v in (first, second)}
    sigma = {str(v): registry.get(v).residual_std for v in (first, second)}
    assert abs(expected[str(first)] - expected[str(second)]) > 1e-5  # a mix would be visible

    app = create_app(api_settings(api_model_poll_s=0.02), online_store=online_store, registry=registry)
    async with AsyncTestClient(app) as client:
        stop = asyncio.Event()
        answers: list[tuple[int, dict]] = []

        async def hammer() -> None:
            while not stop.is_set():
                response = await client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS)
                answers.append((response.status_code, response.json()))
                await asyncio.sleep(0)

        async def promote_back_and_forth() -> None:
            for i in range(12):
                await asyncio.to_thread(registry.promote, second if i % 2 == 0 else first, f"swap {i}")
                await asyncio.sleep(0.08)
            stop.set()

        await asyncio.gather(promote_back_and_forth(), *(hammer() for _ in range(8)))

        assert len(answers) > 100
        assert {status for status, _ in answers} == {200}
        seen = set()
        for _, body in answers:
            version = body["model_version"]
            seen.add(version)
            assert abs(body["predicted_return"] - expected[version]) <= 1e-6
            assert abs(body["prob_up"] - phi(body["predicted_return"] / sigma[version])) <= 1e-9
        assert seen == {str(first), str(second)}

        # Rollback through the registry shows up by itself.
        registry.promote(second, "forward")
        registry.promote(first, "rollback")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            champion = (await client.get("/v1/models/champion", headers=HEADERS)).json()
            if champion["version"] == str(first) and app.state.holder.current.marker == registry.champion_epoch():
                break
            await asyncio.sleep(0.02)
        assert champion["version"] == str(first)
        body = (await client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS)).json()
        assert body["model_version"] == str(first)
        metrics = (await client.get("/metrics")).text
        assert f'rtml_api_model_info{{inference_path="onnxruntime",kind="xgboost",version="{first}"}} 1.0' in metrics
        assert f'version="{second}"' not in metrics.split("rtml_api_model_info")[-1]
