"""Ingest -> JetStream -> features -> Redis, in one event loop on the real NATS server: the online rows
equal the batch rows of the trades the local Kraken server sent; the archive holds exactly those trades;
the publisher's duplicate window and outage buffer; /metrics and /health of each process."""

from __future__ import annotations

import asyncio

import httpx
import nats
import pytest

from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.online import open_online_store
from rtml_stream.broker.archive import Archiver
from rtml_stream.broker.codec import encode_trades, trade_msg_id, trade_subject
from rtml_stream.broker.features import FeatureService, FeatureServiceOptions
from rtml_stream.broker.ingest import Ingestor, Outgoing, Publisher
from rtml_stream.broker.jetstream import connect, ensure_stream
from rtml_stream.broker.metrics import BrokerMetrics
from rtml_stream.corrections import StreamOfflineSink
from rtml_stream.metrics import StreamMetrics
from rtml_stream.pipeline import Pipeline
from rtml_stream.sinks import OnlineSink
from rtml_stream.sources.kraken import KrakenSource
from tests.broker.helpers import (
    LATENESS_NS,
    ROWS,
    TIMEFRAMES,
    broker,  # noqa: F401 - fixture
    exchange_trades,
    expected_output,
    online_rows,
    rows_equal,
    TcpProxy,
    session,
    stream_trades,
    wait_until,
    wire_symbols,
)
from tests.stream.helpers import FAST_RECONNECT
from tests.stream.wsservers import KrakenServer

SYMBOL = "BTC-USDT"


def kraken_source(server: KrakenServer, symbols=(SYMBOL,)) -> KrakenSource:
    return KrakenSource(list(symbols), url=server.url, metrics=StreamMetrics(), channels=("trade",), backfill=None,
                        idle_timeout=2.0, reconnect=FAST_RECONNECT, ping_interval=None)


async def test_online_rows_through_jetstream_equal_the_batch_rows(broker, tmp_path, redis_url, redis_prefix):
    server = await KrakenServer([session([SYMBOL])], known_symbols=wire_symbols([SYMBOL])).start()
    ingestor = Ingestor(kraken_source(server), broker, health_port=0)
    summary = await asyncio.wait_for(ingestor.run(max_trades=len(ROWS)), timeout=30)
    await server.kill()
    assert summary["trades"] == len(ROWS) and summary["buffered"] == 0 and summary["dropped"] == 0
    assert [t.trade_id for t in await stream_trades(broker)] == [int(r[6]) for r in ROWS]

    store = open_online_store(redis_url, redis_prefix, history=2000)
    offline = open_offline_store(f"sqlite:///{tmp_path / 'offline.sqlite'}")
    service = FeatureService(broker, lambda: Pipeline(TIMEFRAMES, allowed_lateness_ns=LATENESS_NS),
                             OnlineSink(store, coalesce_ms=20), [("kraken", SYMBOL)],
                             offline_sink=StreamOfflineSink(offline, flush_interval_s=0.05),
                             offline_store_factory=lambda: offline,
                             options=FeatureServiceOptions(coalesce_ms=20, commit_interval_s=0.05, health_port=0))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await wait_until(lambda: service.trades == len(ROWS) and service.health_server is not None,
                     timeout=20, what="the feature service to fold every trade")
    expected = expected_output(exchange_trades(SYMBOL))
    await wait_until(lambda: service.acked > 0 and all(not f.unacked or f.unacked[0][0] >= service.closed_until(m)
                                                       for m, f in service.feeds.items()),
                     timeout=10, what="acknowledgements of the closed candles")
    port = service.health_server.port
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        health = (await client.get(f"http://127.0.0.1:{port}/health")).json()
    for name in ("rtml_broker_consumed_total", "rtml_broker_acknowledged_total", "rtml_broker_redelivered_total",
                 "rtml_broker_consumer_lag", "rtml_broker_added_lag_seconds"):
        assert name in metrics
    assert health["status"] == "ok" and health["markets"] == [f"kraken:{SYMBOL}"]
    stop.set()
    result = await asyncio.wait_for(task, timeout=20)
    assert result["trades"] == len(ROWS) and result["duplicates_skipped"] == 0
    assert result["feature_rows"] == len(expected.rows) and result["online_pending"] == 0
    for tf in TIMEFRAMES:
        want = [r for r in expected.rows if r.timeframe == tf]
        assert len(want) > 20
        assert rows_equal(online_rows(store, "kraken", SYMBOL, tf), want)
        candles = offline.read_candles("kraken", SYMBOL, tf, exact=True)
        assert [int(t.value) for t in candles["time"]] == [c.start_ns for c in expected.candles if c.timeframe == tf]
    # the messages of closed candles were acknowledged; the open window's trades are still in the stream for a restart
    nc = await nats.connect(broker.url)
    info = await nc.jetstream().consumer_info(broker.stream, f"features_kraken_{SYMBOL}")
    await nc.close()
    assert 0 < info.ack_floor.stream_seq < len(ROWS) // 50

    # --from-start: the same rows rebuilt from the log alone (cold state, the consumer at the stream's start)
    rebuilt = open_online_store(redis_url, f"{redis_prefix}:rebuilt", history=2000)
    again = FeatureService(broker, lambda: Pipeline(TIMEFRAMES, allowed_lateness_ns=LATENESS_NS),
                           OnlineSink(rebuilt, coalesce_ms=20), [("kraken", SYMBOL)],
                           offline_sink=StreamOfflineSink(offline, flush_interval_s=0.05),
                           offline_store_factory=lambda: offline,
                           options=FeatureServiceOptions(coalesce_ms=20, commit_interval_s=0.05, from_start=True))
    stop = asyncio.Event()
    task = asyncio.create_task(again.run(stop))
    await wait_until(lambda: again.trades == len(ROWS), timeout=20, what="the rebuild from the start")
    stop.set()
    result = await asyncio.wait_for(task, timeout=20)
    assert result["history"][0] == ("take", f"kraken:{SYMBOL}") and result["feature_rows"] == len(expected.rows)
    for tf in TIMEFRAMES:
        assert rows_equal(online_rows(rebuilt, "kraken", SYMBOL, tf), [r for r in expected.rows if r.timeframe == tf])
    rebuilt.close()
    store.close()
    offline.close()


