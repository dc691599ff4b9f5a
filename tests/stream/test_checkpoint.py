"""Restart: stop midway and start again (from the checkpoint, or rebuilt from the offline store);
the feature rows equal those of a run that never stopped, on real ES ticks."""

from __future__ import annotations

import math

import pytest

from rtml_core.stores.offline import open_offline_store
from rtml_stream.checkpoint import Checkpointer, restore_markets
from rtml_stream.pipeline import Pipeline
from tests.stream.test_pipeline import es_trades

TIMEFRAMES = ("1m", "5m")
OPTIONS = dict(allowed_lateness_ns=2_000_000_000)


@pytest.fixture(scope="module")
def ticks():
    return es_trades(30_000)


def feed(pipeline: Pipeline, trades, batch: int = 700) -> None:
    for i in range(0, len(trades), batch):
        pipeline.on_trades(trades[i:i + batch])


def uninterrupted(trades):
    pipeline = Pipeline(TIMEFRAMES, **OPTIONS)
    feed(pipeline, trades)
    pipeline.flush_open()
    return pipeline.drain()


def same_rows(got, expected) -> None:
    assert [(r.timeframe, r.event_time_ns) for r in got] == [(r.timeframe, r.event_time_ns) for r in expected]
    for a, b in zip(got, expected):
        assert a.values.keys() == b.values.keys()
        for name, value in a.values.items():
            other = b.values[name]
            # the batch-parity tolerance: a restored engine re-seeds rolling sums (cci_20 differs ~1e-11)
            assert (math.isnan(value) and math.isnan(other)) or math.isclose(value, other, rel_tol=1e-9, abs_tol=0), (
                a.timeframe, a.event_time_ns, name)


def by_tf(rows):
    return sorted(rows, key=lambda r: (r.timeframe, r.event_time_ns))


@pytest.mark.parametrize("stop_at", [12_345, 20_001])
def test_restart_from_checkpoint_equals_a_run_that_never_stopped(ticks, tmp_path, stop_at) -> None:
    expected = uninterrupted(ticks)
    first = Pipeline(TIMEFRAMES, **OPTIONS)
    feed(first, ticks[:stop_at])
    before = first.drain()
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    [path] = checkpoints.save(first)
    assert path == tmp_path / "checkpoints" / "replay" / "ES-USD.ckpt" and path.stat().st_size > 0
    assert any(b.open_windows for b in first.markets[("replay", "ES-USD")].builders)  # open state was saved

    second = Pipeline(TIMEFRAMES, **OPTIONS)
    how = restore_markets(second, [("replay", "ES-USD")], checkpointer=checkpoints)
    assert how == {("replay", "ES-USD"): "checkpoint"}
    feed(second, ticks)  # the replay starts again from the beginning: folded-in trades are skipped
    second.flush_open()
    after = second.drain()
    assert second.duplicates == stop_at and second.late == 0
    same_rows(by_tf(before.rows + after.rows), by_tf(expected.rows))
    key = lambda c: (c.timeframe, c.start_ns)  # noqa: E731
    assert sorted(before.candles + after.candles, key=key) == sorted(expected.candles, key=key)


def test_restart_rebuilt_from_the_offline_store_equals_a_run_that_never_stopped(ticks, offline_url) -> None:
    expected = uninterrupted(ticks)
    store = open_offline_store(offline_url)
    first = Pipeline(TIMEFRAMES, **OPTIONS)
    feed(first, ticks[:17_777])
    before = first.drain()
    store.write_candles(before.candles)  # what the offline log holds when the process died (no checkpoint)

    second = Pipeline(TIMEFRAMES, **OPTIONS)
    how = restore_markets(second, [("replay", "ES-USD")], checkpointer=None, offline_store=store)
    assert how == {("replay", "ES-USD"): "offline"}
    feed(second, ticks)
    second.flush_open()
    after = second.drain()
    assert second.late == 0
    same_rows(by_tf(before.rows + after.rows), by_tf(expected.rows))
    store.close()


def test_unusable_checkpoint_falls_back_to_the_offline_store_then_cold(ticks, tmp_path) -> None:
    checkpoints = Checkpointer(tmp_path)
    path = checkpoints.path("replay", "ES-USD")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    pipeline = Pipeline(TIMEFRAMES, **OPTIONS)
    assert restore_markets(pipeline, [("replay", "ES-USD")], checkpointer=checkpoints) == {
        ("replay", "ES-USD"): "cold"}
    feed(pipeline, ticks[:5_000])
    assert pipeline.duplicates == 0

    other = Pipeline(("1m", "15m"), **OPTIONS)  # a checkpoint without 15m state is not used
    first = Pipeline(TIMEFRAMES, **OPTIONS)
    feed(first, ticks[:5_000])
    checkpoints.save(first)
    assert restore_markets(other, [("replay", "ES-USD")], checkpointer=checkpoints)[("replay", "ES-USD")] == "cold"
