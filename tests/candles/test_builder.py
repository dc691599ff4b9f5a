"""The candle builder on real trades, checked against independent computations."""

from __future__ import annotations

import itertools
import random
from decimal import Decimal

import pandas as pd
import pytest

from rtml_core.candles import (
    CandleBuilder,
    build_candles,
    candles_to_frame,
    fill_gaps,
    write_candles_csv,
)
from rtml_core.ingest import read_kraken_trades, read_tick_csv
from rtml_core.schemas import Candle, Trade
from rtml_core.times import iso_from_ns
from tests.candles.each_timeframe import candles_of_each_timeframe
from tests.ingest.realdata import ES_TICKS, KRAKEN_TRADES, VWAP, kraken_rows, reference_candles

NS = 1_000_000_000


@pytest.fixture(scope="module")
def kraken_trades() -> list[Trade]:
    return list(read_kraken_trades(KRAKEN_TRADES))


def _as_reference(candle: Candle) -> dict:
    return {
        "start_ns": candle.start_ns,
        "open": candle.open,
        "high": candle.high,
        "low": candle.low,
        "close": candle.close,
        "volume": candle.volume,
        "count": candle.trade_count,
    }


@pytest.mark.parametrize(
    "tf, tf_s", [("1m", 60), ("5m", 300), ("15m", 900), ("1h", 3600), ("30s", 30)]
)
def test_kraken_candles_equal_plain_python_reference(kraken_trades, tf, tf_s):
    candles = build_candles(kraken_trades, tf)
    reference = reference_candles(kraken_rows(), tf_s)
    assert [_as_reference(c) for c in candles] == [
        {k: v for k, v in r.items() if k != "notional"} for r in reference
    ]
    assert [c.vwap for c in candles] == [VWAP.divide(r["notional"], r["volume"]) for r in reference]
    assert sum(c.trade_count for c in candles) == 1000
    assert all(
        c.exchange == "kraken" and c.symbol == "BTC-USDT" and c.timeframe == tf for c in candles
    )


def test_kraken_candles_equal_pandas_groupby_on_decimals(kraken_trades):
    frame = pd.DataFrame(
        {
            "t": [t.time_ns for t in kraken_trades],
            "id": [t.trade_id for t in kraken_trades],
            "p": pd.Series([t.price for t in kraken_trades], dtype=object),
            "q": pd.Series([t.size for t in kraken_trades], dtype=object),
        }
    )
    frame["pq"] = [p * q for p, q in zip(frame.p, frame.q)]
    frame["w"] = frame.t // (60 * NS) * (60 * NS)
    frame = frame.sort_values(["t", "id"])
    grouped = frame.groupby("w")
    expected = pd.DataFrame(
        {
            "open": grouped.p.first(),
            "high": grouped.p.max(),
            "low": grouped.p.min(),
            "close": grouped.p.last(),
            "volume": grouped.q.sum(),
            "pq": grouped.pq.sum(),
            "count": grouped.p.size(),
        }
    )
    candles = build_candles(kraken_trades, "1m")
    assert [c.start_ns for c in candles] == list(expected.index)
    for candle, (_, row) in zip(candles, expected.iterrows()):
        assert (candle.open, candle.high, candle.low, candle.close) == (
            row.open,
            row.high,
            row.low,
            row.close,
        )
        assert candle.volume == row.volume and isinstance(candle.volume, Decimal)
        assert candle.vwap == VWAP.divide(row.pq, row.volume)
        assert candle.trade_count == row["count"]


def test_es_ticks_same_timestamp_trades_are_ordered_by_trade_id():
    """20,000 real ticks, many sharing a millisecond: open/close follow (time, trade_id)."""
    trades = list(itertools.islice(read_tick_csv(ES_TICKS, symbol="ES-USD"), 20_000))
    assert len({t.time_ns for t in trades}) < len(trades)  # the file really has same-time ticks
    expected = build_candles(trades, "1m")
    shuffled = trades[:]
    random.Random(7).shuffle(shuffled)
    assert build_candles(shuffled, "1m") == expected  # batch is order-independent
    frame = pd.DataFrame(
        {
            "t": [t.time_ns for t in trades],
            "id": [t.trade_id for t in trades],
            "p": pd.Series([t.price for t in trades], dtype=object),
            "q": pd.Series([t.size for t in trades], dtype=object),
        }
    )
    frame["w"] = frame.t // (60 * NS)
    by_window = frame.sort_values(["t", "id"]).groupby("w")
    assert [c.open for c in expected] == list(by_window.p.first())
    assert [c.close for c in expected] == list(by_window.p.last())
    assert [c.volume for c in expected] == list(by_window.q.sum())


