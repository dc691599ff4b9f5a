"""Event time comes from the feed: candles stay exact across disconnects, restarts, clock skew and
bad timestamps. Real sockets (a local Kraken WebSocket server and REST server playing real
captured trades, stamped live where the test says so), real Redis and PostgreSQL, the
production defaults (allowed lateness 2 s, gap filling on, RTML_STREAM_MAX_FUTURE_S 5 s)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from rtml_core.candles import build_candles, candles_to_frame
from rtml_core.features import compute_features
from rtml_core.ingest import read_trades
from rtml_core.schemas import ROW_CONTEXT_FIELDS, Candle, Trade
from rtml_core.settings import Settings
from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.online import open_online_store
from rtml_core.timeframes import timeframe_ns
from rtml_stream.app import build_sidecar
from rtml_stream.pipeline import Pipeline
from rtml_stream.sinks import OnlineSink
from rtml_stream.sources.kraken import KrakenSource
from tests.conftest import DATA
from tests.stream.helpers import FAST_RECONNECT, free_port, health, wait_for_value
from tests.stream.wsservers import (
    KrakenServer,
    LiveTape,
    LocalHttpServer,
    Session,
    Stream,
    kraken_rest_trades,
    kraken_trades_route,
    kraken_ws_trade_message,
)

PAIR, ROWS = kraken_rest_trades(DATA / "kraken_xbtusdt_trades_rest.json")
REPO = Path(__file__).resolve().parents[2]
MARKET = ("kraken", "BTC-USDT")
NS = 1_000_000_000


def tape_trades(rows) -> list[Trade]:
    """The trades of REST rows exactly as the exchange has them (the batch computation's input)."""
    return [Trade("kraken", "BTC-USDT", row[6], int(Decimal(repr(row[2])) * NS), Decimal(row[0]), Decimal(row[1]),
                  "buy" if row[3] == "b" else "sell") for row in rows]


def stored_candles(store, timeframe: str) -> list[Candle]:
    frame = store.read_candles(*MARKET, timeframe, exact=True)
    return [Candle("kraken", "BTC-USDT", timeframe, int(t.value), Decimal(o), Decimal(h), Decimal(lo), Decimal(c),
                   Decimal(v), None if vw is None or vw != vw else Decimal(vw), int(n))
            for t, o, h, lo, c, v, vw, n in zip(frame["time"], frame["open"], frame["high"], frame["low"],
                                                frame["close"], frame["volume"], frame["vwap"], frame["trade_count"])]


def assert_candles_and_rows_equal_batch(store, trades: list[Trade], timeframe: str, version: str) -> int:
    """The stream's stored candles are the batch candles (gaps filled) of every trade, window by
    window up to the last one the stream closed; its stored feature rows are compute_features of
    those candles. Returns how many candles were compared."""
    batch = build_candles(trades, timeframe, fill_gaps=True)
    stream = stored_candles(store, timeframe)
    last_trade_start = batch[-1].start_ns
    within = [c for c in stream if c.start_ns <= last_trade_start]
    assert within, "the stream closed no candle"
    assert within == batch[:len(within)]
    assert all(c.trade_count == 0 and c.close == batch[-1].close for c in stream[len(within):])  # quiet: flat
    features = store.read_features(*MARKET, timeframe, version)
    expected = compute_features(candles_to_frame(batch[:len(within)]))
    names = [c for c in expected.columns if c != "time" and c not in ROW_CONTEXT_FIELDS]
    got = features.iloc[:len(within)]
    assert list(got["time"].astype("int64")) == [c.start_ns for c in within]
    a, b = got[names].to_numpy(dtype="float64"), expected[names].to_numpy(dtype="float64")
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(b)
    np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9, atol=0)
    return len(within)


def settings_for(tmp_path, redis_url, redis_prefix, offline_url, **extra) -> Settings:
    return Settings(home=tmp_path / "home", online_url=redis_url, online_prefix=redis_prefix, offline_url=offline_url,
                    stream_dagster="off", **extra)


async def seconds_before_boundary(tf_s: float, lo: float, hi: float) -> None:
    """Wait until the wall clock is between ``lo`` and ``hi`` seconds into a ``tf_s`` window."""
    while not lo <= time.time() % tf_s <= hi:
        await asyncio.sleep(0.01)


