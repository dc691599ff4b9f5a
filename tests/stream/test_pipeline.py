"""The pipeline on real ticks: stream features equal the batch features of the stream's own candles,
late trades become corrections, and live values are coalesced per market."""

from __future__ import annotations

from decimal import Decimal
from itertools import islice

import numpy as np
import pytest

from rtml_core.book import OrderBook
from rtml_core.candles import candles_to_frame
from rtml_core.features import compute_features
from rtml_core.ingest import read_trades
from rtml_core.schemas import ROW_CONTEXT_FIELDS, BookLevel, BookUpdate, Trade
from rtml_core.stores.offline import open_offline_store
from rtml_stream.corrections import StreamOfflineSink, read_corrections
from rtml_stream.pipeline import Pipeline
from tests.conftest import DATA

ES_TICKS = DATA / "es_futures_ticks_2013-09.csv.gz"
TIMEFRAMES = ("1m", "5m", "15m")


def es_trades(n: int) -> list[Trade]:
    return list(islice(read_trades(ES_TICKS, "ticks-csv", exchange="replay", symbol="ES-USD"), n))


@pytest.fixture(scope="module")
def ticks() -> list[Trade]:
    return es_trades(50_000)


def run(trades, timeframes=TIMEFRAMES, **options):
    pipeline = Pipeline(timeframes, **options)
    for i in range(0, len(trades), 1000):
        pipeline.on_trades(trades[i:i + 1000])
    pipeline.flush_open()
    return pipeline, pipeline.drain()


def assert_rows_equal_batch(candles, rows, timeframe) -> int:
    """Every stream row of ``timeframe`` equals ``compute_features`` over the stream's candles."""
    mine = [c for c in candles if c.timeframe == timeframe]
    my_rows = [r for r in rows if r.timeframe == timeframe]
    assert len(mine) == len(my_rows) > 30
    batch = compute_features(candles_to_frame(mine))
    names = [c for c in batch.columns if c != "time"]
    assert set(names) | set(ROW_CONTEXT_FIELDS) == set(my_rows[0].values)
    assert [r.values["close"] for r in my_rows] == [float(c.close) for c in mine]  # the price served with it
    stream = np.array([[r.values[n] for n in names] for r in my_rows])
    expected = batch[names].to_numpy()
    assert np.array_equal(np.isnan(stream), np.isnan(expected))
    ok = ~np.isnan(expected)
    np.testing.assert_allclose(stream[ok], expected[ok], rtol=1e-9, atol=0)
    tf_ns = mine[1].start_ns - mine[0].start_ns
    assert [r.event_time_ns for r in my_rows] == [c.start_ns + tf_ns for c in mine]
    return int(ok.sum())


def test_stream_features_equal_batch_on_real_ticks(ticks) -> None:
    pipeline, out = run(ticks)
    assert pipeline.trades_in == 50_000 and pipeline.late == 0
    checked = sum(assert_rows_equal_batch(out.candles, out.rows, tf) for tf in TIMEFRAMES)
    assert checked > 5_000  # warm values, not only NaN warm-up rows
    assert {r.feature_set_version for r in out.rows} == {pipeline.version}
    # candles are exact: the total volume of each timeframe is the total of the ticks
    total = sum((t.size for t in ticks), Decimal(0))
    for tf in TIMEFRAMES:
        assert sum((c.volume for c in out.candles if c.timeframe == tf), Decimal(0)) == total


def test_gap_candles_and_no_gap_mode_both_match_batch(ticks) -> None:
    _, filled = run(ticks, ("1m",), fill_gaps=True)
    _, sparse = run(ticks, ("1m",), fill_gaps=False)
    assert len(filled.candles) >= len(sparse.candles)
    assert_rows_equal_batch(sparse.candles, sparse.rows, "1m")
    assert_rows_equal_batch(filled.candles, filled.rows, "1m")


def test_late_trade_is_counted_and_recorded_as_correction(ticks, tmp_path) -> None:
    trades = ticks[:5_000]
    pipeline = Pipeline(("1m", "5m"), allowed_lateness_ns=1_000_000_000)
    pipeline.on_trades(trades)
    first = trades[0]
    late = Trade(first.exchange, first.symbol, 10_000_000, first.time_ns, first.price, first.size, "buy")
    before = sum(c.volume for c in pipeline.drain().candles if c.timeframe == "1m")
    pipeline.on_trade(late)
    out = pipeline.drain()
    assert pipeline.late == 2  # its 1m and its 5m windows had both closed
    assert [(c.trade.trade_id, c.timeframe) for c in out.corrections] == [(10_000_000, "1m"), (10_000_000, "5m")]
    assert all(c.window_start_ns <= late.time_ns < c.watermark_ns for c in out.corrections)
    assert before > 0 and not out.candles  # never folded into a closed candle
    store = open_offline_store(f"sqlite:///{tmp_path / 'offline.sqlite'}")
    sink = StreamOfflineSink(store)
    sink.add_corrections(out.corrections)
    sink.add_corrections(out.corrections)  # a retry or a replay writes nothing twice
    sink._force_due()  # due now instead of after flush_interval_s
    assert sink.flush_sync()
    rows = read_corrections(store, "replay", "ES-USD")
    assert [(r["trade_id"], r["timeframe"], r["price"]) for r in rows] == [
        (10_000_000, "1m", first.price), (10_000_000, "5m", first.price)]
    assert sink.pending == 0
    store.close()


