"""The builder's public state API: snapshot/restore and add_aggregate change nothing.

- snapshot at any point (through JSON or msgpack), restore, continue == never stopped;
- add_aggregate of runs == add of each trade, late trades and Decimal exponents included;
- bad snapshots are refused with InputError and leave the builder as it was.
"""

from __future__ import annotations

import json
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtml_core.candles import SNAPSHOT_FORMAT, CandleBuilder, TradeAggregate
from rtml_core.errors import InputError
from rtml_core.schemas import Trade

NS = 1_000_000_000

# coefficients and exponents vary (2E+1, 0.50, 3.125): the sums must keep the exponent that
# adding one by one gives, not only the value
decimals = st.builds(lambda c, e: Decimal(c).scaleb(e), st.integers(0, 10**7), st.integers(-8, 2))
# prices: a few values, each spelled several ways (2, 2.0, 2.000), so which of equal prices
# becomes the high, low, open or close shows in the snapshot
prices = st.builds(
    lambda value, places: Decimal(value).quantize(Decimal(1).scaleb(-places)),
    st.integers(1, 4),
    st.integers(0, 3),
)
trade_rows = st.lists(
    st.tuples(st.integers(0, 40 * 60 * NS), prices, decimals),
    min_size=1,
    max_size=120,
)
timeframes = st.sampled_from(["1s", "30s", "1m", "5m"])
lateness = st.sampled_from([None, 0, NS, 45 * NS, 10 * 60 * NS])


