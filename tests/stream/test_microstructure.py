"""Order-book features into training: the sidecar logs the ``microstructure`` group as of each
candle's close, and the API serves that same value.

A local Kraken WebSocket v2 server plays the real book capture (snapshot and updates, Kraken's
checksums verified by the source) and real Kraken trades (data/kraken_xbtusdt_trades_rest.json,
sent as BTC/USD trades and stamped into the capture's minute); the sidecar writes to real Redis
and an SQLite offline store; the API reads that Redis.
"""

from __future__ import annotations

import asyncio
import json
import math
from decimal import Decimal
from pathlib import Path

import pandas as pd
from litestar.testing import AsyncTestClient

from api.app import create_app
from rtml_core.book import OrderBook, TradeFlow
from rtml_core.errors import InputError
from rtml_core.features.microstructure import CLOSE_FIELD, MICROSTRUCTURE
from rtml_core.registry import ModelRegistry
from rtml_core.schemas import BookLevel
from rtml_core.settings import Settings
from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.online import open_online_store
from rtml_stream.app import Sidecar, SidecarOptions
from rtml_stream.corrections import StreamOfflineSink
from rtml_stream.metrics import StreamMetrics
from rtml_stream.pipeline import Pipeline
from rtml_stream.sinks import OnlineSink
from rtml_stream.sources.kraken import KrakenSource
from tests.conftest import DATA, FIXTURES
from tests.stream.helpers import FAST_RECONNECT, wait_for_value
from tests.stream.wsservers import (
    KrakenServer,
    Session,
    kraken_rest_trades,
    kraken_ws_trade_message,
)

CAPTURE = (FIXTURES / "kraken_book_v2_capture.jsonl").read_text().splitlines()
SNAPSHOT, UPDATES = CAPTURE[2], CAPTURE[5:8]
_, ROWS = kraken_rest_trades(DATA / "kraken_xbtusdt_trades_rest.json")
MINUTE_S = 1787610060  # 2026-08-24T22:21:00Z: the capture's minute
CLOSE_NS = (MINUTE_S + 60) * 1_000_000_000
API_KEY = "test-key-0123456789"


def _stamped(rows: list, first_s: float, step_s: float) -> list:
    """The real trades with times ``first_s``, ``first_s + step_s``, ... (price, size, side kept)."""
    return [[*row[:2], f"{first_s + i * step_s:.6f}", *row[3:]] for i, row in enumerate(rows)]


BEFORE = _stamped(ROWS[:40], MINUTE_S + 57.2, 0.025)  # 57.2 .. 58.18, before the first update
BETWEEN = _stamped(ROWS[40:80], MINUTE_S + 58.4, 0.035)  # after the updates, up to 59.77
CLOSING = _stamped(ROWS[80:81], MINUTE_S + 60.5, 0.0)  # the first trade of the next minute closes it
AFTER = _stamped(ROWS[81:120], MINUTE_S + 61.0, 0.02)  # the next minute: changes the live flow only


def _expected_at_close() -> dict[str, float]:
    """The group computed here from the capture and the trades before the close, independently of
    the pipeline: the book after the snapshot and every update, the trades of the last 60 s."""
    book = OrderBook(depth=10)
    for number, line in enumerate([SNAPSHOT, *UPDATES]):
        (data,) = json.loads(line, parse_float=Decimal)["data"]
        bids = [BookLevel(Decimal(str(level["price"])), Decimal(str(level["qty"]))) for level in data["bids"]]
        asks = [BookLevel(Decimal(str(level["price"])), Decimal(str(level["qty"]))) for level in data["asks"]]
        (book.apply_snapshot if number == 0 else book.apply_update)(bids, asks)
    flow = TradeFlow(60 * 1_000_000_000)
    for price, size, when, side, *_ in BEFORE + BETWEEN:
        flow.add_values(int(Decimal(when) * 1_000_000_000), float(price), float(size), "buy" if side == "b" else "sell")
    flow.advance(CLOSE_NS)
    return MICROSTRUCTURE.values(book, flow)


