"""Incremental == batch for every feature and every row (warm-up included), and == TA-Lib."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import talib
from hypothesis import HealthCheck, given, settings

from rtml_core.features import DEFAULT_FEATURE_SET, compute_features
from tests.features.checks import assert_frames_match, mismatches, stream_frame
from tests.features.realdata import REAL_FILES, real_candles
from tests.features.strategies import candle_frames

NAMES = DEFAULT_FEATURE_SET.names


@pytest.mark.parametrize("name", REAL_FILES)
def test_stream_equals_batch_on_real_candles(name):
    candles = real_candles(name)
    batch = compute_features(candles)
    stream = stream_frame(candles)
    assert list(batch.columns) == ["time", *NAMES]
    assert len(batch) == len(candles)
    assert (batch["time"] == candles["time"]).all()
    assert_frames_match(batch, stream, NAMES, label=name)
    # every feature has values after its warm-up and none before it
    for spec in DEFAULT_FEATURE_SET:
        values = batch[spec.name].to_numpy()
        assert np.isnan(values[: spec.warmup]).all(), spec.name
        assert not np.isnan(values[spec.warmup :]).any(), spec.name


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(candle_frames())
def test_stream_equals_batch_on_generated_series(candles):
    batch = compute_features(candles)
    stream = stream_frame(candles)
    assert_frames_match(batch, stream, NAMES, label=f"{len(candles)} candles")


def test_generated_series_reach_the_hard_cases():
    """The strategy does produce flat windows, zero volume and repeated prices."""
    from hypothesis import find

    flat = find(candle_frames(min_size=40), lambda f: (f["high"] == f["low"]).rolling(25).sum().max() >= 25)
    assert (flat["high"] == flat["low"]).sum() >= 25
    zero = find(candle_frames(min_size=20), lambda f: (f["volume"] == 0).sum() >= 15)
    assert (zero["volume"] == 0).sum() >= 15


def _talib_oracle(candles: pd.DataFrame) -> dict[str, np.ndarray]:
    o, h, l, c, v = (candles[k].to_numpy(float) for k in ("open", "high", "low", "close", "volume"))  # noqa: E741
    macd, signal, hist = talib.MACD(c, 12, 26, 9)
    upper, mid, lower = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    slow_k, slow_d = talib.STOCH(h, l, c, 14, 3, 0, 3, 0)
    returns = np.log(c[1:] / c[:-1])
    return {
        "sma_10": talib.SMA(c, 10), "sma_20": talib.SMA(c, 20), "sma_50": talib.SMA(c, 50),
        "ema_12": talib.EMA(c, 12), "ema_26": talib.EMA(c, 26), "rsi_14": talib.RSI(c, 14),
        "macd_12_26_9": macd, "macd_signal_12_26_9": signal, "macd_hist_12_26_9": hist,
        "bb_lower_20_2": lower, "bb_mid_20_2": mid, "bb_upper_20_2": upper,
        "atr_14": talib.ATR(h, l, c, 14), "natr_14": talib.NATR(h, l, c, 14), "obv": talib.OBV(c, v),
        "roc_10": talib.ROC(c, 10), "mom_10": talib.MOM(c, 10),
        "stoch_k_14_3_3": slow_k, "stoch_d_14_3_3": slow_d, "adx_14": talib.ADX(h, l, c, 14),
        "cci_20": talib.CCI(h, l, c, 20), "willr_14": talib.WILLR(h, l, c, 14), "mfi_14": talib.MFI(h, l, c, v, 14),
        "realized_vol_20": np.concatenate([[np.nan], talib.STDDEV(returns, 20, 1.0)]),
        "realized_vol_60": np.concatenate([[np.nan], talib.STDDEV(returns, 60, 1.0)]),
    }


@pytest.mark.parametrize("name", REAL_FILES[:2])
def test_stream_equals_talib_where_talib_defines_the_indicator(name):
    candles = real_candles(name)
    stream = stream_frame(candles)
    for feature, expected in _talib_oracle(candles).items():
        rows = mismatches(expected, stream[feature].to_numpy())
        assert len(rows) == 0, f"{feature}: {len(rows)} rows differ from TA-Lib, first {rows[:3]}"


def test_mismatches_catches_differences():
    """The comparison itself fails on a real difference (guards against a check that cannot fail)."""
    a = np.array([np.nan, 1.0, 1e-13, 100.0])
    assert list(mismatches(a, a.copy())) == []
    assert list(mismatches(a, np.array([0.0, 1.0, 1e-13, 100.0]))) == [0]
    assert list(mismatches(a, np.array([np.nan, 1.0 + 1e-8, 1e-13, 100.0]))) == [1]
    assert list(mismatches(a, np.array([np.nan, 1.0, 2e-12, 100.0]))) == [2]