async def test_archive_raw_trades_equal_the_trades_the_exchange_sent(broker, tmp_path):
    server = await KrakenServer([session([SYMBOL])], known_symbols=wire_symbols([SYMBOL])).start()
    await asyncio.wait_for(Ingestor(kraken_source(server), broker).run(max_trades=len(ROWS)), timeout=30)
    await server.kill()
    url = f"sqlite:///{tmp_path / 'offline.sqlite'}"
    archiver = Archiver(broker, lambda: open_offline_store(url), name="archive_test", health_port=0)
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))
    await wait_until(lambda: archiver.trades >= len(ROWS), timeout=20, what="the archive")
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{archiver.health_port}/metrics")).text
        health = (await client.get(f"http://127.0.0.1:{archiver.health_port}/health")).json()
    assert "rtml_broker_acknowledged_total" in metrics and "rtml_broker_consumer_lag" in metrics
    assert health["status"] == "ok" and health["trades"] == len(ROWS)
    stop.set()
    assert (await asyncio.wait_for(task, timeout=10))["trades"] == len(ROWS)
    # a second archive run over the same stream (a redelivery, a new archive) rewrites nothing new
    again = Archiver(broker, lambda: open_offline_store(url), name="archive_again")
    stop = asyncio.Event()
    task = asyncio.create_task(again.run(stop))
    await wait_until(lambda: again.trades >= len(ROWS), timeout=20, what="the second archive")
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    store = open_offline_store(url)
    frame = store.read_trades("kraken", SYMBOL, exact=True)
    store.close()
    sent = exchange_trades(SYMBOL)
    assert len(frame) == len(sent)
    assert list(frame["trade_id"]) == [t.trade_id for t in sent]
    assert [int(t.value) for t in frame["time"]] == [t.time_ns for t in sent]
    assert list(frame["price"]) == [t.price for t in sent] and list(frame["size"]) == [t.size for t in sent]
    assert list(frame["side"]) == [t.side for t in sent]


