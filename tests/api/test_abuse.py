"""The API under abuse and faults: a real `rtml serve` (uvicorn) on loopback with real Redis.

Each bad request gets its own status and a valid request right after it still answers 200;
WebSockets stay within their caps and Redis connections do not grow with sockets; failed keys
are throttled per address; limits and metrics hold across two workers; oversized bodies are
always a readable 413; the API starts with its registry down and recovers by itself.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import httpx
import pytest
import redis
import sqlalchemy as sa
import websockets
from litestar.testing import AsyncTestClient

from api.app import create_app
from rtml_core.registry import ModelRegistry
from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.online import open_online_store
from tests.api.conftest import API_KEY, HEADERS, api_settings, feature_row, register_xgboost
from tests.api.servers import free_port, rtml_serve

pytestmark = pytest.mark.redis

RATE_KEY = "rate-limit-key-0123456789"
WS_KEY = "websocket-key-0123456789"
OTHER_KEY = "other-websocket-key-0123456789"


def deployment(tmp_path, redis_url, redis_prefix, real_data, **env) -> dict[str, str]:
    """A registry with a champion, the online row of BTC-USD, and the server's environment."""
    offline_url = f"sqlite:///{tmp_path / 'offline.sqlite'}"
    registry = ModelRegistry(open_offline_store(offline_url), tmp_path / "artifacts", owns_store=True)
    registry.promote(register_xgboost(registry, real_data), "abuse test", force=True)
    registry.close()
    store = open_online_store(redis_url, redis_prefix)
    store.write_rows([feature_row(real_data, -1, age_s=1)])
    store.close()
    return {"RTML_HOME": str(tmp_path), "RTML_OFFLINE_URL": offline_url, "RTML_ONLINE_URL": redis_url,
            "RTML_ONLINE_PREFIX": redis_prefix, "RTML_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
            "RTML_API_KEYS": ",".join((API_KEY, RATE_KEY, WS_KEY, OTHER_KEY)), "RTML_API_MODEL_POLL_S": "0.2",
            "RTML_API_LOG_PREDICTIONS": "false", **env}


@pytest.fixture
def two_workers(tmp_path, redis_url, redis_prefix, real_data):
    env = deployment(tmp_path, redis_url, redis_prefix, real_data, RTML_API_RATE_LIMIT="50",
                     RTML_API_MAX_WS_PER_KEY="20", RTML_API_WS_CONNECT_RATE="0", RTML_API_FAILED_KEY_LIMIT="10")
    with rtml_serve(env, workers=2) as (base, port, _):
        yield base, port


def fresh_client(base: str, **options) -> httpx.AsyncClient:
    """No kept-alive connections: successive requests spread over the workers."""
    return httpx.AsyncClient(base_url=base, timeout=10, limits=httpx.Limits(max_keepalive_connections=0),
                             **options)


def error_kind(response: httpx.Response) -> str:
    body = response.json()
    assert body["status_code"] == response.status_code and "Traceback" not in response.text
    return body["error"]


async def ws_first(url: str, headers: dict | None) -> tuple[dict | None, int | None]:
    """(first message or None, close code or None) of a WebSocket."""
    async with websockets.connect(url, additional_headers=headers or {}, open_timeout=10) as ws:
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        except websockets.ConnectionClosed as closed:
            return None, closed.rcvd.code if closed.rcvd else None
        return message, None


async def test_bad_parameters_are_400_and_a_valid_request_right_after_is_200(two_workers):
    base, port = two_workers
    bad = [
        ("GET", "/v1/features/BTC-USD?exchange=a:b", None, 400, "invalid_exchange"),
        ("GET", "/v1/features/BTC-USD?exchange=KRAKEN%7Bx%7D", None, 400, "invalid_exchange"),
        ("GET", "/v1/features/BTC-USD?exchange=" + "k" * 200, None, 400, "invalid_exchange"),
        ("GET", "/v1/features/BTC-USD?timeframe=30m%20", None, 400, "invalid_timeframe"),
        ("GET", "/v1/features/BTC-USD?timeframe=1x", None, 400, "invalid_timeframe"),
        ("GET", "/v1/features/BTC%7BUSD", None, 400, "invalid_symbol"),
        ("GET", "/v1/features/NOT!!", None, 400, "invalid_symbol"),
        ("POST", "/v1/predict", {"symbol": "BTC-USD", "exchange": "a:b"}, 400, "invalid_request"),
        ("POST", "/v1/predict", {"symbol": "DOGE-USD"}, 404, "unknown_symbol"),
        ("GET", "/v1/features/healthy-usd", None, 404, "unknown_symbol"),
    ]
    async with fresh_client(base, headers=HEADERS) as client:
        for method, path, body, status, kind in bad:
            response = await client.request(method, path, json=body)
            assert response.status_code == status and error_kind(response) == kind, (path, response.text)
            valid = await client.post("/v1/predict", json={"symbol": "BTC-USD"})
            assert valid.status_code == 200, (path, valid.text)  # the store-down latch did not trip
            await asyncio.sleep(0.03)  # under the 50/s rate limit
        for _ in range(3):  # one bad WebSocket parameter per second was enough to keep main at 503
            message, code = await ws_first(f"ws://127.0.0.1:{port}/v1/predictions/stream?symbol=BTC-USD"
                                           "&exchange=a:b", HEADERS)
            assert message["error"] == "invalid_exchange"
            assert (await client.post("/v1/predict", json={"symbol": "BTC-USD"})).status_code == 200