# --- a live-stamped feed dropped for 5 s across a candle boundary ------------------------------

async def test_a_5s_outage_across_a_boundary_leaves_the_candles_of_no_outage(tmp_path, redis_url, redis_prefix,
                                                                             fresh_postgres_url) -> None:
    tape = LiveTape(ROWS, per_second=40)
    server = KrakenServer([Session([Stream(tape.stream)]) for _ in range(50)])
    await server.start()
    with LocalHttpServer({"/0/public/Trades": kraken_trades_route(PAIR, tape.rows)}) as rest:
        settings = settings_for(tmp_path, redis_url, redis_prefix, fresh_postgres_url)
        source = KrakenSource(["BTC-USDT"], url=server.url, rest_url=rest.url, channels=("trade",),
                              reconnect=FAST_RECONNECT, ping_interval=None)
        sidecar = build_sidecar(settings, source, [MARKET], timeframes=["5s", "15s"], health_port=-1)
        stop = asyncio.Event()
        running = asyncio.create_task(sidecar.run(stop))
        await wait_for_value(lambda: tape.listeners >= 1, timeout=10)  # subscribed: every trade from now on
        playing = asyncio.create_task(tape.play(560))  # 14 s of trades
        await asyncio.sleep(3)
        await seconds_before_boundary(5, 1.0, 1.5)  # the outage spans the next 5 s boundary
        await server.kill()
        outage_from = len(tape.rows)
        await asyncio.sleep(5)
        outage_trades = len(tape.rows) - outage_from
        await server.start()
        await playing
        await wait_for_value(lambda: sidecar.pipeline.trades_in >= len(tape.rows), timeout=15)
        await asyncio.sleep(5 + 2 + 1)  # a quiet market: the idle clock closes the last 5 s window
        stop.set()
        summary = await asyncio.wait_for(running, timeout=30)
        await server.kill()
    metrics = sidecar.metrics
    assert outage_trades > 150 and server.connection_count >= 2
    assert metrics.value("trades_backfilled", exchange="kraken", symbol="BTC-USDT") >= outage_trades
    assert summary.late == 0 and metrics.total("late_trades") == 0
    assert summary.trades - summary.duplicates == len(tape.rows) and summary.malformed == 0
    store = open_offline_store(fresh_postgres_url)
    trades = tape_trades(tape.rows)
    compared = assert_candles_and_rows_equal_batch(store, trades, "5s", sidecar.pipeline.version)
    assert compared >= math.ceil(14 / 5)
    assert_candles_and_rows_equal_batch(store, trades, "15s", sidecar.pipeline.version)
    store.close()
    online = open_online_store(redis_url, prefix=redis_prefix)
    latest = online.read_latest(*MARKET, "5s")
    assert latest is not None and latest.event_time_ns <= time.time_ns() + timeframe_ns("5s")
    online.close()
    sidecar.close()


# --- a recorded feed a year behind the wall clock, through the live Kraken source -----------------

async def test_a_feed_a_year_behind_gives_its_own_candles_and_no_flat_candle_up_to_now(tmp_path, redis_url,
                                                                                      redis_prefix) -> None:
    messages = [kraken_ws_trade_message(ROWS[i:i + 50], "BTC/USDT") for i in range(0, len(ROWS), 50)]
    trades = tape_trades(ROWS)
    assert time.time_ns() - trades[-1].time_ns > 300 * 24 * 3600 * NS  # recorded in 2025
    async with KrakenServer([Session(messages)]) as server:
        settings = settings_for(tmp_path, redis_url, redis_prefix, f"sqlite:///{tmp_path / 'offline.sqlite'}")
        source = KrakenSource(["BTC-USDT"], url=server.url, backfill=None, channels=("trade",),
                              reconnect=FAST_RECONNECT, ping_interval=None)
        sidecar = build_sidecar(settings, source, [MARKET], timeframes=["1m", "5m"], health_port=-1)
        started = time.time_ns()
        stop = asyncio.Event()
        running = asyncio.create_task(sidecar.run(stop))
        await wait_for_value(lambda: sidecar.pipeline.trades_in >= len(ROWS), timeout=20)
        await asyncio.sleep(0.5)  # several timer steps with the feed idle
        stop.set()
        summary = await asyncio.wait_for(running, timeout=20)
        elapsed = time.time_ns() - started
    assert summary.late == 0 and summary.malformed == 0 and summary.gaps == 0
    store = open_offline_store(settings.resolved_offline_url)
    for tf in ("1m", "5m"):
        assert_candles_and_rows_equal_batch(store, trades, tf, sidecar.pipeline.version)
        newest = stored_candles(store, tf)[-1]
        assert newest.start_ns <= trades[-1].time_ns + elapsed  # the feed's own time, never the wall clock's
    store.close()
    sidecar.close()


