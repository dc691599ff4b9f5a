"""The broker layout under failure, in real processes on the real NATS server: a feature service
SIGKILLed and restarted (no gap, no duplicate: candles and rows equal the batch ones), an ingestor
SIGKILLed and restarted (no trade twice in the stream), two feature services sharing four markets
when one of them is killed (its markets continue on the other)."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest

from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.online import open_online_store
from rtml_core.symbols import to_exchange_symbol
from rtml_stream.broker.ingest import Ingestor
from tests.broker.helpers import (
    ROWS,
    TIMEFRAMES,
    broker,  # noqa: F401 - fixture
    env_for,
    exchange_trades,
    expected_output,
    free_port,
    health,
    messages,
    online_rows,
    rows_equal,
    session,
    start,
    stream_trades,
    wait_until,
    wire_symbols,
)
from tests.broker.test_pipeline import kraken_source
from tests.stream.wsservers import KrakenServer, Session

SYMBOL = "BTC-USDT"


def stream_args(broker, symbols, port: int) -> list[str]:
    return ["stream", "--source", broker.url, "--exchange", "kraken", "--symbols", ",".join(symbols),
            "--timeframes", ",".join(TIMEFRAMES), "--health-port", str(port), "--json", "--log-format", "json"]


def stop(process, timeout: float = 60) -> dict:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


def check_market(store, offline, symbol: str, expected) -> None:
    """Online rows and offline candles equal the batch ones (a trade counted twice or missed changes
    a candle's volume and trade count); rows closed later by the feed's quiet-time ticks are extra."""
    for tf in TIMEFRAMES:
        want = [r for r in expected.rows if r.timeframe == tf]
        got = [r for r in online_rows(store, "kraken", symbol, tf) if r.event_time_ns <= want[-1].event_time_ns]
        assert len(want) > 20 and rows_equal(got, want), (symbol, tf, len(got), len(want))
        candles = offline.read_candles("kraken", symbol, tf, exact=True)
        want_candles = [c for c in expected.candles if c.timeframe == tf]
        candles = candles[[int(t.value) <= want_candles[-1].start_ns for t in candles["time"]]]
        assert [int(t.value) for t in candles["time"]] == [c.start_ns for c in want_candles]
        assert list(candles["trade_count"]) == [c.trade_count for c in want_candles]
        assert list(candles["volume"]) == [c.volume for c in want_candles]
        assert list(candles["close"]) == [c.close for c in want_candles]


def final_rows_written(store, symbols, expected) -> bool:
    for symbol in symbols:
        for tf in TIMEFRAMES:
            last = [r for r in expected.rows if r.timeframe == tf][-1]
            row = store.read_latest("kraken", symbol, tf)
            if row is None or row.event_time_ns < last.event_time_ns:
                return False
    return True


async def test_feature_service_sigkilled_and_restarted_resumes_with_no_gap_and_no_duplicate(
        broker, tmp_path, redis_url, redis_prefix):
    server = await KrakenServer([session([SYMBOL], pause_s=0.4)], known_symbols=wire_symbols([SYMBOL])).start()
    env = env_for(tmp_path, broker, redis_url, redis_prefix)
    log = tmp_path / "stream.log"
    first_port, second_port = free_port(), free_port()
    first = start(stream_args(broker, [SYMBOL], first_port), env, log)
    ingest = None
    try:
        await wait_until(lambda: (h := health(first_port)) is not None and h["markets"], timeout=60,
                         what="the first feature service to start", process=first, log=log)
        ingest = asyncio.create_task(Ingestor(kraken_source(server), broker).run(max_trades=len(ROWS)))
        await wait_until(lambda: (h := health(first_port)) is not None and h["trades"] >= 300 and h["acknowledged"] > 0,
                         timeout=60, what="the first feature service to fold and acknowledge trades",
                         process=first, log=log)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert not ingest.done()  # killed mid-run
        second = start(stream_args(broker, [SYMBOL], second_port), env, log)
        await asyncio.wait_for(ingest, timeout=60)
        store = open_online_store(redis_url, redis_prefix, history=2000)
        expected = expected_output(exchange_trades(SYMBOL))
        await wait_until(lambda: final_rows_written(store, [SYMBOL], expected), timeout=60,
                         what="the restarted service to write the last rows", process=second, log=log)
        summary = stop(second)
    finally:
        for process in (first, locals().get("second")):
            if process is not None and process.poll() is None:
                process.kill()
        if ingest is not None and not ingest.done():
            ingest.cancel()
        await server.kill()
    # the restart resumed at the first unacknowledged message: not from the start, not after it
    assert 0 < summary["trades"] < len(ROWS) and summary["duplicates_skipped"] == 0
    assert summary["late_trades"] == 0 and summary["processing_errors"] == 0
    offline = open_offline_store(f"sqlite:///{tmp_path / 'home' / 'offline.sqlite'}")
    check_market(store, offline, SYMBOL, expected)
    store.close()
    offline.close()


async def test_ingestor_sigkilled_and_restarted_puts_no_trade_twice_in_the_stream(broker, tmp_path, redis_url,
                                                                                redis_prefix):
    wire = to_exchange_symbol("kraken", SYMBOL)
    # connection 0 plays the first 600 trades; the reconnect after the restart replays from trade 200 on
    server = await KrakenServer([session([SYMBOL], ROWS[:600], pause_s=0.2),
                                 Session(messages([SYMBOL], ROWS[200:]))], known_symbols=(wire,)).start()
    env = env_for(tmp_path, broker, redis_url, redis_prefix, RTML_STREAM_MAX_BACKFILL_AGE_S="1")
    log = tmp_path / "ingest.log"
    args = ["ingest", "--exchange", "kraken", "--symbols", SYMBOL, "--to", broker.url, "--ws-url", server.url,
            "--rest-url", "http://127.0.0.1:9", "--no-book", "--json", "--log-format", "json"]
    first_port, second_port = free_port(), free_port()
    first = start([*args, "--health-port", str(first_port)], env, log)
    try:
        await wait_until(lambda: (h := health(first_port)) is not None and h["trades"] >= 300, timeout=60,
                         what="the first ingestor to publish", process=first, log=log)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        stored = [t.trade_id for t in await stream_trades(broker)]
        assert 300 <= len(stored) < 1000
        second = start([*args, "--health-port", str(second_port)], env, log)
        await wait_until(lambda: (h := health(second_port)) is not None and h["buffered"] == 0
                         and h["trades"] >= len(ROWS) - len(stored), timeout=60,
                         what="the restarted ingestor to publish the rest", process=second, log=log)
        resumed = health(second_port)["resumed"]
        metrics = httpx.get(f"http://127.0.0.1:{second_port}/metrics", timeout=2).text
        for name in ("rtml_broker_published_total", "rtml_broker_buffered", "rtml_broker_dropped_total",
                     "rtml_broker_connected 1.0", "rtml_stream_trades_in_total"):
            assert name in metrics
        summary = stop(second)
    finally:
        for process in (first, locals().get("second")):
            if process is not None and process.poll() is None:
                process.kill()
        await server.kill()
    assert resumed == {SYMBOL: {"trade_id": stored[-1], "time_ns": pytest.approx(resumed[SYMBOL]["time_ns"])}}
    ids = [t.trade_id for t in await stream_trades(broker)]
    assert ids == [int(r[6]) for r in ROWS]  # every trade once, in order: the overlap was not published again
    assert summary["trades"] == len(ROWS) - len(stored)


async def test_two_feature_services_share_four_markets_and_one_killed_hands_its_markets_over(
        broker, tmp_path, redis_url, redis_prefix, fresh_postgres_url):
    symbols = ["BTC-USDT", "BTC-USD", "ETH-USD", "ETH-USDT"]
    server = await KrakenServer([session(symbols, pause_s=0.35)], known_symbols=wire_symbols(symbols)).start()
    env = env_for(tmp_path, broker, redis_url, redis_prefix, fresh_postgres_url, RTML_BROKER_LEASE_TTL_S="3")
    ports = [free_port(), free_port()]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes = [start(stream_args(broker, symbols, ports[0]), env, logs[0])]
    ingest = None
    try:
        await wait_until(lambda: (h := health(ports[0])) is not None and len(h["markets"]) == 4, timeout=60,
                         what="the first service to take all four markets", process=processes[0], log=logs[0])
        processes.append(start(stream_args(broker, symbols, ports[1]), env, logs[1]))
        await wait_until(lambda: all((h := health(p)) is not None and len(h["markets"]) == 2 for p in ports),
                         timeout=60, what="the markets split two and two", process=processes[1], log=logs[1])
        ingest = asyncio.create_task(Ingestor(kraken_source(server, symbols), broker).run(max_trades=4 * len(ROWS)))
        await wait_until(lambda: all((h := health(p)) is not None and h["trades"] >= 400 for p in ports), timeout=60,
                         what="both services to process trades", process=processes[0], log=logs[0])
        taken_over = set(health(ports[0])["markets"])
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(timeout=10)
        await wait_until(lambda: (h := health(ports[1])) is not None and len(h["markets"]) == 4, timeout=60,
                         what="the survivor to take the dead one's markets", process=processes[1], log=logs[1])
        await asyncio.wait_for(ingest, timeout=60)
        store = open_online_store(redis_url, redis_prefix, history=2000)
        expected = expected_output(exchange_trades())
        await wait_until(lambda: final_rows_written(store, symbols, expected), timeout=90,
                         what="every market's last rows", process=processes[1], log=logs[1])
        summary = stop(processes[1])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        if ingest is not None and not ingest.done():
            ingest.cancel()
        await server.kill()
    assert summary["duplicates_skipped"] == 0 and summary["processing_errors"] == 0
    takes = [market for change, market in summary["history"] if change == "take"]
    assert len(taken_over) == 2 and set(takes[:2]).isdisjoint(taken_over) and set(takes[2:]) >= taken_over
    assert sorted(summary["markets"]) == sorted(f"kraken:{s}" for s in symbols)
    offline = open_offline_store(fresh_postgres_url)
    for symbol in symbols:
        check_market(store, offline, symbol, expected_output(exchange_trades(symbol)))
    store.close()
    offline.close()