def _messages(rows: list) -> list[str]:
    return [kraken_ws_trade_message(rows[i:i + 20], "BTC/USD") for i in range(0, len(rows), 20)]


async def test_the_value_logged_for_a_candle_is_the_value_the_api_served_at_its_close(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    steps = [*_messages(BEFORE), *UPDATES, *_messages(BETWEEN), *_messages(CLOSING), *_messages(AFTER)]
    server = KrakenServer([Session(steps)], book_snapshots={"BTC/USD": SNAPSHOT},
                          expected_channels=("trade", "book"))
    await server.start()
    metrics = StreamMetrics()
    source = KrakenSource(["BTC-USD"], url=server.url, metrics=metrics, channels=("trade", "book"), backfill=None,
                          idle_timeout=5.0, reconnect=FAST_RECONNECT, ping_interval=None)
    online = open_online_store(redis_url, redis_prefix)
    offline = open_offline_store(f"sqlite:///{tmp_path / 'offline.sqlite'}")
    sidecar = Sidecar(source, Pipeline(("1m",)), OnlineSink(online, coalesce_ms=20),
                      offline_sink=StreamOfflineSink(offline, flush_interval_s=0.05,
                                                     feature_specs={MICROSTRUCTURE.version: MICROSTRUCTURE.to_json()}),
                      metrics=metrics, options=SidecarOptions(coalesce_ms=20), markets=[("kraken", "BTC-USD")])
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop))
    total = len(BEFORE) + len(BETWEEN) + len(CLOSING) + len(AFTER)
    try:
        await wait_for_value(lambda: sidecar.pipeline.trades_in >= total, timeout=20)

        def logged() -> pd.DataFrame:
            try:
                return offline.read_features("kraken", "BTC-USD", "1m", MICROSTRUCTURE.version)
            except InputError:  # not registered until the sink's first write
                return pd.DataFrame()

        await wait_for_value(lambda: len(logged()) == 1, timeout=10)
        live = await online.aread_live("kraken", "BTC-USD")
        await wait_for_value(lambda: online.read_live("kraken", "BTC-USD").values.get("flow_trade_count")
                             == total, timeout=10)  # the live flow moved on past the close, every trade in it
        settings = Settings(api_keys=API_KEY, api_rate_limit=0, home=tmp_path, api_log_predictions=False,
                            api_serve_stale=True)
        registry = ModelRegistry(open_offline_store(f"sqlite:///{tmp_path / 'registry.sqlite'}"),
                                 tmp_path / "artifacts", owns_store=True)
        async with AsyncTestClient(create_app(settings, online_store=online, registry=registry)) as client:
            response = await client.get("/v1/features/BTC-USD", params={"exchange": "kraken", "timeframe": "1m"},
                                        headers={"X-API-Key": API_KEY})
        registry.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)
        await server.kill()
    assert response.status_code == 200, response.text
    served = response.json()
    assert served["event_time_ns"] == CLOSE_NS
    assert served["microstructure_close"] == "2026-08-24T22:22:00.000Z"
    row = logged().iloc[0]
    assert row["time"] == pd.Timestamp(MINUTE_S, unit="s", tz="UTC")  # keyed by the candle's start
    expected = _expected_at_close()
    assert set(served["microstructure"]) == set(MICROSTRUCTURE.names) == set(expected)
    for name in MICROSTRUCTURE.names:
        assert served["microstructure"][name] == row[name], name  # logged == served, exactly
        assert math.isclose(row[name], expected[name], rel_tol=1e-12, abs_tol=1e-12), (name, row[name], expected[name])
    assert row["ms_trade_count"] == len(BEFORE) + len(BETWEEN)  # the closing trade is not in its own close
    assert row["ms_spread_bps"] > 0 and -1 <= row["ms_imbalance_top"] <= 1 and row["ms_depth_10"] > 0
    assert live is not None and live.values[CLOSE_FIELD] == CLOSE_NS // 1_000_000_000
    sidecar.close()
    online.close()