def arrival(rows, rnd, disorder_ns: int) -> list[Trade]:
    """Trades with ids in time order (ties on purpose), arriving up to ``disorder_ns`` late."""
    ordered = sorted(rows, key=lambda r: r[0])
    trades = [
        Trade("kraken", "BTC-USD", i, t - t % (NS // 2), p, q, "buy")
        for i, (t, p, q) in enumerate(ordered)
    ]
    return sorted(trades, key=lambda t: t.time_ns + rnd.randint(0, disorder_ns))


def new_builder(timeframe, allowed_lateness_ns, fill_gaps, late_log) -> CandleBuilder:
    return CandleBuilder(
        "kraken",
        "BTC-USD",
        timeframe,
        allowed_lateness_ns=allowed_lateness_ns,
        fill_gaps=fill_gaps,
        on_late=late_log.append,
        keep_late_trades=5,
    )


def through_the_wire(data: dict, wire: str) -> dict:
    if wire == "json":
        return json.loads(json.dumps(data))
    return msgspec.msgpack.decode(msgspec.msgpack.encode(data))


@settings(max_examples=150, deadline=None)
@given(
    trade_rows,
    timeframes,
    lateness,
    st.booleans(),
    st.integers(0, 120 * NS),
    st.floats(0, 1),
    st.sampled_from(["json", "msgpack"]),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_snapshot_restore_anywhere_then_continue_equals_never_stopping(
    rows, timeframe, allowed_lateness_ns, gaps, disorder_ns, cut_at, wire, use_classmethod, rnd
):
    trades = arrival(rows, rnd, disorder_ns)
    cut = int(cut_at * len(trades))
    timer = trades[cut - 1].time_ns + 7 * NS if cut else None  # a heartbeat just before the stop

    late_a: list[Trade] = []
    steady = new_builder(timeframe, allowed_lateness_ns, gaps, late_a)
    expected = steady.add_many(trades[:cut])
    if timer is not None:
        expected += steady.advance(timer)
    expected += steady.add_many(trades[cut:])
    expected += steady.flush()

    late_b: list[Trade] = []
    first = new_builder(timeframe, allowed_lateness_ns, gaps, late_b)
    got = first.add_many(trades[:cut])
    if timer is not None:
        got += first.advance(timer)
    data = through_the_wire(first.snapshot(), wire)
    if use_classmethod:
        second = CandleBuilder.restore(data, on_late=late_b.append, keep_late_trades=5)
    else:
        second = new_builder(timeframe, allowed_lateness_ns, gaps, late_b)
        second.load_state(data)
    assert second.snapshot() == first.snapshot()  # the round trip is exact, representation included
    got += second.add_many(trades[cut:])
    got += second.flush()

    assert got == expected
    assert late_b == late_a and second.late == steady.late == len(late_a)
    assert second.late_trades == steady.late_trades
    assert second.snapshot() == steady.snapshot()


def split_into_runs(trades: list[Trade], tf_ns: int, rnd) -> list[list[Trade]]:
    """Consecutive trades of one window, cut at random places too (runs of 1 included)."""
    runs: list[list[Trade]] = []
    for trade in trades:
        window = trade.time_ns // tf_ns
        if runs and runs[-1][-1].time_ns // tf_ns == window and rnd.random() < 0.85:
            runs[-1].append(trade)
        else:
            runs.append([trade])
    return runs


@settings(max_examples=150, deadline=None)
@given(
    trade_rows,
    timeframes,
    lateness,
    st.booleans(),
    st.integers(0, 300 * NS),
    st.randoms(use_true_random=False),
)
def test_add_aggregate_equals_adding_the_trades_one_by_one(
    rows, timeframe, allowed_lateness_ns, gaps, disorder_ns, rnd
):
    trades = arrival(rows, rnd, disorder_ns)
    late_one: list[Trade] = []
    one_by_one = new_builder(timeframe, allowed_lateness_ns, gaps, late_one)
    expected = []
    late_runs: list[Trade] = []
    folded = new_builder(timeframe, allowed_lateness_ns, gaps, late_runs)
    got = []
    for run in split_into_runs(trades, folded.tf_ns, rnd):
        for trade in run:
            expected += one_by_one.add(trade)
        got += folded.add_aggregate(TradeAggregate(run))
        assert folded.snapshot() == one_by_one.snapshot()  # exact sums, same exponents, same marks
        if rnd.random() < 0.2:  # a timer between runs: later runs may land in windows it closed
            now = run[-1].time_ns + rnd.randint(0, 90 * NS)
            expected += one_by_one.advance(now)
            got += folded.advance(now)
    expected += one_by_one.flush()
    got += folded.flush()
    assert got == expected
    assert late_runs == late_one and folded.late == one_by_one.late
    assert folded.late_trades == one_by_one.late_trades


def test_late_runs_are_reported_trade_by_trade_and_on_time_runs_close_windows():
    late: list[Trade] = []
    builder = CandleBuilder("kraken", "BTC-USD", "1m", on_late=late.append)
    t = 600 * NS
    on_time = [Trade("kraken", "BTC-USD", i, t + i * NS, Decimal(100 + i), Decimal("0.5")) for i in range(5)]
    assert builder.add_aggregate(TradeAggregate(on_time)) == []
    later = [Trade("kraken", "BTC-USD", 10 + i, t + 60 * NS + i, Decimal(90), Decimal(1)) for i in range(3)]
    [candle] = builder.add_aggregate(TradeAggregate(later))  # the watermark passed the first window
    assert (candle.open, candle.high, candle.low, candle.close) == (100, 104, 100, 104)
    assert candle.volume == Decimal("2.5") and candle.trade_count == 5
    stragglers = [Trade("kraken", "BTC-USD", 20 + i, t + i, Decimal(1), Decimal(1)) for i in range(4)]
    assert builder.add_aggregate(TradeAggregate(stragglers)) == []
    assert late == stragglers and builder.late == 4 and builder.drain_late() == stragglers
    with pytest.raises(ValueError, match="more than one 1m window"):
        builder.add_aggregate(TradeAggregate([on_time[0], later[0]]))
    with pytest.raises(ValueError):
        TradeAggregate([])


def test_snapshot_is_plain_data_with_exact_decimal_strings():
    builder = CandleBuilder("kraken", "BTC-USD", "1m", allowed_lateness_ns=NS, fill_gaps=True)
    builder.add(Trade("kraken", "BTC-USD", 1, 5 * NS, Decimal("64000.10"), Decimal("2E+1")))
    builder.add(Trade("kraken", "BTC-USD", 2, 6 * NS, Decimal("63999.9"), Decimal("0.000001")))
    data = builder.snapshot()
    assert json.loads(json.dumps(data)) == data
    assert data["format"] == SNAPSHOT_FORMAT and data["timeframe"] == "1m"
    assert (data["exchange"], data["symbol"], data["allowed_lateness_ns"], data["fill_gaps"]) == (
        "kraken", "BTC-USD", NS, True)
    assert data["watermark_ns"] == 5 * NS and data["closed_until_ns"] == 0 and data["last_close"] is None
    [window] = data["windows"]
    # start, open, open_t, open_id, high, low, close, close_t, close_id, volume, notional, count
    assert window == [0, "64000.10", 5 * NS, 1, "64000.10", "63999.9", "63999.9", 6 * NS, 2,
                      "20.000001", "1280002.0639999", 2]
    restored = CandleBuilder.restore(data)
    assert restored.allowed_lateness_ns == NS and restored.fill_gaps is True
    assert restored.peek() == builder.peek()


def test_a_snapshot_without_the_newer_fields_still_loads():
    """The layout the sidecar's checkpoint files held before this API (no format, no config)."""
    legacy = {
        "timeframe": "1m",
        "watermark_ns": 61 * NS,
        "closed_until_ns": 60 * NS,
        "last_close": "10.5",
        "late": 3,
        "windows": [[60 * NS, "11", 61 * NS, 7, "12", "11", "12", 61 * NS, 8, "2", "23", 2]],
    }
    builder = CandleBuilder("kraken", "BTC-USD", "1m", fill_gaps=True)
    builder.load_state(legacy)
    assert builder.late == 3 and builder.watermark_ns == 61 * NS
    [candle] = builder.advance(120 * NS)
    assert (candle.start_ns, candle.open, candle.close, candle.volume, candle.vwap, candle.trade_count) == (
        60 * NS, 11, 12, 2, Decimal("11.5"), 2)
    with pytest.raises(InputError, match="names no exchange"):
        CandleBuilder.restore(legacy)


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"timeframe": "5m"}, "timeframe 5m, not 1m"),
        ({"symbol": "ETH-USD"}, "symbol ETH-USD, not BTC-USD"),
        ({"format": SNAPSHOT_FORMAT + 1}, "another rtml version"),
        ({"last_close": "12,5"}, "not a candle builder snapshot"),
        ({"windows": [[61 * NS, "1", 1, 1, "1", "1", "1", 1, 1, "1", "1", 1]]}, "not an open 1m window"),
        ({"windows": [[0, "1", 1, 1, "1", "1", "1", 1, 1, "1", "1", 1]]}, "before the closed-until mark"),
        ({"late": "many"}, "not a candle builder snapshot"),
    ],
)
def test_bad_snapshots_are_refused_and_leave_the_builder_as_it_was(change, problem):
    builder = CandleBuilder("kraken", "BTC-USD", "1m")
    builder.add(Trade("kraken", "BTC-USD", 1, 70 * NS, Decimal(5), Decimal(1)))
    builder.advance(125 * NS)
    builder.add(Trade("kraken", "BTC-USD", 2, 130 * NS, Decimal(6), Decimal(1)))
    before = builder.snapshot()
    other = CandleBuilder("kraken", "BTC-USD", "1m")
    other.advance(60 * NS)
    with pytest.raises(InputError, match=problem) as error:
        builder.load_state({**other.snapshot(), **change})
    assert "candle builder snapshot" in str(error.value)
    assert builder.snapshot() == before


def test_resume_at_continues_after_stored_candles():
    late: list[Trade] = []
    builder = CandleBuilder("kraken", "BTC-USD", "1m", fill_gaps=True, on_late=late.append)
    builder.resume_at(120 * NS, Decimal("7.25"))
    old = Trade("kraken", "BTC-USD", 1, 119 * NS, Decimal(1), Decimal(1))
    assert builder.add(old) == [] and late == [old]
    [gap] = builder.add(Trade("kraken", "BTC-USD", 2, 190 * NS, Decimal(8), Decimal(1)))
    [candle] = builder.advance(240 * NS)
    assert (gap.start_ns, gap.open, gap.close, gap.volume, gap.trade_count) == (120 * NS, Decimal("7.25"),
                                                                               Decimal("7.25"), 0, 0)
    assert (candle.start_ns, candle.close) == (180 * NS, 8)
    with pytest.raises(ValueError, match="boundary"):
        CandleBuilder("kraken", "BTC-USD", "1m").resume_at(90 * NS, Decimal(1))
    builder.add(Trade("kraken", "BTC-USD", 3, 250 * NS, Decimal(8), Decimal(1)))
    with pytest.raises(ValueError, match="no open window"):
        builder.resume_at(300 * NS, Decimal(1))