async def test_websockets_need_a_key_stay_within_the_cap_and_share_one_redis_subscription(
        two_workers, redis_url):
    base, port = two_workers
    url = f"ws://127.0.0.1:{port}/v1/predictions/stream?symbol=BTC-USD"
    assert await ws_first(url, None) == (None, 4401)
    assert await ws_first(url, {"X-API-Key": "wrong-key-0123456789"}) == (None, 4401)

    async with fresh_client(base, headers=HEADERS) as client:  # every worker opens its read connection
        for _ in range(20):
            assert (await client.post("/v1/predict", json={"symbol": "BTC-USD"})).status_code == 200
            await asyncio.sleep(0.03)
    admin = redis.Redis.from_url(redis_url)
    before = len(admin.client_list())
    sockets, refused = [], []

    async def open_one():
        ws = await websockets.connect(url, additional_headers={"X-API-Key": WS_KEY}, open_timeout=20)
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert message["symbol"] == "BTC-USD"
            sockets.append(ws)
        except websockets.ConnectionClosed as closed:
            refused.append(closed.rcvd.code)
            await ws.close()

    try:
        await asyncio.gather(*(open_one() for _ in range(200)))
        assert 20 <= len(sockets) <= 2 * 20  # the cap per key holds in each of the 2 workers
        assert set(refused) == {1008} and len(refused) == 200 - len(sockets)
        grown = len(admin.client_list()) - before
        assert grown <= 2, f"{grown} more Redis clients for {len(sockets)} sockets"  # one per worker
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
        admin.close()


async def test_the_rate_limit_and_metrics_hold_across_two_workers(two_workers):
    base, _ = two_workers
    async with fresh_client(base, headers={"X-API-Key": RATE_KEY}) as client:
        await asyncio.sleep(1.02 - time.time() % 1)  # start at the beginning of a one-second window
        answers = await asyncio.gather(*(client.post("/v1/predict", json={"symbol": "BTC-USD"})
                                         for _ in range(120)))
        codes = [answer.status_code for answer in answers]
        assert set(codes) <= {200, 429}
        assert 0 < codes.count(200) <= 50, codes.count(200)  # one limit for both workers, not 50 each
        limited = codes.count(429)
        for _ in range(6):  # whichever worker answers the scrape, it counts both workers
            metrics = (await client.get("/metrics")).text
            line = next(line for line in metrics.splitlines()
                        if line.startswith("rtml_api_requests_total") and 'status="429"' in line
                        and 'route="/v1/predict"' in line)
            assert float(line.rsplit(" ", 1)[1]) == limited, line


async def test_failed_keys_are_throttled_per_client_address(two_workers):
    base, _ = two_workers
    guessing = httpx.AsyncHTTPTransport(local_address="127.0.0.2")  # another client address
    async with fresh_client(base, transport=guessing) as guesser, fresh_client(base, headers=HEADERS) as client:
        codes = []
        for attempt in range(40):
            response = await guesser.post("/v1/predict", json={"symbol": "BTC-USD"},
                                          headers={"X-API-Key": f"guess-{attempt:04d}-0123456789"})
            codes.append(response.status_code)
        assert codes.count(401) <= 10 + 1  # the limit per minute, counted by both workers together
        assert codes[-5:] == [429] * 5
        blocked = await guesser.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS)
        assert blocked.status_code == 429 and "Retry-After" in blocked.headers  # even a right key waits
        assert (await client.post("/v1/predict", json={"symbol": "BTC-USD"})).status_code == 200  # other address
        assert (await guesser.get("/health")).status_code == 200


async def test_oversized_bodies_always_get_a_readable_413(two_workers):
    base, _ = two_workers
    body = b'{"symbol": "' + b"B" * (3 * 2**20) + b'"}'
    async with fresh_client(base, headers={**HEADERS, "Content-Type": "application/json"}) as client:
        for _ in range(20):
            response = await client.post("/v1/predict", content=body)
            assert response.status_code == 413 and error_kind(response) == "payload_too_large"
            assert "16384" in response.json()["detail"]
        assert (await client.post("/v1/predict", json={"symbol": "BTC-USD"})).status_code == 200


