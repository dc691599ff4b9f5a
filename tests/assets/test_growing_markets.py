"""Markets that grow: REST sources, open-ended partitions, ``rtml history`` and ``rtml markets``.

A local HTTP server answers the exchanges' REST shapes from the real Kraken XBT/USDT trades
(tests/ingest/exchanges.py); the runs go through the Dagster assets and are recorded in the
instance under RTML_HOME.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
from pathlib import Path

import dagster as dg
import msgspec
import pandas as pd
import pytest
from click.testing import CliRunner

from rtml_assets.market_history.markets import MarketSource, load_markets
from rtml_assets.market_history.partitions import day_start_ns, market_day_partitions, partition_key
from rtml_cli.dagster_home import embedded_instance
from rtml_cli.main import cli
from rtml_core.candles import build_candles
from rtml_core.errors import InputError
from rtml_core.ingest import read_trades
from rtml_core.settings import Settings
from rtml_core.stores.offline import open_offline_store
from rtml_stream.sinks import OnlineSink
from tests.assets.helpers import check_results, definitions, materialized, run
from tests.ingest.exchanges import serve_exchange
from tests.ingest.realdata import KRAKEN_TRADES, kraken_rows, reference_candles, row_time_ns

DAY1, DAY2 = dt.date(2025, 11, 10), dt.date(2025, 11, 11)  # the recorded trades span these two days


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def rest_market(url: str, **fields) -> MarketSource:
    values = {"exchange": "kraken", "symbol": "BTC-USDT", "timeframe": "1m", "source": "kraken-rest",
              "rest_url": url, "first_day": DAY1}
    return MarketSource(**{**values, **fields})


def test_open_ended_partitions_extend_when_the_clock_moves():
    market = rest_market("http://127.0.0.1:1")
    partitions = market_day_partitions([market])

    def days(now: dt.datetime) -> list[str]:
        return sorted({key.keys_by_dimension["date"] for key in partitions.get_partition_keys(current_time=now)})

    assert days(utc(2025, 11, 11, 23, 59)) == ["2025-11-10"]  # 2025-11-11 is not over yet
    assert days(utc(2025, 11, 12, 0, 0, 1)) == ["2025-11-10", "2025-11-11"]
    assert days(utc(2025, 11, 14, 6)) == ["2025-11-10", "2025-11-11", "2025-11-12", "2025-11-13"]
    assert [str(d) for d in market.days(utc(2025, 11, 14, 6))] == days(utc(2025, 11, 14, 6))
    assert market.days(utc(2025, 11, 10, 12)) == []  # its first day is not over
    closed = market.model_copy(update={"last_day": DAY2})
    assert closed.days(utc(2026, 1, 1)) == [DAY1, DAY2]


def test_markets_file_names_rest_sources(tmp_path: Path):
    path = tmp_path / "markets.yaml"
    path.write_text(
        "markets:\n"
        "  - {exchange: kraken, symbol: XBTUSD, timeframe: 1m, source: kraken-rest, first_day: 2025-11-10,"
        " stream: true}\n"
        "  - {exchange: binance, symbol: BTCUSDT, timeframe: 5m, source: binance-rest, format: binance-klines,"
        " rest_url: 'http://127.0.0.1:9/', first_day: 2025-11-10}\n")
    kraken, binance = load_markets(path)
    assert (kraken.symbol, kraken.source, kraken.last_day, kraken.is_rest, kraken.stream) == (
        "BTC-USD", "kraken-rest", None, True, True)
    assert (binance.symbol, binance.has_trades, binance.rest_url) == ("BTC-USDT", False, "http://127.0.0.1:9/")
    for entry, problem in (
        ("{exchange: binance, symbol: BTCUSDT, timeframe: 1m, source: kraken-rest, first_day: 2025-11-10}",
         "serves exchange 'kraken'"),
        (("{exchange: kraken, symbol: XBTUSD, timeframe: 1m, source: kraken-rest, format: binance-klines,"
          " first_day: 2025-11-10}"), "takes format kraken-rest"),
        (("{exchange: kraken, symbol: XBTUSD, timeframe: 1m, source: trades.json, format: kraken-rest,"
          " first_day: 2025-11-10}"), "needs last_day"),
        ("{exchange: kraken, symbol: XBTUSD, timeframe: 1m, source: kraken-ftp, first_day: 2025-11-10}",
         "needs a format"),
        (("{exchange: binance, symbol: BTCUSDT, timeframe: 10m, source: binance-rest, format: binance-klines,"
          " first_day: 2025-11-10}"), "no 10m klines"),
    ):
        path.write_text(f"markets:\n  - {entry}\n")
        with pytest.raises(InputError, match=problem):
            load_markets(path)


def _env(tmp_path: Path, offline_url: str, markets_file: Path) -> dict[str, str | None]:
    return {"RTML_HOME": str(tmp_path / "home"), "RTML_OFFLINE_URL": offline_url,
            "RTML_MARKETS_FILE": str(markets_file), "DAGSTER_HOME": None}


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_history_sync_two_days_from_kraken_rest_and_export_equals_rtml_candles(offline_url: str, tmp_path: Path):
    runner = CliRunner()
    with serve_exchange() as (url, script):
        markets_file = tmp_path / "markets.yaml"
        markets_file.write_text(
            "markets:\n"
            f"  - {{exchange: kraken, symbol: XBTUSDT, timeframe: 1m, source: kraken-rest, rest_url: '{url}',"
            " first_day: 2025-11-10}\n")
        env = _env(tmp_path, offline_url, markets_file)
        result = runner.invoke(cli, ["history", "sync", "--since", "2025-11-10", "--until", "2025-11-11"], env=env)
        assert result.exit_code == 0, result.output + str(result.exception)
        assert "kraken_BTC-USDT_1m: 2 days in range, 2 to materialize" in result.output
        assert "2025-11-10..2025-11-11: run" in result.output and "done" in result.output
        trade_pages = script.paths("/0/public/Trades")
        assert len(trade_pages) >= 2  # one fetch per day at least
        again = runner.invoke(cli, ["history", "sync", "--exchange", "kraken", "--symbol", "XBTUSDT",
                                    "--since", "2025-11-10", "--until", "2025-11-11"], env=env)
        assert again.exit_code == 0, again.output
        assert "2 days in range, 0 to materialize" in again.output
        assert script.paths("/0/public/Trades") == trade_pages  # nothing fetched twice
        listed = runner.invoke(cli, ["markets", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.splitlines()[:2]
    assert header.split()[:3] == ["market", "exchange", "symbol"]
    assert row.split()[:5] == ["kraken_BTC-USDT_1m", "kraken", "BTC-USDT", "1m", "kraken-rest"]
    assert "2025-11-10..open" in row and row.split()[-2:] == ["2025-11-11", "no"]  # last stored day, stream

    instance = embedded_instance(Settings(home=tmp_path / "home"), persistent=True)
    try:
        materialized = instance.get_materialized_partitions(dg.AssetKey("validated_candles"))
    finally:
        instance.dispose()
    assert materialized == {str(partition_key(d, "kraken_BTC-USDT_1m")) for d in (DAY1, DAY2)}
    store = open_offline_store(offline_url)
    try:
        stored = store.read_trades("kraken", "BTC-USDT")
    finally:
        store.close()
    assert list(stored["trade_id"]) == [t.trade_id for t in read_trades(KRAKEN_TRADES, "kraken-rest")]

    exported, reference = tmp_path / "exported.csv", tmp_path / "reference.csv"
    result = runner.invoke(cli, ["history", "export", "--exchange", "kraken", "--symbol", "XBTUSDT",
                                 "--timeframe", "1m", "--since", "2025-11-10", "--until", "2025-11-11",
                                 "--output", str(exported)], env=env)
    assert result.exit_code == 0, result.output + str(result.exception)
    result = runner.invoke(cli, ["candles", str(KRAKEN_TRADES), "--format", "kraken-rest", "--timeframe", "1m",
                                 "--output", str(reference)])
    assert result.exit_code == 0, result.output
    assert _read_csv(exported) == _read_csv(reference)
    assert len(_read_csv(exported)) == len(reference_candles(kraken_rows(), 60)) + 1
    day2 = tmp_path / "day2.csv"
    result = runner.invoke(cli, ["history", "export", "--exchange", "kraken", "--symbol", "BTC-USDT",
                                 "--timeframe", "1m", "--since", "2025-11-11", "--output", str(day2)], env=env)
    assert result.exit_code == 0
    assert _read_csv(day2)[1:] == [r for r in _read_csv(reference)[1:] if r[0].startswith("2025-11-11")]
    result = runner.invoke(cli, ["history", "export", "--exchange", "kraken", "--symbol", "BTC-USDT",
                                 "--timeframe", "5m", "--output", str(day2)], env=env)
    assert result.exit_code == 2 and "no stored 5m candles of kraken BTC-USDT" in result.stderr
    result = runner.invoke(cli, ["history", "sync", "--since", "11/10/2025"], env=env)
    assert result.exit_code == 2 and "--since '11/10/2025' is not a UTC day" in result.stderr


FIELDS = ["open", "high", "low", "close", "volume", "trade_count"]


def _stored_day(offline_url: str, exchange: str, start: int, end: int):
    """The stored trades and 1m candles (exact) of one exchange's BTC-USDT in ``[start, end)``."""
    store = open_offline_store(offline_url)
    try:
        return (store.read_trades(exchange, "BTC-USDT", start, end),
                store.read_candles(exchange, "BTC-USDT", "1m", start, end, exact=True))
    finally:
        store.close()