def test_fill_gaps_like_kraken_ohlc(kraken_trades):
    candles = build_candles(kraken_trades, "1m")
    filled = fill_gaps(candles, "1m")
    starts = [c.start_ns for c in filled]
    assert starts == list(range(starts[0], starts[-1] + 60 * NS, 60 * NS))
    assert len(filled) > len(candles)  # the real file has quiet minutes
    by_start = {c.start_ns: c for c in candles}
    previous = None
    for candle in filled:
        if candle.start_ns in by_start:
            assert candle == by_start[candle.start_ns]
        else:
            assert (candle.open, candle.high, candle.low, candle.close) == (previous.close,) * 4
            assert candle.volume == 0 and candle.trade_count == 0 and candle.vwap is None
        previous = candle
    assert build_candles(kraken_trades, "1m", fill_gaps=True) == filled


def test_streaming_builder_fills_gaps_and_heartbeats_close_quiet_minutes(kraken_trades):
    builder = CandleBuilder("kraken", "BTC-USDT", "1m", fill_gaps=True)
    out = [c for t in kraken_trades for c in builder.add(t)] + builder.flush()
    assert out == build_candles(kraken_trades, "1m", fill_gaps=True)
    # a heartbeat three minutes after the last trade closes its window and two empty ones
    last = kraken_trades[-1]
    builder = CandleBuilder("kraken", "BTC-USDT", "1m", fill_gaps=True)
    builder.add_many(kraken_trades)
    open_candle = builder.peek()
    assert open_candle is not None and open_candle.close == last.price
    window_end = last.time_ns - last.time_ns % (60 * NS) + 60 * NS
    closed = builder.advance(window_end + 2 * 60 * NS)
    assert closed[0] == open_candle
    assert [c.trade_count for c in closed] == [open_candle.trade_count, 0, 0]
    assert all(c.close == last.price for c in closed)
    assert builder.peek() is None and builder.open_windows == 0


def test_a_gap_longer_than_max_fill_candles_is_recorded_not_filled(kraken_trades):
    """A jump of a year (one far trade, or a timer) costs one record, not 525,600 flat candles;
    a short gap is still filled."""
    gaps = []
    builder = CandleBuilder("kraken", "BTC-USDT", "1m", fill_gaps=True, max_fill_candles=1440,
                            on_gap=lambda a, b: gaps.append((a, b)))
    first = [c for t in kraken_trades for c in builder.add(t)]
    assert first == build_candles(kraken_trades, "1m", fill_gaps=True)[:len(first)]  # short gaps filled
    last = kraken_trades[-1]
    year = 365 * 24 * 60 * 60 * NS
    far = Trade("kraken", "BTC-USDT", last.trade_id + 1, last.time_ns + year, last.price, last.size, "buy")
    closed = builder.add(far)
    assert len(closed) == 1 and closed[0].trade_count > 0  # the window that was open, nothing flat
    assert closed[0].start_ns == last.time_ns - last.time_ns % (60 * NS)
    assert builder.gaps == 1 and len(gaps) == 1
    start, end = gaps[0]
    assert start == closed[0].start_ns + 60 * NS and end == far.time_ns - far.time_ns % (60 * NS)
    assert builder.flush()[0].start_ns == end  # the far trade's own candle follows, no flat ones
    # exactly at the bound: filled
    builder = CandleBuilder("kraken", "BTC-USDT", "1m", fill_gaps=True, max_fill_candles=3)
    t0 = kraken_trades[0]
    base = t0.time_ns - t0.time_ns % (60 * NS)
    builder.add(t0)
    later = Trade("kraken", "BTC-USDT", t0.trade_id + 1, base + 4 * 60 * NS, t0.price, t0.size, "sell")
    assert [c.trade_count for c in builder.add(later)] == [1, 0, 0, 0]
    assert [c.trade_count for c in builder.flush()] == [1]
    assert builder.gaps == 0


def test_incremental_candles_close_when_the_watermark_passes_their_end(kraken_trades):
    builder = CandleBuilder("kraken", "BTC-USDT", "5m")
    seen: list[Candle] = []
    for trade in kraken_trades:
        for candle in builder.add(trade):
            assert candle.start_ns + builder.tf_ns <= trade.time_ns  # closed by a later trade
            seen.append(candle)
        assert builder.open_windows == 1  # state stays O(open windows)
    seen += builder.flush()
    assert seen == build_candles(kraken_trades, "5m")