async def test_websocket_connects_are_rate_limited_and_capped_per_key_and_worker(
        tmp_path, redis_url, redis_prefix, real_data):
    env = deployment(tmp_path, redis_url, redis_prefix, real_data, RTML_API_WS_CONNECT_RATE="5",
                     RTML_API_MAX_WS_PER_KEY="3", RTML_API_MAX_WS="4")
    with rtml_serve(env) as (_, port, _):
        url = f"ws://127.0.0.1:{port}/v1/predictions/stream?symbol=BTC-USD"
        started = time.monotonic()
        results = [await ws_first(url, HEADERS) for _ in range(8)]
        assert time.monotonic() - started < 1.0
        assert [code for _, code in results] == [None] * 5 + [4429] * 3
        await asyncio.sleep(1.1)
        held = [await websockets.connect(url, additional_headers={"X-API-Key": WS_KEY}) for _ in range(3)]
        try:
            for ws in held:
                assert "model_version" in json.loads(await asyncio.wait_for(ws.recv(), 10))
            await asyncio.sleep(1.1)
            assert await ws_first(url, {"X-API-Key": WS_KEY}) == (None, 1008)  # 3 per key
            other = await websockets.connect(url, additional_headers={"X-API-Key": OTHER_KEY})
            held.append(other)
            assert "model_version" in json.loads(await asyncio.wait_for(other.recv(), 10))
            assert await ws_first(url, HEADERS) == (None, 1013)  # 4 per worker
        finally:
            await asyncio.gather(*(ws.close() for ws in held))


async def test_the_api_starts_with_its_registry_down_says_why_and_recovers(tmp_path, redis_url, redis_prefix,
                                                                           real_data):
    real = tmp_path / "real"
    env = deployment(real, redis_url, redis_prefix, real_data)
    blocked = tmp_path / "registry"
    blocked.write_text("a file where the registry's directory belongs")
    env.update(RTML_OFFLINE_URL=f"sqlite:///{blocked / 'offline.sqlite'}", RTML_HOME=str(tmp_path),
               RTML_ARTIFACTS_DIR=str(blocked / "artifacts"))
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/rtml"
    with rtml_serve({**env, "RTML_OFFLINE_URL": dead}, wait_for=503) as (base, _, _):
        ready = httpx.get(f"{base}/ready")
        assert ready.status_code == 503
        assert set(ready.json()["reasons"]) == {"registry_unavailable", "no_champion"}
        assert "127.0.0.1" not in ready.text and "postgres" not in ready.text
        assert httpx.get(f"{base}/health").status_code == 200
    with rtml_serve({**env, "RTML_API_LOG_PREDICTIONS": "true"}, wait_for=503) as (base, _, _):
        predict = httpx.post(f"{base}/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS)
        assert predict.status_code == 503 and predict.json()["error"] == "no_champion"
        blocked.unlink()
        shutil.move(real, blocked)  # the registry's database appears: the poller opens it
        deadline = time.monotonic() + 20
        while httpx.get(f"{base}/ready").status_code != 200:
            assert time.monotonic() < deadline, httpx.get(f"{base}/ready").text
            time.sleep(0.2)
        # the prediction log opens too (retried in the background): served predictions reach it
        engine = sa.create_engine(f"sqlite:///{blocked / 'offline.sqlite'}")
        deadline = time.monotonic() + 30
        logged = 0
        while not logged:
            assert time.monotonic() < deadline, "no prediction was logged after the offline store came back"
            assert httpx.post(f"{base}/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS).status_code == 200
            time.sleep(0.5)
            with engine.connect() as conn:
                if sa.inspect(conn).has_table("predictions"):
                    logged = conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar()
        engine.dispose()


async def test_a_champion_that_fails_to_load_keeps_the_old_one_and_shows_in_ready(
        tmp_path, online_store, registry, champion_version, real_data):
    online_store.write_rows([feature_row(real_data)])
    app = create_app(api_settings(), online_store=online_store, registry=registry)
    async with AsyncTestClient(app) as client:
        assert (await client.get("/ready")).json()["reasons"] == []
        broken = register_xgboost(registry, real_data, seed=3, depth=2)
        (registry.artifacts_dir / registry.get(broken).artifact_file).write_bytes(b"not the registered bytes")
        registry.promote(broken, "a promotion whose artifact was tampered with", force=True)
        deadline = time.monotonic() + 10
        while "champion_load_failed" not in (await client.get("/ready")).json()["reasons"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        ready = await client.get("/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert "sha256" not in ready.text and str(tmp_path) not in ready.text
        served = await client.post("/v1/predict", json={"symbol": "BTC-USD"}, headers=HEADERS)
        assert served.status_code == 200 and served.json()["model_version"] == str(champion_version)
        metrics = (await client.get("/metrics")).text
        assert "rtml_api_champion_load_failing 1.0" in metrics
        assert "rtml_api_champion_load_failures_total 0.0" not in metrics
        registry.promote(champion_version, "rollback to the one being served")
        deadline = time.monotonic() + 10
        while (await client.get("/ready")).json()["reasons"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert "rtml_api_champion_load_failing 0.0" in (await client.get("/metrics")).text