@pytest.mark.parametrize(("source", "unit_ns"), [("binance-rest", 1_000_000), ("coinbase-rest", 1_000)],
                         ids=["binance-aggTrades", "coinbase-trades"])
def test_rest_trade_sources_fill_a_day_with_the_candles_of_their_trades(offline_url: str, tmp_path: Path,
                                                                        source: str, unit_ns: int):
    start, end = day_start_ns(DAY1), day_start_ns(DAY2)
    exchange = source.removesuffix("-rest")
    with serve_exchange() as (url, _):
        market = MarketSource(exchange=exchange, symbol="BTC-USDT", timeframe="1m", source=source, rest_url=url,
                              first_day=DAY1)
        result = run(definitions(tmp_path, offline_url, [market]), ["raw_trades", "validated_candles"],
                     day=DAY1, market=market)
    assert result.success
    assert all(c.passed for name, c in check_results(result).items() if "gaps" not in name)
    trades, candles = _stored_day(offline_url, exchange, start, end)
    # the recorded trades at the exchange's time resolution (Binance ms, Coinbase µs)
    served = [msgspec.structs.replace(t, time_ns=t.time_ns // unit_ns * unit_ns)
              for t in read_trades(KRAKEN_TRADES, "kraken-rest") if start <= t.time_ns < end]
    assert list(trades["trade_id"]) == [t.trade_id for t in served]
    assert list(trades["side"]) == [t.side for t in served]  # taker sides, whatever the exchange reports
    assert [tuple(getattr(c, f) for f in FIELDS) for c in build_candles(served, "1m")] == list(
        candles[FIELDS].itertuples(index=False, name=None))


def test_binance_klines_market_stores_the_exchange_candles(offline_url: str, tmp_path: Path):
    start, end = day_start_ns(DAY1), day_start_ns(DAY2)
    with serve_exchange() as (url, script):
        market = MarketSource(exchange="binance", symbol="BTC-USDT", timeframe="1m", source="binance-rest",
                              format="binance-klines", rest_url=url, first_day=DAY1)
        result = run(definitions(tmp_path, offline_url, [market]), ["raw_trades", "validated_candles"],
                     day=DAY1, market=market)
        assert result.success
        assert len(script.paths("/api/v3/klines")) == 1
    trades, klines = _stored_day(offline_url, "binance", start, end)
    assert trades.empty  # a candle source writes no trades
    reference = reference_candles([r for r in kraken_rows() if start <= row_time_ns(r) < end], 60)
    assert list(klines[FIELDS].itertuples(index=False, name=None)) == [
        (c["open"], c["high"], c["low"], c["close"], c["volume"], c["count"]) for c in reference]


async def _stream_day(offline_url: str, tmp_path: Path, rows: list[list]) -> int:
    """The sidecar streams ``rows`` from a local Kraken WebSocket server into the offline store;
    returns how many closed 1m candles it logged."""
    from rtml_core.stores.online import open_online_store
    from rtml_stream.app import Sidecar, SidecarOptions
    from rtml_stream.corrections import StreamOfflineSink
    from rtml_stream.metrics import StreamMetrics
    from rtml_stream.pipeline import Pipeline
    from rtml_stream.sources.kraken import KrakenSource
    from tests.stream.helpers import FAST_RECONNECT
    from tests.stream.wsservers import KrakenServer, Session, kraken_ws_trade_message

    server = KrakenServer([Session([kraken_ws_trade_message(rows[i:i + 50], "BTC/USDT")
                                    for i in range(0, len(rows), 50)])])
    await server.start()
    metrics = StreamMetrics()
    source = KrakenSource(["BTC-USDT"], url=server.url, metrics=metrics, channels=("trade",), idle_timeout=1.0,
                          reconnect=FAST_RECONNECT, ping_interval=None)
    offline = open_offline_store(offline_url)
    sidecar = Sidecar(source, Pipeline(("1m",)),
                      OnlineSink(open_online_store(f"sqlite:///{tmp_path / 'online.sqlite'}"), coalesce_ms=20),
                      offline_sink=StreamOfflineSink(offline, flush_interval_s=0.05), metrics=metrics,
                      options=SidecarOptions(coalesce_ms=20, max_trades=len(rows)), markets=[("kraken", "BTC-USDT")])
    try:
        await asyncio.wait_for(sidecar.run(), timeout=30)
    finally:
        await server.kill()
    logged = len(offline.read_candles("kraken", "BTC-USDT", "1m"))
    sidecar.close()
    return logged


@pytest.mark.parametrize("exchange_lacks", [None, 10218400], ids=["same-trades", "exchange-lacks-one"])
def test_streamed_day_reconciles_with_the_exchange_rest_history(tmp_path: Path, exchange_lacks: int | None):
    offline_url = f"sqlite:///{tmp_path / 'offline.sqlite'}"
    start, end = day_start_ns(DAY1), day_start_ns(DAY2)
    rows = [r for r in kraken_rows() if start <= row_time_ns(r) < end]
    logged = asyncio.run(_stream_day(offline_url, tmp_path, rows))
    assert logged > 100
    with serve_exchange() as (url, script):
        if exchange_lacks:
            script.drop_ids = {exchange_lacks}
        market = rest_market(url, stream=True, last_day=DAY2)
        result = run(definitions(tmp_path, offline_url, [market]), ["raw_trades", "validated_candles"],
                     day=DAY1, market=market)
    candles = materialized(result)["validated_candles"][0].metadata
    assert candles["stream_candles"].value == logged  # the sidecar's candles are the day's candles
    check = check_results(result)["check_validated_candles_match_exchange"]
    assert check.metadata["compared_candles"].value == len(reference_candles(rows, 60))
    if exchange_lacks is None:
        assert check.passed and check.metadata["mismatched_candles"].value == 0
        return
    missing = next(r for r in rows if r[6] == exchange_lacks)
    minute = pd.Timestamp(row_time_ns(missing) // 60_000_000_000 * 60_000_000_000, unit="ns", tz="UTC")
    assert not check.passed and check.metadata["mismatched_candles"].value == 1
    table = check.metadata["mismatches"].value
    assert str(minute) in table and "trade_count" in table and "volume" in table


def test_the_sync_schedule_asks_for_each_new_day_as_the_clock_moves(offline_url: str, tmp_path: Path):
    with serve_exchange() as (url, _), dg.instance_for_test() as instance:
        market = rest_market(url)
        defs = definitions(tmp_path, offline_url, [market])
        schedule = defs.resolve_schedule_def("market_history_sync")
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING

        def tick(now: dt.datetime):
            with dg.build_schedule_context(instance=instance, scheduled_execution_time=now,
                                           repository_def=defs.get_repository_def()) as context:
                return schedule.evaluate_tick(context)

        first = tick(utc(2025, 11, 12, 0, 15))
        assert [r.partition_key for r in first.run_requests] == [
            str(partition_key(d, market)) for d in (DAY1, DAY2)]
        job = defs.resolve_job_def(schedule.job_name)
        for request in first.run_requests:
            result = job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}})
            assert result.success
            done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
            assert done == {"raw_trades", "validated_candles", "indicator_table",  # features land for the automation
                            "microstructure_table"}
        assert "every recent day" in tick(utc(2025, 11, 12, 6)).skip_message
        later = tick(utc(2025, 11, 13, 0, 15))  # the clock moved a day: one new partition
        assert [r.partition_key for r in later.run_requests] == [str(partition_key(dt.date(2025, 11, 12), market))]



def test_a_synced_day_makes_the_training_automation_retrain_that_market(offline_url: str, tmp_path: Path):
    """A new day from the exchange (the sync schedule's run: history and features) is what makes the
    declarative automation ask for the market's training set; nothing calls training directly."""
    with serve_exchange() as (url, _), dg.instance_for_test() as instance:
        market = rest_market(url)
        defs = definitions(tmp_path, offline_url, [market])
        training = dg.AssetKey("training_set")
        evaluation_time = utc(2025, 11, 12, 0, 30)
        before = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=evaluation_time)
        assert before.get_requested_partitions(training) == set()  # nothing new yet
        job = defs.resolve_job_def("market_history_sync_job")
        result = job.execute_in_process(instance=instance, partition_key=str(partition_key(DAY1, market)),
                                        run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}})
        assert result.success
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor,
                                                  evaluation_time=evaluation_time)
        assert after.get_requested_partitions(training) == {market.key}
        quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after.cursor,
                                                  evaluation_time=evaluation_time)
        assert quiet.get_requested_partitions(training) == set()  # asked once per new data