def test_live_values_are_coalesced_per_market(ticks) -> None:
    pipeline = Pipeline(("1m",), flow_window_ns=10_000_000_000)
    pipeline.on_trades(ticks[:2_000])
    other = [Trade("replay", "NQ-USD", t.trade_id, t.time_ns, t.price, t.size, t.side) for t in ticks[:10]]
    pipeline.on_trades(other)
    book = BookUpdate("replay", "ES-USD", ticks[1999].time_ns,
                      (BookLevel(Decimal("1640.00"), Decimal("3")), BookLevel(Decimal("1639.75"), Decimal("5"))),
                      (BookLevel(Decimal("1640.25"), Decimal("1")),), is_snapshot=True)
    pipeline.on_book(book)
    live = {(e, s): (t, v) for e, s, t, v in pipeline.live_values()}
    assert set(live) == {("replay", "ES-USD"), ("replay", "NQ-USD")}
    t, values = live[("replay", "ES-USD")]
    assert t == ticks[1999].time_ns
    window = [x for x in ticks[:2_000] if x.time_ns > t - 10_000_000_000]
    assert values["flow_trade_count"] == len(window)
    assert values["flow_buy_volume"] == pytest.approx(float(sum(x.size for x in window if x.side == "buy")))
    expected_book = OrderBook()
    expected_book.apply(book)
    assert values["book_imbalance_top"] == pytest.approx((3 - 1) / (3 + 1))
    assert values["book_spread_bps"] > 0
    assert pipeline.live_values() == []  # nothing changed since: nothing to write


def test_duplicate_market_state_is_per_market(ticks) -> None:
    """Two markets interleaved give the same rows as each alone (no shared state)."""
    other = [Trade("replay", "NQ-USD", t.trade_id, t.time_ns, t.price * 2, t.size, t.side) for t in ticks[:10_000]]
    mixed = [x for pair in zip(ticks[:10_000], other) for x in pair]
    _, together = run(mixed, ("1m",))
    _, alone = run(other, ("1m",))
    assert [r for r in together.rows if r.symbol == "NQ-USD"] == alone.rows


def test_folded_runs_give_the_candles_of_trade_by_trade_adds(ticks) -> None:
    """The batch fast path equals CandleBuilder.add trade by trade, with disorder and late trades."""
    import random

    from tests.candles.each_timeframe import candles_of_each_timeframe

    rng = random.Random(7)
    trades = list(ticks[:20_000])
    for k in range(0, len(trades) - 40, 37):  # local disorder inside windows, and some late stragglers
        block = trades[k:k + 12]
        rng.shuffle(block)
        trades[k:k + 12] = block
    for k in range(500, len(trades), 2_500):
        old = trades[k - 400]
        trades.insert(k, Trade(old.exchange, old.symbol, 1_000_000 + k, old.time_ns, old.price, old.size, "sell"))
    lateness = 1_500_000_000
    expected, reference_late = candles_of_each_timeframe(trades, "replay", "ES-USD", TIMEFRAMES, flush=False,
                                                         allowed_lateness_ns=lateness, fill_gaps=True)
    pipeline = Pipeline(TIMEFRAMES, allowed_lateness_ns=lateness)
    for i in range(0, len(trades), 999):
        pipeline.on_trades(trades[i:i + 999])
    out = pipeline.drain()
    key = lambda c: (c.timeframe, c.start_ns)  # noqa: E731
    assert sorted(out.candles, key=key) == sorted(expected, key=key)
    assert pipeline.late == reference_late > 0
    assert len(out.corrections) == reference_late


def test_timer_closes_the_candles_of_a_quiet_market(ticks) -> None:
    """No trade after the window: the timer's event time closes it, then flat gap candles follow."""
    minute = 60_000_000_000
    first = ticks[0].time_ns - ticks[0].time_ns % minute
    inside = [t for t in ticks[:3_000] if t.time_ns < first + minute]
    pipeline = Pipeline(("1m",), allowed_lateness_ns=2_000_000_000)
    pipeline.on_trades(inside)
    assert not pipeline.drain().candles
    pipeline.advance(first + minute + 1_999_999_999)  # watermark still before the end
    assert not pipeline.drain().candles
    pipeline.advance(first + minute + 2_000_000_000)
    closed = pipeline.drain()
    assert [c.start_ns for c in closed.candles] == [first] and closed.candles[0].trade_count == len(inside)
    assert [r.event_time_ns for r in closed.rows] == [first + minute]
    pipeline.advance(first + 4 * minute + 2_000_000_000)
    quiet = pipeline.drain()
    assert [c.start_ns for c in quiet.candles] == [first + k * minute for k in (1, 2, 3)]
    assert all(c.trade_count == 0 and c.close == closed.candles[0].close for c in quiet.candles)
    assert [r.event_time_ns for r in quiet.rows] == [first + k * minute for k in (2, 3, 4)]
    late = Trade("replay", "ES-USD", 10**9, first + 2 * minute + 5, inside[0].price, inside[0].size, "buy")
    pipeline.on_trade(late)
    assert pipeline.late == 1 and pipeline.drain().corrections[0].window_start_ns == first + 2 * minute
