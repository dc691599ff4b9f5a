"""Incremental engine: snapshots, restore, warm-up from stored candles, peek, bounded state."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtml_core.errors import InputError
from rtml_core.features import DEFAULT_FEATURE_SET, FeatureEngine
from rtml_core.features.definitions import FeatureSet, feature
from rtml_core.schemas import Candle
from rtml_core.features.indicators import REPLAY_HORIZON
from tests.features.checks import assert_frames_identical, assert_frames_match, candle_rows, stream_frame
from tests.features.realdata import REAL_FILES, real_candles
from tests.features.strategies import candle_frames

NAMES = DEFAULT_FEATURE_SET.names


def _continue(engine: FeatureEngine, rows) -> pd.DataFrame:
    return pd.DataFrame(engine.run(rows), columns=NAMES)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(candle_frames(min_size=2), st.data())
def test_snapshot_restore_at_any_row_equals_never_stopping(candles, data):
    rows = candle_rows(candles)
    cut = data.draw(st.integers(0, len(rows)), label="cut")
    never_stopped = stream_frame(candles)
    engine = FeatureEngine()
    engine.run(rows[:cut])
    restored = FeatureEngine.restore(engine.snapshot())
    assert restored.count == cut
    after = _continue(restored, rows[cut:])
    # within the replay horizon a restore is exact: bit for bit
    assert_frames_identical(never_stopped.iloc[cut:].reset_index(drop=True), after, NAMES, label=f"cut {cut}")


# Features from TA-Lib handles with running sums (STDDEV, CCI, MFI): rebuilt past the replay
# horizon they carry other last-ulp rounding, which cancellation near zero can lift above 1e-12.
RUNNING_SUMS = frozenset(
    ["bb_lower_20_2", "bb_upper_20_2", "bb_width_20_2", "bb_percent_20_2", "cci_20", "mfi_14",
     "realized_vol_20", "realized_vol_60"]
)


@pytest.mark.parametrize("name", REAL_FILES)
@pytest.mark.parametrize("cut", [3_000, 12_000])
def test_snapshot_restore_deep_into_real_history(name, cut):
    """Past the replay horizon: the restored engine agrees with one that never stopped."""
    assert cut > REPLAY_HORIZON
    candles = real_candles(name)
    rows = candle_rows(candles)
    never_stopped = stream_frame(candles).iloc[cut:].reset_index(drop=True)
    engine = FeatureEngine()
    engine.run(rows[:cut])
    after = _continue(FeatureEngine.restore(engine.snapshot()), rows[cut:])
    exact = [n for n in NAMES if n not in RUNNING_SUMS]
    assert_frames_match(never_stopped, after, exact, label=f"{name} cut {cut}")
    assert_frames_match(never_stopped, after, sorted(RUNNING_SUMS), label=f"{name} cut {cut}", scaled=RUNNING_SUMS)


def test_snapshot_is_bounded():
    """State is O(window): the snapshot does not grow with the history."""
    rows = candle_rows(real_candles("eth_usd_30m_2017-2019.csv").iloc[:9_000])
    engine = FeatureEngine()
    engine.run(rows[:3_000])
    early = len(engine.snapshot())
    engine.run(rows[3_000:])
    late = len(engine.snapshot())
    assert late <= early * 1.05
    assert late < 200_000


def test_restore_refuses_another_feature_set_and_garbage():
    engine = FeatureEngine()
    engine.update_values(0, 1.0, 1.0, 1.0, 1.0, 1.0)
    other = FeatureSet([feature("sma_3", "sma", length=3)])
    with pytest.raises(InputError, match="feature set"):
        FeatureEngine.restore(engine.snapshot(), other)
    with pytest.raises(InputError, match="snapshot"):
        FeatureEngine.restore(b"not a snapshot")


def test_warm_from_stored_candles_then_continue():
    candles = real_candles("coinbase_btc_usd_1h_2017-2019.csv").iloc[:4_000]
    never_stopped = stream_frame(candles)
    engine = FeatureEngine()
    last = engine.warm_from(candles.iloc[:2_500])
    assert last == pytest.approx(never_stopped.iloc[2_499].to_dict(), nan_ok=True)
    after = _continue(engine, candle_rows(candles)[2_500:])
    assert_frames_match(never_stopped.iloc[2_500:].reset_index(drop=True), after, NAMES)


def test_peek_previews_without_committing():
    rows = candle_rows(real_candles("btc_usd_30m_2017-2019.csv").iloc[:400])
    engine, twin = FeatureEngine(), FeatureEngine()
    for i, row in enumerate(rows):
        if i % 3 == 0:  # a forming candle revised twice, then closed
            engine.peek_values(row[0], *[x * 1.01 for x in row[1:6]])
            preview = engine.peek_values(*row)
        else:
            preview = None
        committed = engine.update_values(*row)
        expected = twin.update_values(*row)
        assert committed == pytest.approx(expected, nan_ok=True, rel=0, abs=0)
        if preview is not None:
            assert preview == pytest.approx(committed, nan_ok=True, rel=0, abs=0)


def test_update_accepts_candles_with_decimals():
    frame = real_candles("eth_usd_30m_2017-2019.csv").iloc[:120]
    engine, twin = FeatureEngine(), FeatureEngine()
    for row in candle_rows(frame):
        candle = Candle(
            exchange="kraken", symbol="ETH-USD", timeframe="30m", start_ns=row[0],
            open=Decimal(repr(row[1])), high=Decimal(repr(row[2])), low=Decimal(repr(row[3])),
            close=Decimal(repr(row[4])), volume=Decimal(repr(row[5])), vwap=None, trade_count=3,
        )
        assert engine.update(candle) == pytest.approx(twin.update_values(*row[:6]), nan_ok=True, rel=0, abs=0)


def test_vwap_deviation_uses_the_candles_vwap_when_given():
    engine = FeatureEngine()
    values = engine.update_values(0, 100.0, 110.0, 90.0, 105.0, 2.0, vwap=100.0)
    assert values["vwap_deviation"] == pytest.approx(0.05)
    values = engine.update_values(1, 100.0, 110.0, 90.0, 105.0, 2.0, vwap=None)
    assert values["vwap_deviation"] == pytest.approx(105.0 / ((110.0 + 90.0 + 105.0) / 3.0) - 1.0)


def test_stale_or_repeated_candle_is_refused():
    engine = FeatureEngine()
    engine.update_values(10, 1.0, 1.0, 1.0, 1.0, 1.0)
    with pytest.raises(InputError, match="not after"):
        engine.update_values(10, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert engine.count == 1


def test_warm_up_rows_are_nan_then_values():
    rows = candle_rows(real_candles("btc_usd_30m_2017-2019.csv").iloc[:80])
    out = FeatureEngine().run(rows)
    for spec in DEFAULT_FEATURE_SET:
        series = np.array([row[spec.name] for row in out])
        assert np.isnan(series[: spec.warmup]).all() and not np.isnan(series[spec.warmup :]).any(), spec.name


@pytest.mark.parametrize(
    "bad", [(0, float("nan"), 1.0, 1.0, 1.0, 1.0), (0, 1.0, 1.0, -1.0, 1.0, 1.0), (0, 1.0, 1.0, 1.0, 1.0, -2.0),
            (0, 1.0, float("inf"), 1.0, 1.0, 1.0)],
)
def test_non_finite_or_negative_candles_are_refused_without_touching_state(bad):
    engine = FeatureEngine()
    rows = candle_rows(real_candles("btc_usd_30m_2017-2019.csv").iloc[:30])
    engine.run(rows[:20])
    before = engine.snapshot()
    with pytest.raises(InputError, match="prices must be finite"):
        engine.update_values(rows[20][0], *bad[1:])
    assert engine.snapshot() == before