# --- a machine clock 10 s off the feed ------------------------------------------------------------

@pytest.mark.parametrize("skew_s", [-10, 10])
async def test_a_machine_clock_10s_off_the_feed_makes_no_trade_late(skew_s, tmp_path, redis_url,
                                                                    redis_prefix) -> None:
    tape = LiveTape(ROWS, per_second=50)
    async with KrakenServer([Session([Stream(tape.stream)]) for _ in range(5)]) as server:
        settings = settings_for(tmp_path, redis_url, redis_prefix, f"sqlite:///{tmp_path / 'offline.sqlite'}")
        source = KrakenSource(["BTC-USDT"], url=server.url, backfill=None, channels=("trade",),
                              reconnect=FAST_RECONNECT, ping_interval=None)
        sidecar = build_sidecar(settings, source, [MARKET], timeframes=["2s"], health_port=-1)
        sidecar.pipeline.wall_clock = lambda: time.time_ns() + skew_s * NS  # the machine's clock, skewed
        stop = asyncio.Event()
        running = asyncio.create_task(sidecar.run(stop))
        await wait_for_value(lambda: tape.listeners >= 1, timeout=10)
        await tape.play(300)  # 6 s
        await wait_for_value(lambda: sidecar.pipeline.trades_in >= len(tape.rows), timeout=10)
        await asyncio.sleep(2 + 2 + 0.5)
        stop.set()
        summary = await asyncio.wait_for(running, timeout=20)
    assert summary.late == 0 and summary.malformed == 0
    store = open_offline_store(settings.resolved_offline_url)
    assert assert_candles_and_rows_equal_batch(store, tape_trades(tape.rows), "2s", sidecar.pipeline.version) >= 3
    store.close()
    sidecar.close()


# --- one far-future trade among real ones --------------------------------------------------------

def test_one_trade_a_year_ahead_is_malformed_and_changes_nothing(redis_url, redis_prefix) -> None:
    ticks = list(islice(read_trades(DATA / "es_futures_ticks_2013-09.csv.gz", "ticks-csv", exchange="replay",
                                    symbol="ES-USD"), 20_000))
    year = 365 * 24 * 3600 * NS
    bogus = Trade("replay", "ES-USD", 10**9, ticks[10_000].time_ns + year, ticks[0].price, ticks[0].size, "buy")
    wall = [0]  # the machine's clock: the feed is live, so it reads the newest trade's time
    pipeline = Pipeline(("1m", "5m"), allowed_lateness_ns=2 * NS, wall_clock=lambda: wall[0])
    seconds = 0.0
    for i in range(0, len(ticks), 500):
        chunk = ticks[i:i + 500]
        wall[0] = chunk[-1].time_ns
        if i == 10_000:
            chunk = [bogus, *chunk]
            started = time.perf_counter()
            pipeline.on_trades(chunk)
            seconds = time.perf_counter() - started
        else:
            pipeline.on_trades(chunk)
    pipeline.advance(ticks[-1].time_ns + year)  # a timer step with a poisoned clock cannot jump either
    out = pipeline.drain()
    assert pipeline.malformed == 1 and out.malformed == [bogus]
    assert pipeline.late == 0 and pipeline.gaps == 0
    assert seconds < 0.5
    reference = Pipeline(("1m", "5m"), allowed_lateness_ns=2 * NS)
    reference.on_trades(ticks)
    expected = reference.drain()
    assert out.candles[:len(expected.candles)] == expected.candles
    assert max(c.start_ns for c in out.candles) < ticks[-1].time_ns + 5 * 60 * NS
    # the online store: a row beyond now plus one timeframe is refused, the real rows land
    store = open_online_store(redis_url, prefix=redis_prefix)
    sink = OnlineSink(store)
    rows = [r for r in out.rows if r.timeframe == "1m"]
    real_now = time.time_ns()
    shifted = [type(r)(r.exchange, r.symbol, r.timeframe, real_now - (len(rows) - i) * 60 * NS, r.feature_set_version,
                       r.values) for i, r in enumerate(rows)]
    poisoned = type(rows[0])("replay", "ES-USD", "1m", real_now + year, rows[0].feature_set_version, rows[0].values)
    sink.add_rows(shifted[:-1])
    sink.add_rows([poisoned])
    sink.add_rows(shifted[-1:])
    sink.flush_sync()
    latest = store.read_latest("replay", "ES-USD", "1m")
    assert latest.event_time_ns == shifted[-1].event_time_ns <= time.time_ns() + 60 * NS
    assert sink.stats.dropped_by_kind.get("rejected", 0) >= 1
    store.close()