async def test_same_message_id_is_stored_once_and_an_outage_is_buffered_then_caught_up(broker):
    trades = exchange_trades(SYMBOL)[:50]
    metrics = BrokerMetrics()
    nc = await connect(broker, name="test")
    js = nc.jetstream()
    await ensure_stream(js, broker)
    await ensure_stream(js, broker)  # idempotent
    publisher = Publisher(js, broker.stream, metrics, max_buffer=3)
    subject = trade_subject("kraken", SYMBOL, broker.subject_prefix)
    item = lambda: Outgoing(subject, encode_trades("kraken", SYMBOL, trades, 1),  # noqa: E731
                            trade_msg_id("kraken", SYMBOL, trades[0].trade_id, trades[-1].trade_id), "trades", 50)
    publisher.add(item())
    publisher.add(item())
    assert await publisher.publish_due()
    assert (await js.stream_info(broker.stream)).state.messages == 1
    assert metrics.duplicates._value.get() == 1
    await nc.close()

    # the broker unreachable: buffered up to the bound, loss past it counted, reported unhealthy
    down = Publisher(js, broker.stream, metrics, max_buffer=3, ack_timeout_s=0.2)
    for i in range(5):
        down.add(Outgoing(subject, encode_trades("kraken", SYMBOL, trades[i:i + 1], 1),
                          trade_msg_id("kraken", SYMBOL, trades[i].trade_id, trades[i].trade_id), "trades", 1))
    assert not await down.publish_due()
    assert len(down.buffer) == 3 and down.dropped == 2 and not down.healthy
    assert metrics.dropped_trades._value.get() == 2
    nc = await connect(broker, name="test")  # back: the same buffer is caught up
    down.js = nc.jetstream()
    assert await down.publish_due()
    assert down.healthy and not down.buffer
    ids = [t.trade_id for t in await stream_trades(broker)]
    assert ids == [t.trade_id for t in trades] + [t.trade_id for t in trades[2:5]]
    await nc.close()


async def test_a_broker_outage_is_buffered_reported_and_caught_up_with_no_trade_lost_or_twice(broker):
    """The ingestor's connection to NATS goes through a proxy that is cut for two seconds mid-run."""
    from dataclasses import replace

    proxy = await TcpProxy(broker.url).restore()
    server = await KrakenServer([session([SYMBOL], pause_s=0.25)], known_symbols=wire_symbols([SYMBOL])).start()
    ingestor = Ingestor(kraken_source(server), replace(broker, url=proxy.url), health_port=0)
    task = asyncio.create_task(ingestor.run(max_trades=len(ROWS)))
    try:
        await wait_until(lambda: ingestor.trades >= 200, timeout=20, what="trades before the outage")
        await proxy.cut()
        await wait_until(lambda: not ingestor.connected and ingestor.publisher.buffer, timeout=20,
                         what="messages buffered while NATS is unreachable")
        reasons = ingestor.health_reasons()
        assert any("not connected" in reason for reason in reasons)
        async with httpx.AsyncClient() as client:
            health = await client.get(f"http://127.0.0.1:{ingestor.health_server.port}/health")
        assert health.status_code == 503 and health.json()["buffered"] > 0
        await asyncio.sleep(2.0)
        await proxy.restore()
        summary = await asyncio.wait_for(task, timeout=60)
    finally:
        await server.kill()
        await proxy.cut()
    assert summary["trades"] == len(ROWS) and summary["buffered"] == 0 and summary["dropped"] == 0
    assert [t.trade_id for t in await stream_trades(broker)] == [int(r[6]) for r in ROWS]


async def test_stream_settings_are_updated_in_place(broker):
    from dataclasses import replace

    nc = await connect(broker, name="test")
    js = nc.jetstream()
    await ensure_stream(js, broker)
    info = await ensure_stream(js, replace(broker, max_age_s=120.0, max_bytes=2**20, duplicate_window_s=30.0))
    assert info.config.max_age == pytest.approx(120.0) and info.config.max_bytes == 2**20
    assert info.config.duplicate_window == pytest.approx(30.0)
    await nc.close()