def test_late_trade_is_counted_and_kept_never_folded_in_silently(kraken_trades):
    late_seen: list[Trade] = []
    builder = CandleBuilder("kraken", "BTC-USDT", "1m", on_late=late_seen.append)
    closed = builder.add_many(kraken_trades[:500])
    straggler = kraken_trades[10]  # its minute closed long ago
    assert builder.add(straggler) == []
    assert builder.late == 1 and builder.late_trades == [straggler] and late_seen == [straggler]
    closed += builder.add_many(kraken_trades[500:]) + builder.flush()
    assert closed == build_candles(kraken_trades, "1m")  # closed candles unchanged
    assert builder.drain_late() == [straggler] and builder.late_trades == [] and builder.late == 1


def test_allowed_lateness_folds_in_out_of_order_trades(kraken_trades):
    """Swap neighbours across minute boundaries: with 2 minutes of lateness nothing is late."""
    disordered = kraken_trades[:]
    for i in range(0, len(disordered) - 1, 2):
        disordered[i], disordered[i + 1] = disordered[i + 1], disordered[i]
    gaps = max(
        disordered[i].time_ns - disordered[i + 1].time_ns for i in range(len(disordered) - 1)
    )
    assert gaps > 0  # really out of order
    builder = CandleBuilder("kraken", "BTC-USDT", "1m", allowed_lateness_ns=gaps + 1)
    out = builder.add_many(disordered) + builder.flush()
    assert builder.late == 0
    assert out == build_candles(kraken_trades, "1m")
    strict = CandleBuilder("kraken", "BTC-USDT", "1m")
    strict.add_many(disordered)
    assert strict.late > 0


def test_multi_timeframe_builder_equals_one_build_per_timeframe(kraken_trades):
    out, _late = candles_of_each_timeframe(kraken_trades, "kraken", "BTC-USDT", ["1m", "5m", "15m", "1h"], flush=True)
    for tf in ("1m", "5m", "15m", "1h"):
        assert [c for c in out if c.timeframe == tf] == build_candles(kraken_trades, tf)
    # 5m candles are also what the 1m candles roll up to
    ones = build_candles(kraken_trades, "1m")
    for five in build_candles(kraken_trades, "5m"):
        inside = [c for c in ones if five.start_ns <= c.start_ns < five.start_ns + 300 * NS]
        assert five.open == inside[0].open and five.close == inside[-1].close
        assert five.high == max(c.high for c in inside) and five.low == min(c.low for c in inside)
        assert five.volume == sum((c.volume for c in inside), Decimal(0))


def test_frame_and_csv_output(kraken_trades, tmp_path):
    candles = build_candles(kraken_trades, "1h")
    frame = candles_to_frame(candles)
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]"
    assert list(frame.columns) == [
        "time",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "vwap",
        "trade_count",
    ]
    assert frame["volume"].dtype == "float64" and frame["trade_count"].sum() == 1000
    out = tmp_path / "c.csv"
    assert write_candles_csv(candles, out) == len(candles)
    lines = out.read_text().splitlines()
    assert lines[0] == "time,open,high,low,close,volume,vwap,trade_count"
    first = candles[0]
    assert lines[1] == (
        f"{iso_from_ns(first.start_ns, 'trim')},{first.open},{first.high},{first.low},{first.close},"
        f"{first.volume},{first.vwap},{first.trade_count}"
    )
    assert lines[1].startswith("2025-11-10T17:00:00Z,")
    assert iso_from_ns(1378054800083000000, "trim") == "2013-09-01T17:00:00.083Z"
    assert [p.name for p in tmp_path.iterdir()] == ["c.csv"]  # no temporary file left


def test_csv_writer_leaves_nothing_when_the_input_fails(tmp_path, kraken_trades):
    def failing():
        yield from build_candles(kraken_trades, "1m")[:3]
        raise RuntimeError("input broke half-way")

    out = tmp_path / "c.csv"
    with pytest.raises(RuntimeError):
        write_candles_csv(failing(), out)
    assert list(tmp_path.iterdir()) == []


def test_zero_volume_writes_plain_numbers(tmp_path):
    trade = Trade("kraken", "BTC-USD", 1, 60 * NS, Decimal("100.50"), Decimal("0E-8"))
    (candle,) = build_candles([trade], "1m")
    assert candle.vwap is None and candle.volume == 0
    write_candles_csv([candle], tmp_path / "z.csv")
    assert (tmp_path / "z.csv").read_text().splitlines()[
        1
    ] == "1970-01-01T00:01:00Z,100.50,100.50,100.50,100.50,0.00000000,,1"
