"""Point-in-time training sets on real BTC-USD 30m candles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtml_core.errors import InputError
from rtml_core.training.datasets import build_training_set, naive_training_set
from tests.training.data import btc_candles, trailing_features

TF = "30m"
TF_NS = 1800 * 10**9
CANDLES = btc_candles(400)
FEATURES = trailing_features(CANDLES)


def _build(features=FEATURES, prices=CANDLES, **kwargs):
    kwargs.setdefault("horizon_s", 3600)
    return build_training_set(features, prices, timeframe=TF, feature_set_version="test", **kwargs)


def _ends(frame: pd.DataFrame) -> np.ndarray:
    return frame["time"].to_numpy(dtype="datetime64[ns]").astype(np.int64) + TF_NS


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    future=st.integers(min_value=45, max_value=len(CANDLES) - 1),
    factor=st.floats(min_value=0.2, max_value=5.0).filter(lambda f: abs(f - 1) > 1e-3),
    offsets=st.lists(st.integers(min_value=0, max_value=3 * 1800), min_size=1, max_size=20),
)
def test_changing_any_future_value_leaves_features_at_t_unchanged(future, factor, offsets):
    """Perturb candle ``future`` and every later one: rows at t before it closed do not move."""
    base_t = int(_ends(CANDLES)[40])
    times = np.array([base_t + k * 1800 * 10**9 + off * 10**9 for k, off in enumerate(offsets)] + [base_t])
    prices = CANDLES.copy()
    features = FEATURES.copy()
    prices.loc[future:, ["close", "high", "low"]] *= factor
    features.loc[future:, features.columns[1:]] *= factor
    features.loc[future:, "ret_1"] += 1.0
    before = _build(times=times, horizon_s=3600).frame
    after = _build(features, prices, times=times, horizon_s=3600).frame
    closed_at = int(_ends(CANDLES)[future])
    t = before["time"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    known = t < closed_at
    assert known.any() and len(before) == len(after)
    cols = [c for c in before.columns if c not in ("target", "target_price")]
    pd.testing.assert_frame_equal(before.loc[known, cols], after.loc[known, cols])
    assert not np.allclose(before.loc[~known, "price"], after.loc[~known, "price"]) or not (~known).any()
    # the target at t moves only when its t + H reaches the changed candle
    target_known = t + 3600 * 10**9 < closed_at
    np.testing.assert_array_equal(before.loc[target_known, "target"], after.loc[target_known, "target"])


@settings(max_examples=30, deadline=None)
@given(
    offsets=st.lists(st.integers(min_value=0, max_value=300 * 1800), min_size=1, max_size=30, unique=True),
    horizon_s=st.integers(min_value=1800, max_value=6 * 3600),
)
def test_target_uses_exactly_t_plus_h(offsets, horizon_s):
    """The target price is the close of the last candle closed at or before t + H, nothing else."""
    ends = _ends(CANDLES)
    start = int(ends[40])
    times = np.array(sorted(start + off * 10**9 for off in offsets))
    result = _build(times=times, horizon_s=horizon_s).frame
    close_by_end = dict(zip(ends.tolist(), CANDLES["close"].tolist()))
    t = result["time"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    for row, when in enumerate(t):
        target_end = (when + horizon_s * 10**9) // TF_NS * TF_NS
        price_end = when // TF_NS * TF_NS
        assert result["target_price"].iloc[row] == close_by_end[target_end]
        assert result["price"].iloc[row] == close_by_end[price_end]
        assert result["target"].iloc[row] == pytest.approx(
            np.log(close_by_end[target_end] / close_by_end[price_end]), abs=1e-15
        )


def test_rows_whose_target_window_crosses_a_gap_are_dropped_and_counted():
    full = _build(horizon_s=1800)
    missing = [200, 300, 301]
    prices = CANDLES.drop(index=missing).reset_index(drop=True)
    features = FEATURES.drop(index=missing).reset_index(drop=True)
    gapped = _build(features, prices, horizon_s=1800)
    # H = one candle: the rows just before candle 200 and just before 300 lose their target
    assert gapped.dropped_for_gaps == 2
    assert gapped.row_count == full.row_count - 2 - len(missing)
    missing_ends = set(_ends(CANDLES.iloc[missing]).tolist())
    t = gapped.frame["time"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    assert not (set((t + TF_NS).tolist()) & missing_ends)
    # a longer horizon spans more windows over each gap
    assert _build(features, prices, horizon_s=3 * 1800).dropped_for_gaps == 3 + 3  # candles 197-199 and 297-299


def test_vectorized_build_matches_the_naive_lookup_on_real_history_with_its_gaps():
    candles = btc_candles()
    features = trailing_features(candles)
    fast = build_training_set(features, candles, timeframe=TF, horizon_s=3600)
    slow = naive_training_set(features, candles, timeframe=TF, horizon_s=3600)
    assert fast.dropped_for_gaps > 0  # the bundled history has real gaps
    pd.testing.assert_frame_equal(fast.frame, slow, check_exact=False, rtol=1e-12)


def test_metadata_and_content_hash():
    first, second = _build(), _build()
    assert first.content_hash == second.content_hash and len(first.content_hash) == 64
    assert first.row_count == len(first.frame) > 300
    assert first.dropped_for_warmup > 0 and first.dropped_unlabelled == 2
    summary = first.summary()
    assert summary["feature_set_version"] == "test"
    assert summary["feature_names"] == ["ret_1", "ret_4", "vol_12", "range_1", "volume_z_24"]
    assert summary["start"] < summary["end"]
    changed = FEATURES.copy()
    changed.loc[300, "ret_4"] += 1e-9
    assert _build(changed).content_hash != first.content_hash


def test_bad_input_is_refused_with_a_clear_error():
    with pytest.raises(InputError, match="shorter than the timeframe"):
        _build(horizon_s=60)
    shuffled = CANDLES.iloc[[0, 2, 1, 3]].reset_index(drop=True)
    with pytest.raises(InputError, match="strictly increasing"):
        build_training_set(FEATURES.iloc[:4], shuffled, timeframe=TF, horizon_s=1800)
    with pytest.raises(InputError, match="no 'close' column"):
        build_training_set(FEATURES, CANDLES.drop(columns="close"), timeframe=TF, horizon_s=1800)


@settings(max_examples=60, deadline=None)
@given(
    ends=st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=60, unique=True),
    times=st.lists(st.integers(min_value=-30, max_value=450), min_size=1, max_size=40),
    step=st.sampled_from([1, 7]),
    jitter=st.booleans(),
)
def test_grid_lookup_equals_binary_search(ends, times, step, jitter):
    from rtml_core.training.datasets import last_at_or_before

    grid = np.array(sorted(ends), dtype=np.int64) * step + 1_000
    if jitter and step > 1:
        grid[-1] += 1  # off the grid: the binary-search path
    queries = np.array(times, dtype=np.int64) * step + 1_000
    expected = np.searchsorted(grid, queries, side="right") - 1
    np.testing.assert_array_equal(last_at_or_before(grid, queries, step), expected)


def test_empty_inputs():
    empty = build_training_set(FEATURES.iloc[:0], CANDLES, timeframe=TF, horizon_s=1800)
    assert empty.row_count == 0 and empty.dropped_for_gaps == 0 and len(empty.content_hash) == 64
    with pytest.raises(InputError, match="no candles"):
        build_training_set(FEATURES, CANDLES.iloc[:0], timeframe=TF, horizon_s=1800)
