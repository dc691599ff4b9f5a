"""A real `rtml serve` process on a free port, against real Redis, over real HTTP and WebSocket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets

from rtml_core.registry import ModelRegistry
from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.online import open_online_store
from tests.api.conftest import API_KEY, HEADERS, feature_row, register_xgboost

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path, redis_url, redis_prefix, real_data):
    offline_url = f"sqlite:///{tmp_path / 'offline.sqlite'}"
    registry = ModelRegistry(open_offline_store(offline_url), tmp_path / "artifacts", owns_store=True)
    first = register_xgboost(registry, real_data, seed=0, depth=2)
    second = register_xgboost(registry, real_data, seed=1, depth=4)
    registry.promote(first, "server test", force=True)
    store = open_online_store(redis_url, redis_prefix)
    store.write_rows([feature_row(real_data, -1)])
    port = free_port()
    env = {**os.environ, "RTML_HOME": str(tmp_path), "RTML_OFFLINE_URL": offline_url,
           "RTML_ONLINE_URL": redis_url, "RTML_ONLINE_PREFIX": redis_prefix,
           "RTML_ARTIFACTS_DIR": str(tmp_path / "artifacts"), "RTML_API_KEYS": f"other-key-0123456789,{API_KEY}",
           "RTML_API_MODEL_POLL_S": "0.1", "RTML_LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "-m", "rtml_cli", "serve", "--port", str(port)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            pytest.fail(f"rtml serve exited: {process.stdout.read().decode()[-2000:]}")
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("rtml serve did not become ready in 60 s")
    yield base, port, registry, store, (first, second)
    process.send_signal(signal.SIGTERM)
    try:
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        store.close()
        registry.close()


async def test_real_server_predicts_streams_and_hot_swaps(server, real_data):
    base, port, registry, store, (first, second) = server
    async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=5) as client:
        response = await client.post("/v1/predict", json={"symbol": "BTC-USD"})
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == str(first)
        assert (await client.post("/v1/predict", json={"symbol": "BTC-USD"},
                                  headers={"X-API-Key": "nope"})).status_code == 401

        registry.promote(second, "promoted while serving", force=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            body = (await client.post("/v1/predict", json={"symbol": "BTC-USD"})).json()
            if body["model_version"] == str(second):
                break
        assert body["model_version"] == str(second)

        url = f"ws://127.0.0.1:{port}/v1/predictions/stream?symbol=BTC-USD"
        async with websockets.connect(url, additional_headers={"X-API-Key": API_KEY}) as ws:
            first_message = json.loads(await ws.recv())
            assert first_message["model_version"] == str(second)
            row = feature_row(real_data, -2, age_s=0.5)
            store.write_rows([row])
            pushed = json.loads(await asyncio_wait_for(ws.recv(), 10))
            assert pushed["price"] == row.values["close"]
            assert pushed["feature_event_time"] > first_message["feature_event_time"]

        metrics = (await client.get("/metrics")).text
        assert "rtml_api_model_swaps_total 2.0" in metrics  # start + one promotion
        assert 'rtml_api_predictions_total{source="stream"}' in metrics


async def asyncio_wait_for(awaitable, timeout: float):
    import asyncio

    return await asyncio.wait_for(awaitable, timeout)
