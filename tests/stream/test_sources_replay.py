"""Replay source: the real 500,000 ES ticks and Kraken REST trades, at max speed, in real time
(with a real and an injected clock) and N times real time."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from rtml_core.errors import InputError
from rtml_core.ingest import read_trades
from rtml_core.schemas import Trade
from rtml_stream.metrics import StreamMetrics
from rtml_stream.sources.replay import ReplaySource, parse_speed
from tests.conftest import DATA

ES_TICKS = DATA / "es_futures_ticks_2013-09.csv.gz"
KRAKEN_REST = DATA / "kraken_xbtusdt_trades_rest.json"


class FakeClock:
    """A monotonic clock that only moves when the replay sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _trade(offset_ms: int, trade_id: int) -> Trade:
    return Trade(
        "test",
        "BTC-USD",
        trade_id,
        1_700_000_000_000_000_000 + offset_ms * 1_000_000,
        Decimal(100),
        Decimal(1),
        "buy",
    )


def test_parse_speed() -> None:
    assert parse_speed("max") is None and parse_speed(0) is None and parse_speed("0") is None
    assert parse_speed(1) == 1.0 and parse_speed("10") == 10.0 and parse_speed("2.5x") == 2.5
    for bad in ("-1", "fast-ish", -3, float("inf")):
        with pytest.raises(ValueError, match="speed"):
            parse_speed(bad)


async def test_max_speed_replays_all_500k_real_ticks_in_order() -> None:
    metrics = StreamMetrics()
    source = ReplaySource.from_file(
        ES_TICKS,
        "ticks-csv",
        symbol="ES-USD",
        preset="mlfinpy-ticks",
        metrics=metrics,
        batch_size=4096,
    )
    count, last_id, first, last = 0, 0, None, None
    async for batch in source.batches():
        assert batch[0].trade_id == last_id + 1
        count += len(batch)
        last_id = batch[-1].trade_id
        first = first or batch[0]
        last = batch[-1]
    assert count == 500_000 == source.replayed
    assert metrics.value("trades_in", exchange="file", symbol="ES-USD") == 500_000
    assert (first.time_ns, first.price, first.size) == (
        1378054800083000000,
        Decimal("1640.25"),
        Decimal(8),
    )
    assert (last.trade_id, last.price) == (500_000, Decimal("1631.25"))


async def test_real_time_with_an_injected_clock_waits_out_the_trade_gaps() -> None:
    clock = FakeClock()
    trades = list(read_trades(KRAKEN_REST, "kraken-rest"))
    source = ReplaySource(trades, speed=1, clock=clock, sleep=clock.sleep)
    start = clock.now
    seen = []
    async for trade in source.events():
        due = start + (trade.time_ns - trades[0].time_ns) / 1e9
        assert clock.now >= due - 1e-9  # never early
        assert clock.now - due < 1e-6  # and not late (the fake clock does not drift)
        seen.append(trade)
    assert seen == trades
    span = (trades[-1].time_ns - trades[0].time_ns) / 1e9  # about 6.8 hours
    assert sum(clock.sleeps) == pytest.approx(span, abs=1e-6)
    assert len(clock.sleeps) == len({t.time_ns for t in trades}) - 1


async def test_n_times_real_time_divides_the_waits() -> None:
    clock = FakeClock()
    trades = list(read_trades(KRAKEN_REST, "kraken-rest"))
    source = ReplaySource(trades, speed=3600, clock=clock, sleep=clock.sleep)
    out = [t async for t in source.events()]
    assert out == trades
    span = (trades[-1].time_ns - trades[0].time_ns) / 1e9
    assert sum(clock.sleeps) == pytest.approx(span / 3600, rel=1e-9)


async def test_real_time_with_the_real_clock() -> None:
    trades = [_trade(ms, i) for i, ms in enumerate([0, 60, 120, 120, 180], start=1)]
    source = ReplaySource(trades, speed=1)
    start = time.monotonic()
    arrivals = []
    async for trade in source.events():
        arrivals.append((trade.trade_id, time.monotonic() - start))
    assert [i for i, _ in arrivals] == [1, 2, 3, 4, 5]
    dues = [0.0, 0.06, 0.12, 0.12, 0.18]
    assert all(at >= due - 0.005 for (_, at), due in zip(arrivals, dues, strict=True))  # never early


async def test_close_stops_the_replay() -> None:
    clock = FakeClock()
    source = ReplaySource(
        [_trade(i * 1000, i) for i in range(1, 101)], speed=1, clock=clock, sleep=clock.sleep
    )
    out = []
    async for trade in source.events():
        out.append(trade)
        if len(out) == 10:
            await source.close()
    assert len(out) == 10


async def test_a_broken_file_fails_loudly_with_file_and_line(tmp_path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text("time,price,size\n2024-01-01T00:00:00Z,100,1\n2024-01-01T00:00:01Z,abc,1\n")
    source = ReplaySource.from_file(path, "ticks-csv", symbol="BTC-USD")
    with pytest.raises(InputError) as error:
        _ = [t async for t in source.events()]
    assert str(path) in str(error.value) and "line 3" in str(error.value)
