"""The sidecar end to end: `rtml stream` replaying real ticks into real Redis / embedded SQLite,
SIGTERM in a subprocess, restart from the checkpoint, Kraken disconnects and bad messages, a store
that is down (health 503, keeps consuming), symbols split between processes, Dagster reporting."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import httpx
import msgspec
import pytest
from click.testing import CliRunner

from rtml_cli.main import cli
from rtml_core.ingest import read_trades
from rtml_core.settings import Settings
from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.online import open_online_store
from rtml_stream.app import Sidecar, SidecarOptions, build_sidecar
from rtml_stream.checkpoint import MarketCheckpoint
from rtml_stream.metrics import StreamMetrics
from rtml_stream.pipeline import Pipeline
from rtml_stream.sinks import OnlineSink
from rtml_stream.sources.kraken import KrakenSource
from rtml_stream.sources.replay import ReplaySource
from tests.conftest import DATA
from tests.stream.helpers import FAST_RECONNECT, first_lines, free_port, wait_for_value
from tests.stream.wsservers import (
    KrakenServer,
    LocalHttpServer,
    Session,
    Verbatim,
    kraken_rest_trades,
    kraken_trades_route,
    kraken_ws_trade_message,
)

ES_TICKS = DATA / "es_futures_ticks_2013-09.csv.gz"
REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


@pytest.fixture(scope="module")
def es_slice(tmp_path_factory) -> Path:
    """The first 20,000 real ES ticks as a plain CSV (header + rows, unchanged)."""
    return first_lines(ES_TICKS, tmp_path_factory.mktemp("ticks") / "es_20k.csv", 20_000)


def expected_rows(path: Path, timeframes=("1m", "5m"), lateness_ns=2_000_000_000):
    pipeline = Pipeline(timeframes, allowed_lateness_ns=lateness_ns)
    pipeline.on_trades(read_trades(path, "ticks-csv", exchange="replay", symbol="ES-USD"))
    pipeline.flush_open()
    return pipeline.drain()


def env_for(tmp_path: Path, online: tuple[str, str] | None = None, **extra) -> dict[str, str]:
    env = {"RTML_HOME": str(tmp_path / "home"), "RTML_STREAM_METRICS_PORT": "0", "RTML_STREAM_DAGSTER": "off"}
    if online is not None:
        env["RTML_ONLINE_URL"], env["RTML_ONLINE_PREFIX"] = online
    env.update(extra)
    return env


def test_rtml_stream_replay_writes_online_and_offline_and_online_get_reads_it(es_slice, tmp_path, online_url,
                                                                             monkeypatch) -> None:
    env = env_for(tmp_path, online_url)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    result = runner.invoke(cli, ["stream", "--exchange", "replay", "--replay", str(es_slice), "--speed", "0",
                                 "--symbols", "ES-USD", "--timeframes", "1m,5m", "--json", "--log-format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    expected = expected_rows(es_slice)
    assert summary["trades"] == 20_000 and summary["feature_rows"] == len(expected.rows)
    assert summary["online_pending"] == 0 and summary["offline_pending"] == 0

    for tf in ("1m", "5m"):
        last = [r for r in expected.rows if r.timeframe == tf][-1]
        got = runner.invoke(cli, ["online", "get", "--exchange", "replay", "--symbol", "ES-USD", "--timeframe", tf,
                                  "--json"])
        assert got.exit_code == 0, got.output
        document = json.loads(got.stdout)
        assert document["event_time_ns"] == last.event_time_ns
        assert document["feature_set_version"] == last.feature_set_version
        for name, value in last.values.items():
            assert document["values"][name] == (None if value != value else pytest.approx(value, rel=1e-15))

    store = open_online_store(*online_url)
    history = store.read_history("replay", "ES-USD", "1m", 5)
    newest_first = sorted((r.event_time_ns for r in expected.rows if r.timeframe == "1m"), reverse=True)
    assert [r.event_time_ns for r in history] == newest_first[:5]
    live = store.read_live("replay", "ES-USD")
    assert live is not None and live.values["flow_trade_count"] > 0
    store.close()

    offline = open_offline_store(Settings(home=tmp_path / "home").resolved_offline_url)
    candles = offline.read_candles("replay", "ES-USD", "1m")
    assert len(candles) == len([c for c in expected.candles if c.timeframe == "1m"])
    features = offline.read_features("replay", "ES-USD", "5m", expected.rows[0].feature_set_version)
    assert len(features) == len([r for r in expected.rows if r.timeframe == "5m"])
    offline.close()


def test_sigterm_exits_0_with_a_checkpoint_and_the_restart_continues_exactly(es_slice, tmp_path,
                                                                             redis_url, redis_prefix) -> None:
    port = free_port()
    env = {**os.environ, **env_for(tmp_path, (redis_url, redis_prefix))}
    args = [PYTHON, "-m", "rtml_stream", "--exchange", "replay", "--replay", str(es_slice), "--symbols", "ES-USD",
            "--timeframes", "1m,5m", "--json", "--health-port", str(port)]
    process = subprocess.Popen([*args, "--speed", "2000"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                if health["trades"] > 2_000:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the sidecar never got going"
            time.sleep(0.1)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        assert "rtml_stream_trades_in_total" in metrics and "rtml_stream_close_to_online_seconds" in metrics
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    first = json.loads(out.strip().splitlines()[-1])
    assert 2_000 < first["trades"] < 20_000
    checkpoint = tmp_path / "home" / "checkpoints" / "replay" / "ES-USD.ckpt"
    cp = msgspec.msgpack.decode(checkpoint.read_bytes(), type=MarketCheckpoint)
    assert cp.last_trade_id == first["trades"]  # ES tick ids are 1..n in file order

    again = subprocess.run([*args, "--speed", "max"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout.strip().splitlines()[-1])
    assert second["started"] == {"replay:ES-USD": "checkpoint"}
    assert second["duplicates_skipped"] == first["trades"] and second["late_trades"] == 0
    assert first["feature_rows"] + second["feature_rows"] == len(expected_rows(es_slice).rows)
    expected = expected_rows(es_slice)
    store = open_online_store(redis_url, redis_prefix)
    for tf in ("1m", "5m"):
        last = [r for r in expected.rows if r.timeframe == tf][-1]
        row = store.read_latest("replay", "ES-USD", tf)
        assert row.event_time_ns == last.event_time_ns
        for name, value in last.values.items():
            assert (value != value and row.values[name] != row.values[name]) or row.values[name] == pytest.approx(
                value, rel=1e-9)
    store.close()


# --- Kraken: disconnects, gap backfill, bad messages -------------------------------------------

PAIR, ROWS = kraken_rest_trades(DATA / "kraken_xbtusdt_trades_rest.json")
BAD = [Verbatim("not json at all"), Verbatim('{"channel":"trade","type":"update","data":[{"symbol":"BTC/USDT"}]}'),
       Verbatim('{"channel":"mystery","data":[]}'), Verbatim('{"channel":"trade","type":"update","data":"x"}')]


def _messages(rows):
    return [kraken_ws_trade_message(rows[i:i + 50], "BTC/USDT") for i in range(0, len(rows), 50)]


async def _kraken_candles(tmp_path: Path, sessions, *, kill_after: int | None = None, rest_url: str | None = None):
    server = KrakenServer(sessions)
    await server.start()
    metrics = StreamMetrics()
    backfill = None
    if rest_url is not None:
        from rtml_core.ingest.backfill import KrakenRestClient

        backfill = KrakenRestClient(base_url=rest_url, min_interval_s=0.0, max_attempts=2,
                                    backoff_s=0.01).trades_between_ids
    source = KrakenSource(["BTC-USDT"], url=server.url, metrics=metrics, channels=("trade",), backfill=backfill,
                          idle_timeout=1.0, reconnect=FAST_RECONNECT, ping_interval=None)
    offline = open_offline_store(f"sqlite:///{tmp_path / 'offline.sqlite'}")
    from rtml_stream.corrections import StreamOfflineSink

    sidecar = Sidecar(source, Pipeline(("1m", "5m")),
                      OnlineSink(open_online_store(f"sqlite:///{tmp_path / 'online.sqlite'}"), coalesce_ms=20),
                      offline_sink=StreamOfflineSink(offline, flush_interval_s=0.05), metrics=metrics,
                      options=SidecarOptions(coalesce_ms=20, max_trades=len(ROWS)),
                      markets=[("kraken", "BTC-USDT")])
    task = asyncio.create_task(sidecar.run())
    if kill_after is not None:
        await wait_for_value(lambda: sidecar.pipeline.trades_in >= kill_after, timeout=10)
        await server.kill()
        await asyncio.sleep(0.3)
        await server.start()
    summary = await asyncio.wait_for(task, timeout=20)
    await server.kill()
    candles = {tf: offline.read_candles("kraken", "BTC-USDT", tf, exact=True) for tf in ("1m", "5m")}
    sidecar.close()
    return summary, candles, metrics


async def test_kraken_kill_and_restart_gives_the_candles_of_no_disconnect(tmp_path) -> None:
    _, expected, _ = await _kraken_candles(tmp_path / "a", [Session(_messages(ROWS))])
    with LocalHttpServer({"/0/public/Trades": kraken_trades_route(PAIR, ROWS)}) as rest:
        sessions = [Session(BAD[:2] + _messages(ROWS[:300]) + BAD[2:]), Session(_messages(ROWS[500:]))]
        summary, got, metrics = await _kraken_candles(tmp_path / "b", sessions, kill_after=300, rest_url=rest.url)
    assert summary.trades == len(ROWS) and summary.late == 0
    assert metrics.value("gaps_backfilled", exchange="kraken", symbol="BTC-USDT") == 1
    assert metrics.total("malformed_messages", exchange="kraken") == 4  # counted, skipped, process alive
    for tf in ("1m", "5m"):
        assert len(got[tf]) > 3
        assert got[tf].drop(columns=["vwap"]).equals(expected[tf].drop(columns=["vwap"]))
        assert [str(v) for v in got[tf]["vwap"]] == [str(v) for v in expected[tf]["vwap"]]


# --- store down: keep consuming, unhealthy, no crash ---------------------------------------------

async def test_redis_down_keeps_consuming_buffered_and_reports_unhealthy(es_slice, tmp_path) -> None:
    settings = Settings(home=tmp_path / "home", online_url="redis://127.0.0.1:1/0", stream_offline_log=False,
                        stream_dagster="off")
    trades = list(islice(read_trades(es_slice, "ticks-csv", exchange="replay", symbol="ES-USD"), 20_000))
    source = ReplaySource(trades, speed=3000)
    sidecar = build_sidecar(settings, source, [("replay", "ES-USD")], timeframes=["1m"], health_port=0)
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop))
    await wait_for_value(lambda: sidecar.health_server is not None and sidecar.online_sink.stats.write_errors > 0,
                         timeout=15)
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"http://127.0.0.1:{sidecar.health_server.port}/health")
        metrics = (await client.get(f"http://127.0.0.1:{sidecar.health_server.port}/metrics")).text
    before = sidecar.pipeline.trades_in
    await wait_for_value(lambda: sidecar.pipeline.trades_in > before + 500, timeout=10)
    stop.set()
    sidecar.options.drain_timeout_s = 0.2
    summary = await asyncio.wait_for(task, timeout=20)
    assert reply.status_code == 503
    body = reply.json()
    assert body["status"] == "unhealthy" and any("online store failing" in r for r in body["reasons"])
    assert "rtml_stream_store_errors_total" in metrics and "rtml_stream_healthy 0.0" in metrics
    assert summary.rows > 0 and summary.online["pending"] > 0  # kept, not lost and not crashed
    assert not summary.checkpoint_files  # held back: a checkpoint never runs ahead of what was stored


# --- scale-out: processes split symbols, no shared state -----------------------------------------

def test_two_sidecar_processes_split_symbols_into_one_redis(es_slice, tmp_path, redis_url, redis_prefix) -> None:
    """Two processes, one market each, same Redis prefix and checkpoint directory: nothing shared."""
    env = {**os.environ, **env_for(tmp_path, (redis_url, redis_prefix))}
    processes = [
        subprocess.Popen([PYTHON, "-m", "rtml_stream", "--exchange", "replay", "--replay", str(es_slice),
                          "--symbols", symbol, "--timeframes", "1m", "--max-trades", "8000", "--json",
                          "--health-port", "-1"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for symbol in ("ES-USD", "NQ-USD")
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    first, second = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    assert first["feature_rows"] == second["feature_rows"] > 0
    store = open_online_store(redis_url, redis_prefix)
    es, nq = store.read_latest("replay", "ES-USD", "1m"), store.read_latest("replay", "NQ-USD", "1m")
    assert es is not None and nq is not None and es.values == nq.values  # same ticks, separate keys
    store.close()
    assert sorted(p.name for p in (tmp_path / "home" / "checkpoints" / "replay").iterdir()) == ["ES-USD.ckpt",
                                                                                                "NQ-USD.ckpt"]


# --- Dagster ------------------------------------------------------------------------------------

def test_dagster_external_asset_gets_throttled_materializations(tmp_path) -> None:
    import dagster as dg

    from rtml_core.schemas import FeatureRow
    from rtml_assets.online import online_features_spec
    from rtml_stream.dagster_report import DagsterReporter, DagsterTarget

    defs = dg.Definitions(assets=[online_features_spec()])
    node = defs.resolve_asset_graph().get(dg.AssetKey("online_features"))
    assert node.group_name == "online" and node.freshness_policy is not None
    now = [1000.0]
    with dg.DagsterInstance.ephemeral() as instance:
        reporter = DagsterReporter(DagsterTarget("instance", instance=instance), interval_s=60, clock=lambda: now[0])
        row = FeatureRow("kraken", "BTC-USD", "1m", 1_700_000_060_000_000_000, "v1", {"x": 1.0})
        reporter.note_rows([row], {("kraken", "BTC-USD", "1m", row.event_time_ns): 0.7})
        assert reporter.report_due() == 1
        reporter.note_rows([row])
        now[0] += 10
        assert reporter.report_due() == 0  # throttled: once a minute per market
        now[0] += 60
        assert reporter.report_due() == 1
        event = instance.get_latest_materialization_event(dg.AssetKey("online_features"))
        metadata = event.asset_materialization.metadata
        assert metadata["symbol"].value == "BTC-USD" and metadata["rows_written"].value == 2
        assert metadata["last_event_time_ns"].value == row.event_time_ns
    failing = DagsterReporter(DagsterTarget("http://127.0.0.1:1"), interval_s=0)
    failing.note_rows([row])
    assert failing.report_due() == 0 and failing.failures == 1  # Dagster down never stops the stream