# --- the sidecar killed (SIGKILL) and restarted from its checkpoint mid-run ------------------------

def _sidecar_process(env: dict, server_url: str, rest_url: str, port: int, log: Path) -> subprocess.Popen:
    with log.open("a") as stderr:  # a file, never a pipe nobody reads (a full pipe would block the process)
        return subprocess.Popen(
            [sys.executable, "-m", "rtml_stream", "--exchange", "kraken", "--symbols", "BTC-USDT", "--ws-url",
             server_url, "--rest-url", rest_url, "--no-book", "--timeframes", "5s,15s", "--health-port", str(port),
             "--json"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)


async def test_sigkill_and_a_restart_from_the_checkpoint_leave_the_candles_of_no_restart(
        tmp_path, redis_url, redis_prefix, fresh_postgres_url) -> None:
    tape = LiveTape(ROWS, per_second=40)
    server = KrakenServer([Session([Stream(tape.stream)]) for _ in range(50)])
    await server.start()
    env = {**os.environ, "RTML_HOME": str(tmp_path / "home"), "RTML_ONLINE_URL": redis_url,
           "RTML_ONLINE_PREFIX": redis_prefix, "RTML_OFFLINE_URL": fresh_postgres_url,
           "RTML_STREAM_DAGSTER": "off", "RTML_STREAM_CHECKPOINT_INTERVAL_S": "1"}
    checkpoint = tmp_path / "home" / "checkpoints" / "kraken" / "BTC-USDT.ckpt"
    port = free_port()
    with LocalHttpServer({"/0/public/Trades": kraken_trades_route(PAIR, tape.rows)}) as rest:
        log = tmp_path / "sidecar.log"
        first = _sidecar_process(env, server.url, rest.url, port, log)
        try:
            async with asyncio.timeout(60):
                while tape.listeners < 1:
                    assert first.poll() is None, log.read_text()[-3000:]
                    await asyncio.sleep(0.05)
            playing = asyncio.create_task(tape.play(720))  # 18 s of trades
            await asyncio.sleep(7)
            await wait_for_value(checkpoint.exists, timeout=10)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            killed_at = len(tape.rows)
            await asyncio.sleep(2)
            second = _sidecar_process(env, server.url, rest.url, port, log)
            try:
                await playing
                await asyncio.sleep(5 + 2 + 2)  # the idle clock closes the last 5 s window
                health_document = await health(port)
                second.send_signal(signal.SIGTERM)
                out, _ = await asyncio.to_thread(second.communicate, timeout=60)
            finally:
                if second.poll() is None:
                    second.kill()
        finally:
            if first.poll() is None:
                first.kill()
            await server.kill()
    assert second.returncode == 0, log.read_text()[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["started"] == {"kraken:BTC-USDT": "checkpoint"}
    assert summary["late_trades"] == 0 and health_document is not None and health_document["late_trades"] == 0
    assert 100 < killed_at < len(tape.rows) - 100
    store = open_offline_store(fresh_postgres_url)
    version = Pipeline(("5s",)).version
    trades = tape_trades(tape.rows)
    assert assert_candles_and_rows_equal_batch(store, trades, "5s", version) >= 3
    assert_candles_and_rows_equal_batch(store, trades, "15s", version)
    store.close()


# --- a gap too long to fill ----------------------------------------------------------------------

def test_a_gap_longer_than_max_fill_candles_is_recorded_offline_not_filled(offline_url) -> None:
    from rtml_stream.corrections import StreamOfflineSink, read_gaps

    ticks = list(islice(read_trades(DATA / "es_futures_ticks_2013-09.csv.gz", "ticks-csv", exchange="replay",
                                    symbol="ES-USD"), 4_000))
    days = 3 * 24 * 3600 * NS  # 4,320 one-minute windows without a trade: more than the 1,440 filled
    later = [Trade(t.exchange, t.symbol, t.trade_id, t.time_ns + days, t.price, t.size, t.side) for t in ticks[2_000:]]
    pipeline = Pipeline(("1m",), allowed_lateness_ns=2 * NS, wall_clock=lambda: later[-1].time_ns)
    pipeline.on_trades(ticks[:2_000])
    pipeline.on_trades(later)
    pipeline.flush_open()
    out = pipeline.drain()
    assert pipeline.gaps == 1 and len(out.gaps) == 1 and out.gaps[0].candles > 1_440
    expected = build_candles(ticks[:2_000], "1m", fill_gaps=True) + build_candles(later, "1m", fill_gaps=True)
    assert out.candles == expected  # both sides exact, nothing flat across the gap
    assert len(out.rows) == len(out.candles)
    store = open_offline_store(offline_url)
    sink = StreamOfflineSink(store)
    sink.add_candles(out.candles)
    sink.add_gaps(out.gaps)
    assert sink.flush_sync(now=sink.clock() + 60)
    (recorded,) = read_gaps(store, "replay", "ES-USD")
    gap = out.gaps[0]
    assert (recorded["timeframe"], recorded["from_ns"], recorded["to_ns"], recorded["candles"]) == (
        "1m", gap.from_ns, gap.to_ns, gap.candles)
    assert sink.settled() == {"candles": len(out.candles), "gaps": 1}
    store.close()


# --- late trades applied, not only recorded ------------------------------------------------------

def test_a_late_trade_rewrites_its_candle_and_the_feature_rows_after_it_offline(offline_url) -> None:
    from rtml_stream.corrections import StreamOfflineSink, read_corrections

    ticks = list(islice(read_trades(DATA / "es_futures_ticks_2013-09.csv.gz", "ticks-csv", exchange="replay",
                                    symbol="ES-USD"), 6_000))
    late = ticks[5_800]  # arrives after everything else: its 1m and 5m windows have closed
    pipeline = Pipeline(("1m", "5m"), allowed_lateness_ns=2 * NS, wall_clock=lambda: ticks[-1].time_ns)
    pipeline.on_trades(ticks[:5_800] + ticks[5_801:])
    pipeline.on_trades([late])
    pipeline.flush_open()
    out = pipeline.drain()
    assert pipeline.late == 2 and [c.timeframe for c in out.corrections] == ["1m", "5m"]
    assert pipeline.corrections_applied == 2
    batch = {tf: build_candles(ticks, tf, fill_gaps=True) for tf in ("1m", "5m")}
    for candle in out.corrected:
        assert candle in batch[candle.timeframe]  # the corrected candle is the batch candle, exactly
    store = open_offline_store(offline_url)
    spec = {"features": pipeline.feature_set.to_json(), "warmup": int(pipeline.feature_set.warmup)}
    sink = StreamOfflineSink(store, feature_set=pipeline.feature_set, feature_specs={pipeline.version: spec})
    sink.add_candles(out.candles)
    sink.add_rows(out.rows)
    sink.add_corrections(out.corrections)
    sink.add_corrected(out.corrected)
    assert sink.flush_sync(now=sink.clock() + 60) and sink.pending == 0
    assert len(read_corrections(store, "replay", "ES-USD")) == 2 and sink.rows_rebuilt > 0
    for tf in ("1m", "5m"):
        stored = store.read_candles("replay", "ES-USD", tf, exact=True)
        assert [str(v) for v in stored["volume"]] == [str(c.volume) for c in batch[tf]]
        assert [str(v) for v in stored["close"]] == [str(c.close) for c in batch[tf]]
        assert list(stored["trade_count"]) == [c.trade_count for c in batch[tf]]
        features = store.read_features("replay", "ES-USD", tf, pipeline.version)
        expected = compute_features(candles_to_frame(batch[tf]))
        names = [c for c in expected.columns if c != "time"]
        a, b = features[names].to_numpy(dtype="float64"), expected[names].to_numpy(dtype="float64")
        assert a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b))
        ok = ~np.isnan(b)
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9, atol=0)
    store.close()
