"""``rtml candles`` and ``rtml import`` end to end on the real files."""

from __future__ import annotations

import gzip
import itertools
from decimal import Decimal

from click.testing import CliRunner

from rtml_cli.main import cli
from rtml_core.candles import build_candles, candle_csv_row
from rtml_core.ingest import read_candles, read_trades
from rtml_core.stores.offline import open_offline_store
from tests.ingest.realdata import BTC_30M, COINBASE_1H, ES_TICKS, KRAKEN_TRADES, write_kraken_ohlc


def _run(args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def test_candles_command_on_kraken_trades(tmp_path):
    out = tmp_path / "k.csv"
    result = _run(
        ["candles", KRAKEN_TRADES, "--format", "kraken-rest", "--timeframe", "5m", "--output", out]
    )
    assert result.exit_code == 0, result.stderr
    expected = build_candles(read_trades(KRAKEN_TRADES, "kraken-rest"), "5m")
    lines = out.read_text().splitlines()
    assert lines[0] == "time,open,high,low,close,volume,vwap,trade_count"
    assert lines[1:] == [",".join(candle_csv_row(c)) for c in expected]
    filled = tmp_path / "f.csv"
    result = _run(
        [
            "candles",
            KRAKEN_TRADES,
            "--format",
            "kraken-rest",
            "--timeframe",
            "1m",
            "-o",
            filled,
            "--fill-gaps",
        ]
    )
    assert result.exit_code == 0
    rows = filled.read_text().splitlines()[1:]
    with_trades = [r for r in rows if not r.endswith(",0")]
    assert len(with_trades) == len(build_candles(read_trades(KRAKEN_TRADES, "kraken-rest"), "1m"))
    assert rows[0].startswith("2025-11-10T17:23:00Z,") and rows[-1].startswith(
        "2025-11-11T00:13:00Z,"
    )
    assert len(rows) == 6 * 60 + 50 + 1  # every minute from 17:23 to 00:13


def test_candles_command_on_the_500k_ticks(tmp_path):
    out = tmp_path / "es.csv"
    result = _run(
        ["candles", ES_TICKS, "--format", "ticks-csv", "--timeframe", "1m", "--output", out]
    )
    assert result.exit_code == 0, result.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 2264
    assert (
        lines[1] == "2013-09-01T17:00:00Z,1640.25,1641.0,1639.0,1639.75,3940,"
        "1639.985088832487309644670051,893"
    )
    assert sum(int(line.rsplit(",", 1)[1]) for line in lines[1:]) == 500_000


def test_import_trades_is_idempotent_and_exact(tmp_path, offline_url):
    env = {"RTML_OFFLINE_URL": offline_url}
    result = _run(["import", KRAKEN_TRADES, "--format", "kraken-rest"], env)
    assert result.exit_code == 0, result.stderr
    assert result.output.startswith(
        f"imported 1000 trades from {KRAKEN_TRADES}: 1000 new or changed"
    )
    again = _run(["import", KRAKEN_TRADES, "--format", "kraken-rest"], env)
    assert again.exit_code == 0 and again.output.startswith(
        f"imported 1000 trades from {KRAKEN_TRADES}: 0 new or changed"
    )
    store = open_offline_store(offline_url)
    try:
        frame = store.read_trades("kraken", "BTC-USDT", exact=True)
    finally:
        store.close()
    expected = list(read_trades(KRAKEN_TRADES, "kraken-rest"))
    assert list(frame["trade_id"]) == [t.trade_id for t in expected]
    assert [Decimal(p) for p in frame["price"]] == [t.price for t in expected]
    assert [Decimal(s) for s in frame["size"]] == [t.size for t in expected]
    assert list(frame["side"]) == [t.side for t in expected]


def test_import_candles_from_csv_and_kraken_ohlc(tmp_path, offline_url):
    env = {"RTML_OFFLINE_URL": offline_url}
    small = tmp_path / "btc_30m.csv"
    with gzip.open(BTC_30M, "rt") as handle:
        small.write_text("".join(itertools.islice(handle, 301)))
    result = _run(
        [
            "import",
            small,
            "--format",
            "candles-csv",
            "--timeframe",
            "30m",
            "--symbol",
            "BTC-USD",
            "--exchange",
            "poloniex",
            "--batch-size",
            "120",
        ],
        env,
    )
    assert result.exit_code == 0, result.stderr
    assert result.output.startswith(f"imported 300 candles from {small}: 300 new or changed")
    coinbase = tmp_path / "cb.csv"
    with gzip.open(COINBASE_1H, "rt") as handle:
        coinbase.write_text("".join(itertools.islice(handle, 202)))
    result = _run(
        [
            "import",
            coinbase,
            "--format",
            "candles-csv",
            "--timeframe",
            "1h",
            "--exchange",
            "coinbase",
        ],
        env,
    )
    assert result.exit_code == 0 and result.output.startswith(
        f"imported 200 candles from {coinbase}: 200 new"
    ), result.stderr
    ohlc = tmp_path / "ohlc.json"
    write_kraken_ohlc(ohlc, 300)
    result = _run(["import", ohlc, "--format", "kraken-ohlc"], env)
    assert result.exit_code == 0, result.stderr
    store = open_offline_store(offline_url)
    try:
        polo = store.read_candles("poloniex", "BTC-USD", "30m")
        cb = store.read_candles("coinbase", "BTC-USD", "1h")
        kraken = store.read_candles("kraken", "BTC-USD", "5m")
    finally:
        store.close()
    expected = list(read_candles(small, "candles-csv", timeframe="30m", symbol="BTC-USD"))
    assert len(polo) == 300 and list(polo["open"]) == [float(c.open) for c in expected]
    assert len(cb) == 200 and cb["time"].is_monotonic_increasing
    assert len(kraken) == len(list(read_candles(ohlc, "kraken-ohlc")))


def test_bad_file_import_keeps_what_was_stored(tmp_path, offline_url):
    env = {"RTML_OFFLINE_URL": offline_url}
    assert _run(["import", KRAKEN_TRADES, "--format", "kraken-rest"], env).exit_code == 0
    text = KRAKEN_TRADES.read_text()
    position = text.index('"105433.60000"')
    broken = tmp_path / "broken.json"
    broken.write_text(text[:position] + '"-105433.6"' + text[position + 14 :])
    result = _run(["import", broken, "--format", "kraken-rest"], env)
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {broken}, line ")
    result = _run(
        ["import", KRAKEN_TRADES, "--format", "binance-trades", "--symbol", "BTC-USDT"], env
    )
    assert result.exit_code == 2
    store = open_offline_store(offline_url)
    try:
        frame = store.read_trades("kraken", "BTC-USDT", exact=True)
    finally:
        store.close()
    assert len(frame) == 1000 and Decimal(frame["price"].iloc[0]) == Decimal("105433.60000")
