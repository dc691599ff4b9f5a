"""Hypothesis: batch candles == the incremental builder fed one trade at a time; sums exact."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from rtml_core.candles import CandleBuilder, build_candles
from rtml_core.schemas import Trade

NS = 1_000_000_000

prices = st.decimals(
    min_value=Decimal("0.00000001"),
    max_value=Decimal("200000"),
    places=8,
    allow_nan=False,
    allow_infinity=False,
)
sizes = st.decimals(
    min_value=Decimal("0"),
    max_value=Decimal("5000"),
    places=8,
    allow_nan=False,
    allow_infinity=False,
)
trade_rows = st.lists(
    st.tuples(st.integers(0, 3 * 3600 * NS), prices, sizes),
    min_size=1,
    max_size=150,
)
timeframes = st.sampled_from(["1s", "30s", "1m", "5m", "1h"])


def _trades(rows) -> list[Trade]:
    # ids increase with time, as on an exchange; equal times are common on purpose
    ordered = sorted(rows, key=lambda r: r[0])
    return [
        Trade("kraken", "BTC-USD", i, t - t % (NS // 4), p, q)
        for i, (t, p, q) in enumerate(ordered)
    ]


@settings(max_examples=150, deadline=None)
@given(trade_rows, timeframes, st.booleans())
def test_batch_equals_incremental_and_volume_is_exact(rows, timeframe, gaps):
    trades = _trades(rows)
    batch = build_candles(trades, timeframe, fill_gaps=gaps)
    builder = CandleBuilder("kraken", "BTC-USD", timeframe, fill_gaps=gaps)
    incremental = []
    for trade in trades:
        incremental.extend(builder.add(trade))
    incremental.extend(builder.flush())
    assert incremental == batch
    assert builder.late == 0
    assert sum((c.volume for c in batch), Decimal(0)) == sum((t.size for t in trades), Decimal(0))
    assert sum(c.trade_count for c in batch) == len(trades)
    for candle in batch:
        assert (
            candle.low <= min(candle.open, candle.close)
            and max(candle.open, candle.close) <= candle.high
        )


@settings(max_examples=100, deadline=None)
@given(trade_rows, timeframes, st.randoms(use_true_random=False))
def test_batch_does_not_depend_on_input_order(rows, timeframe, rnd):
    trades = _trades(rows)
    shuffled = trades[:]
    rnd.shuffle(shuffled)
    assert build_candles(shuffled, timeframe) == build_candles(trades, timeframe)


@settings(max_examples=100, deadline=None)
@given(trade_rows, timeframes, st.integers(0, 600 * NS), st.randoms(use_true_random=False))
def test_disorder_within_the_allowed_lateness_is_never_late(rows, timeframe, delay, rnd):
    """Trades arriving up to ``delay`` late, with lateness >= delay: same candles as batch."""
    trades = _trades(rows)
    arrival = sorted(trades, key=lambda t: t.time_ns + rnd.randint(0, delay))
    builder = CandleBuilder("kraken", "BTC-USD", timeframe, allowed_lateness_ns=delay)
    out = builder.add_many(arrival) + builder.flush()
    assert builder.late == 0
    assert out == build_candles(trades, timeframe)


@settings(max_examples=100, deadline=None)
@given(trade_rows, timeframes, st.randoms(use_true_random=False))
def test_every_trade_is_in_a_candle_or_reported_late(rows, timeframe, rnd):
    trades = _trades(rows)
    arrival = trades[:]
    rnd.shuffle(arrival)
    builder = CandleBuilder("kraken", "BTC-USD", timeframe)
    out = builder.add_many(arrival) + builder.flush()
    late = builder.drain_late()
    assert builder.late == len(late)
    assert sum(c.trade_count for c in out) + len(late) == len(trades)
    counted = sum((c.volume for c in out), Decimal(0)) + sum((t.size for t in late), Decimal(0))
    assert counted == sum((t.size for t in trades), Decimal(0))
    starts = [c.start_ns for c in out]
    assert starts == sorted(set(starts))  # each window closed once, in order
